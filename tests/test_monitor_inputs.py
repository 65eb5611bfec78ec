"""`edge-ttt monitor` over inputs a black-box test found it mishandled: text that is not UTF-8 in a
dataset file, empty options, wide query results, contradictory or partial configs, a bundle of
another model, device ids that hold control characters, paths and folders it cannot use, and a
`--since` in the future."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from edge_ttt.drift.schema import to_table
from edge_ttt.monitor import cli, dataset
from edge_ttt.monitor.cli import monitor_app
from edge_ttt.monitor.config import AlertsSection
from tests.test_monitor_collector import T0, make_summary
from tests.test_monitor_report import RULES, STEP, _one_line_error, _ranking, fleet

MODEL = "ab" * 32  # make_summary's model_sha256


@pytest.fixture
def location(tmp_path) -> str:
    path = str(tmp_path / "fleet")
    fleet(path)
    return path


def invoke(*args: str):
    return CliRunner().invoke(monitor_app, list(args))


def foreign_rows(location: str, name: str, **columns: pa.Array) -> Path:
    """Two rows of the dataset, `columns` replaced, written past `append` as `name`."""
    rows = dataset.read(location).slice(0, 2).drop_columns(["date"])
    rows = rows.set_column(rows.schema.get_field_index("summary_id"), "summary_id", pa.array(["f1", "f2"]))
    for column, values in columns.items():
        rows = rows.set_column(rows.schema.get_field_index(column), pa.field(column, values.type), values)
    path = next(Path(location).glob("date=*")) / name
    pq.write_table(rows, path)
    return path


def test_a_file_whose_ids_are_not_utf8_is_left_out_with_a_warning(location, tmp_path, caplog):
    """`alerts` and `report` crashed in intervals.py ("Wrapping caf… failed"), `query --json` with a
    UnicodeDecodeError; `alerts` exited 1, its status for "an alert holds"."""
    bad = pa.array([b"caf\xc3", b"caf\xc3"], pa.binary()).view(pa.string())
    path = foreign_rows(location, "part-latin.parquet", device=bad, device_id=bad)
    binary = foreign_rows(location, "part-binary.parquet", device_id=pa.array([b"x", b"y"], pa.binary()))
    result = invoke("alerts", "--dataset", location, "--json")
    assert result.exit_code == 1 and '"device": "drifting"' in result.stdout, result.output
    assert invoke("report", "--dataset", location, "--out", str(tmp_path / "r.html")).exit_code == 0
    result = invoke(
        "query", "SELECT DISTINCT device_id FROM summaries ORDER BY 1", "--dataset", location, "--json"
    )
    assert result.exit_code == 0 and result.stdout.count("device_id") == 5, result.output
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"{path} (device holds text that is not UTF-8" in warned
    assert f"{binary} (not a file of the fleet dataset: device_id is binary, not string)" in warned


def test_an_unexpected_failure_is_one_line_and_never_the_alert_status(location, tmp_path, monkeypatch):
    from edge_ttt.monitor import report

    def broken(*args, **kwargs):
        raise KeyError("nobody foresaw this")

    monkeypatch.setattr(cli, "evaluate", broken)
    result = invoke("alerts", "--dataset", location)
    assert result.exit_code == 3 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: unexpected KeyError: 'nobody foresaw this'. Fix: ")
    monkeypatch.setattr(report, "evaluate_intervals", broken)
    assert invoke("report", "--dataset", location, "--out", str(tmp_path / "r.html")).exit_code == 3


@pytest.mark.parametrize("blank", ["", " "])
def test_an_empty_dataset_or_out_is_refused(location, tmp_path, monkeypatch, blank):
    """An unset shell variable read the current directory, recursively, as the fleet."""
    monkeypatch.chdir(location)
    for command in (["alerts"], ["compact"], ["query", "SELECT 1"], ["report", "--out", "r.html"]):
        line = _one_line_error(invoke(*command, "--dataset", blank))
        assert line.startswith("error: --dataset is empty (an unset shell variable?). Fix: ")
    line = _one_line_error(invoke("report", "--dataset", location, "--out", blank))
    assert line.startswith("error: --out is empty (an unset shell variable?). Fix: ")


def test_a_wide_query_result_is_printed_whole_one_block_per_row(location):
    """Squeezed into 200 columns, the table showed empty cells without names or values."""
    result = invoke("query", "SELECT * FROM summaries ORDER BY summary_id LIMIT 2", "--dataset", location)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("-[ row 1 ]-\n") and "\n\n-[ row 2 ]-\n" in result.output
    first = result.output.split("\n\n")[0].splitlines()[1:]
    names = [line.split(" : ")[0].strip() for line in first]
    assert names == dataset.read(location).column_names[: len(names)] and "ref_share" in names
    psi = dataset.read(location).sort_by("summary_id")["psi"][0].as_py()
    assert f"{'psi'.ljust(len(max(names, key=len)))} : {psi}" in first  # whole, however long
    narrow = invoke("query", "SELECT 'x' AS a, 1 AS b", "--dataset", location)
    assert "┃ a ┃ b ┃" in narrow.output  # a table where it fits


def _config(tmp_path: Path, text: str, bom: bool = False) -> str:
    path = tmp_path / "monitor.toml"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return str(path)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (
            "accuracy_min_windows = 1000\nestimate_windows = 600",
            "accuracy_min_windows (1000) is above estimate_windows (600)",
        ),
        ("clock_skew_s = 7200.0\nmax_late_s = 3600.0", "max_late_s (3600) is below clock_skew_s (7200)"),
    ],
)
def test_thresholds_that_contradict_each_other_are_refused(location, tmp_path, keys, named):
    """accuracy_min_windows above estimate_windows made the accuracy rule unable to fire."""
    config = _config(tmp_path, f"[alerts]\n{keys}\n")
    line = _one_line_error(invoke("alerts", "--dataset", location, "--config", config))
    assert f"alerts: {named}" in line and "; make " in line
    with pytest.raises(ValueError, match=re.escape(named)):
        AlertsSection(
            **{k: float(v) if "_s" in k else int(v) for k, v in (kv.split(" = ") for kv in keys.split("\n"))}
        )


@pytest.mark.parametrize(
    ("text", "bom"),
    [("[alerts]\nsilent_s = 1e12\n", False), ("", False), ("[alerts]\nsilent_s = 1e12\n", True)],
)
def test_alerts_reads_a_config_with_only_its_rules(location, tmp_path, text, bom):
    """It required the collector's [collector] table, which the monitor commands do not use."""
    result = invoke("alerts", "--dataset", location, "--config", _config(tmp_path, text, bom))
    assert result.exit_code == 1, result.output
    silent = "\tsilent\t" in result.output
    assert silent == (text == "")  # the rules were read: silent_s = 1e12 keeps `gone` quiet
    typo = _config(tmp_path, '[collector]\ndataset = "fleet"\nflsh = 1\n')  # still checked
    assert "collector.flsh: unknown key" in _one_line_error(
        invoke("alerts", "--dataset", location, "--config", typo)
    )


