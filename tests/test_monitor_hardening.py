"""`edge-ttt monitor` over datasets and arguments that used to break it (found by a black-box test):
stray files and rows without required values, impossible numbers stored before the collector
refused them, SQL that reached outside the dataset or held no query, an `--out` under a missing
directory, and channel names long enough to stretch the figures."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from edge_ttt.drift.schema import to_table
from edge_ttt.monitor import dataset
from edge_ttt.monitor.cli import monitor_app
from edge_ttt.monitor.report import write_report
from tests.test_monitor_collector import T0, make_summary
from tests.test_monitor_report import NOW, RULES, STEP, _one_line_error, fleet


@pytest.fixture
def location(tmp_path) -> str:
    path = str(tmp_path / "fleet")
    fleet(path)
    return path


def strict_json(text: str) -> object:
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))


def add_rows(location: str, device: str, **values) -> None:
    """Three intervals of `device` with `values` (one per column) set in each row."""
    rows = []
    for i in range(3):
        row = to_table([make_summary(device, T0 + (i + 1) * STEP, seed=800 + i)]).to_pylist()[0]
        row.update(values)
        rows.append(row)
    dataset.append(location, pa.Table.from_pylist(rows, schema=to_table([make_summary("x", T0)]).schema))


def test_a_stray_parquet_file_is_left_out_with_a_warning(location, tmp_path, caplog):
    """It read as rows of nulls under the dataset's schema and `report` and `alerts` failed on
    them (sorted() over None)."""
    partition = next(Path(location).glob("date=*"))
    stray = partition / "part-stray.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), stray)
    result = CliRunner().invoke(monitor_app, ["alerts", "--dataset", location, "--json"])
    assert result.exit_code == 1, result.output
    assert "drifting" in {a["device"] for a in strict_json(result.stdout)}
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(stray) in warned and "no schema_version, summary_id" in warned
    out = tmp_path / "r.html"
    result = CliRunner().invoke(monitor_app, ["report", "--dataset", location, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert dataset.summary_ids(location) == set(
        dataset.read(location, ["summary_id"])["summary_id"].to_pylist()
    )
    result = CliRunner().invoke(monitor_app, ["compact", "--dataset", location])
    assert result.exit_code == 0 and stray.exists()  # not merged into the rows, not deleted


def test_rows_without_a_required_value_are_left_out_with_a_warning(location, caplog):
    partition = next(Path(location).glob("date=*"))
    before = len(dataset.read(location))
    row = dataset.read(location).slice(0, 1).drop_columns(["date"])
    for name, value in (("model_sha256", pa.nulls(1, pa.string())), ("summary_id", pa.array(["nullmodel"]))):
        row = row.set_column(row.schema.get_field_index(name), name, value)
    pq.write_table(row, partition / "part-nullmodel.parquet")  # past `append`'s check
    table = dataset.read(location, ["device_id", "model_sha256"])
    assert len(table) == before and table["model_sha256"].null_count == 0
    assert any("1 rows without model_sha256 left out" in r.getMessage() for r in caplog.records)
    assert CliRunner().invoke(monitor_app, ["alerts", "--dataset", location]).exit_code == 1


def test_append_refuses_rows_without_a_required_value(tmp_path):
    """One was filed under `date=None/` and acknowledged."""
    table = to_table([make_summary("dev", T0)])
    table = table.set_column(
        table.schema.get_field_index("interval_end"),
        "interval_end",
        pa.nulls(1, table.schema.field("interval_end").type),
    )
    with pytest.raises(ValueError, match="interval_end"):
        dataset.append(str(tmp_path / "fleet"), table)
    assert not (tmp_path / "fleet").exists()


def test_impossible_numbers_stored_earlier_read_as_missing_not_as_nonsense(location, tmp_path):
    add_rows(location, "negwin", windows=-1000, spool_dropped=-5, resets=-3, frames_missing=-7)
    add_rows(location, "hugecount", spool_dropped=2**62)
    add_rows(location, "nanpsi", psi=[float("nan"), float("inf")], ref_accuracy=float("nan"))
    add_rows(location, "infest", psi=[-1.0, float("inf")], estimated_accuracy=float("inf"), ref_accuracy=7.5)
    result = CliRunner().invoke(monitor_app, ["alerts", "--dataset", location, "--json"])
    assert result.exit_code == 1, result.output
    alerts = strict_json(result.stdout)
    said = " ".join(a["message"] for a in alerts)
    assert not re.search(r"\bnan\b|\binf\b|(?<!\d)-\d", said), said
    out = tmp_path / "r.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    html = out.read_text()
    lost = re.search(r'<li id="lost"><b>(\d+)</b>', html)[1]
    assert int(lost) == 3 * 2**62  # not wrapped round int64, and no negative count in it
    assert re.search(r'<li id="missing"><b>0</b>', html)
    cells = re.findall(r"<td>([^<]*)</td>", html)
    assert not {"nan", "inf", "-inf"} & set(cells) and not any(
        c.startswith("-") and c[1:2].isdigit() for c in cells
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "COPY (SELECT 1) TO '{out}'",
        "ATTACH '{db}' AS other",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "SELECT * FROM read_parquet('{dataset}/*/*.parquet')",
    ],
)
def test_query_reads_the_dataset_only_and_writes_nothing(location, tmp_path, sql):
    out, db = tmp_path / "pwned.csv", tmp_path / "other.duckdb"
    sql = sql.format(out=out, db=db, dataset=location)
    result = CliRunner().invoke(monitor_app, ["query", sql, "--dataset", location])
    line = _one_line_error(result)
    assert "disabled" in line or "locked" in line, line
    assert not out.exists() and not db.exists()
    result = CliRunner().invoke(
        monitor_app, ["query", "SELECT count(*) AS n FROM summaries", "--dataset", location, "--json"]
    )
    assert result.exit_code == 0 and strict_json(result.stdout) == {"n": 25}


@pytest.mark.parametrize("sql", ["", " ", ";", "/* nothing */"])
def test_sql_without_a_query_is_one_line_and_exit_2(location, sql):
    """It was an AttributeError traceback."""
    line = _one_line_error(CliRunner().invoke(monitor_app, ["query", sql, "--dataset", location]))
    assert "no query in the SQL given" in line


def test_query_json_is_strict_json(location):
    sql = "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, 1.5 AS c"
    result = CliRunner().invoke(monitor_app, ["query", sql, "--dataset", location, "--json"])
    assert result.exit_code == 0 and strict_json(result.stdout) == {"a": None, "b": None, "c": 1.5}


def test_a_report_under_a_missing_directory_is_refused_not_created(location, tmp_path):
    out = tmp_path / "nonexistent" / "dir" / "x.html"
    line = _one_line_error(
        CliRunner().invoke(monitor_app, ["report", "--dataset", location, "--out", str(out)])
    )
    assert f"the directory {out.parent} does not exist" in line
    assert not (tmp_path / "nonexistent").exists()


def _png_size(html: str, alt: str) -> tuple[int, int]:
    data = base64.b64decode(re.search(rf'alt="{alt}"\s+src="data:image/png;base64,([^"]+)"', html)[1])
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_long_channel_names_are_shortened_in_the_figures(location, tmp_path):
    """A 3,000-character channel name stretched the heat map and the distribution plot."""
    out = tmp_path / "short.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    short = [_png_size(out.read_text(), alt) for alt in ("per-channel PSI heat map", 'worst channel[^"]*')]
    add_rows(location, "longnames", channels=["x" * 3000 + "0", "x" * 3000 + "1"])
    add_rows(location, "longnames2", channels=["y" * 3000, "c1"], psi=[9.0, 0.1])
    write_report(dataset.read(location), RULES, out, now=NOW)
    long = [_png_size(out.read_text(), alt) for alt in ("per-channel PSI heat map", 'worst channel[^"]*')]
    for (w0, h0), (w1, h1) in zip(short, long, strict=True):
        assert w1 < 3 * w0 and h1 < 3 * h0 + 600, (short, long)