def _with_model(device: str, model: str, location: str) -> None:
    for i in range(6):
        table = to_table([make_summary(device, T0 + (i + 1) * STEP, seed=900 + i)])
        table = table.set_column(
            table.schema.get_field_index("model_sha256"), "model_sha256", pa.array([model])
        )
        dataset.append(location, table)


@pytest.fixture
def bundle(monkeypatch, tmp_path) -> Path:
    """A bundle of the fleet's model with 95 % validation accuracy (its manifest only: the model
    hash is what is compared)."""
    import edge_ttt.artifacts

    made = SimpleNamespace(
        sha256=MODEL, manifest=SimpleNamespace(reference=SimpleNamespace(val_accuracy=0.95))
    )
    monkeypatch.setattr(edge_ttt.artifacts, "load_bundle", lambda path: made)
    return tmp_path / "bundle"


def test_a_bundle_of_another_model_is_refused(tmp_path, bundle):
    location = str(tmp_path / "other")
    _with_model("dev", "cd" * 32, location)
    line = _one_line_error(
        invoke("report", "--dataset", location, "--out", str(tmp_path / "r.html"), "--bundle", str(bundle))
    )
    assert (
        f"its model {MODEL} is not the fleet's (the summaries name {'cd' * 32})" in line and "Fix: " in line
    )
    assert not (tmp_path / "r.html").exists()


def test_a_bundle_is_the_reference_only_of_the_devices_running_it(location, tmp_path, bundle, caplog):
    _with_model("upgraded", "cd" * 32, location)
    out = tmp_path / "r.html"
    result = invoke("report", "--dataset", location, "--out", str(out), "--bundle", str(bundle))
    assert result.exit_code == 0, result.output
    assert any("1 of 6 devices run another model (upgraded)" in r.getMessage() for r in caplog.records)
    html = re.sub(r"\s+", " ", out.read_text())
    assert "the bundle&#39;s validation accuracy for the 5 devices running its model; for the other 1" in html


def test_odd_device_ids_are_shown_escaped_and_named(tmp_path):
    """A newline split an alert's line, '' and ' ' were blank rows, U+202E showed an id reversed."""
    location = str(tmp_path / "fleet")
    ids = ["a\nb\tc", "", " ", "evil\u202etxt"]
    for i in range(4):
        dataset.append(location, to_table([make_summary(d, T0 + (i + 1) * STEP, seed=i) for d in ids]))
    result = invoke("alerts", "--dataset", location)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert all(line.count("\t") == 2 for line in lines) and len(lines) == 4  # one silent alert each
    assert {line.split("\t")[0] for line in lines} == {
        "a\\nb\\tc",
        "(empty: '')",
        "(blank: ' ')",
        "evil\\u202etxt",
    }
    assert (
        dataset.read(location, ["device_id"])["device_id"].unique().to_pylist() == ids
    )  # the data as it was
    out = tmp_path / "r.html"
    assert invoke("report", "--dataset", location, "--out", str(out)).exit_code == 0
    html = out.read_text()
    assert "\u202e" not in html and "\n" not in "".join(r[0] for r in _ranking(html))
    assert {r[0] for r in _ranking(html)} == {
        "a\\nb\\tc",
        "(empty: &#39;&#39;)",
        "(blank: &#39; &#39;)",
        "evil\\u202etxt",
    }


def test_what_cannot_be_used_says_the_fix(location, tmp_path):
    line = _one_line_error(invoke("report", "--dataset", location, "--out", "/proc/r.html"))
    assert line.startswith("error: --out /proc/r.html: cannot write it there (") and "Fix: " in line
    stray = tmp_path / "stray"
    (stray / "date=2023-11-14").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1, 2]}), stray / "date=2023-11-14" / "part-a.parquet")
    pq.write_table(pa.table({"a": [3]}), stray / "date=2023-11-14" / "part-b.parquet")
    (stray / "notes.txt").write_text("hello")
    for command in (["compact"], ["query", "SELECT count(*) FROM summaries"], ["alerts"]):
        line = _one_line_error(invoke(*command, "--dataset", str(stray)))
        assert f"error: {stray} is not a fleet dataset (" in line and "Fix: pass the directory" in line


def test_a_since_later_than_now_is_refused(location):
    """It kept only the newest summary of each device, silently."""
    line = _one_line_error(invoke("alerts", "--dataset", location, "--since", "2099-01-01"))
    assert "--since '2099-01-01' is later than now (" in line and "Fix: a time in the past" in line


def test_the_ranking_shows_no_negative_loss_and_only_channels_over_their_limit(location, tmp_path):
    """It showed "-16.9" points lost and `ax 0.01` as the worst channel of healthy devices."""
    from edge_ttt.monitor.report import write_report

    out = tmp_path / "r.html"
    write_report(dataset.read(location), RULES, out, now=T0 + 6 * STEP, reference_accuracy=0.05)
    rows = {r[0]: r for r in _ranking(out.read_text())}
    assert rows["steady"][6] == "none" and rows["drifting"][6].startswith("c0 ")
    lost = [r[1] for r in rows.values() if r[1] != "n/a"]
    assert lost and all(v.startswith("0.0 (") and v.endswith(" above the reference)") for v in lost)
