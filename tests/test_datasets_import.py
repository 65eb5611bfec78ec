"""`edge-ttt datasets import`: other people's CSV and Parquet files as recorded logs."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from edge_ttt.cli import app
from edge_ttt.recordlog import RecordedLog, read_log, write_log
from firmware_sim.datasets.tabular import ImportSpec, parse_channels, table_to_log
from firmware_sim.datasets.timing import measure
from tests.conftest import CHANNELS, synthetic_log

runner = CliRunner()
RENAMED = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
AS_CHANNELS = ",".join(f"{a}={b}" for a, b in zip(RENAMED, CHANNELS, strict=True))


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def export_table(log: RecordedLog, time: pa.Array) -> pa.Table:
    """`log` as a phone app would export it: its own column names, class names as text."""
    names = np.array(log.class_names, dtype=object)[log.label]
    columns = {"timestamp": time, "subject": pa.array(log.device_id, pa.string())}
    columns |= {new: pa.array(log.values[:, j]) for j, new in enumerate(RENAMED)}
    return pa.table({**columns, "activity": pa.array(names, pa.string())})


def assert_same_log(got: RecordedLog, want: RecordedLog) -> None:
    assert got.channels == want.channels and got.class_names == want.class_names
    assert got.sample_rate_hz == pytest.approx(want.sample_rate_hz)
    assert (got.device_id == want.device_id).all() and (got.t_ns == want.t_ns).all()
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.label, want.label)


def test_a_csv_of_the_smartwatch_recordings_imports_as_the_converter_writes_them(tmp_path: Path):
    """Times in milliseconds, renamed channels, activity names: the same log as `datasets watch`,
    the rate inferred (50 Hz, stated in seglearn's docs only), each gap between recordings found."""
    if importlib.util.find_spec("seglearn") is None:
        pytest.skip("seglearn (which ships the smartwatch data) is not installed")
    from firmware_sim.datasets.watch import watch_logs

    want = watch_logs()["target"]
    csv = tmp_path / "watch.csv"
    pacsv.write_csv(export_table(want, pa.array(want.t_ns // 1_000_000)), csv)
    classes = ",".join(want.class_names)  # the model's order, not the sorted one
    out = tmp_path / "watch.parquet"
    args = ("--time", "timestamp", "--time-unit", "ms", "--device-column", "subject")
    result = invoke(
        "datasets", "import", csv, "--out", out, *args, "--channels", AS_CHANNELS, "--label", "activity",
        "--classes", classes,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_same_log(read_log(out), want)
    gaps = int((np.diff(want.t_ns)[want.device_id[1:] == want.device_id[:-1]] > 40_000_000).sum())
    assert gaps > 0  # the converter's 10 s between one recording and the next
    devices = len(want.devices())
    assert result.output.splitlines() == [
        f"{out}: {len(want)} samples of {devices} device(s) ({', '.join(want.devices()[:5])} and "
        f"{devices - 5} more), channels {', '.join(CHANNELS)}, classes "
        + ", ".join(f"{i}={c}" for i, c in enumerate(want.class_names)),
        "sample rate 50 Hz (inferred from the median period); timing: median period 20.000 ms, "
        f"jitter 0.000 ms, {gaps} gap(s) over 2 periods (40 ms) that end a run",
    ]


def test_an_imported_log_replays_like_the_log_written_directly(bundle_dir: Path, tmp_path: Path):
    """ISO times, text labels in sorted order (the synthetic classes sort as they index)."""
    log = synthetic_log(devices=2, seconds=20.0)
    direct = tmp_path / "direct.parquet"
    write_log(direct, log)
    source = tmp_path / "export.parquet"
    iso = pa.array(log.t_ns).cast(pa.timestamp("ns", tz="UTC")).cast(pa.string())
    pq.write_table(export_table(log, iso), source)
    imported = tmp_path / "imported.parquet"
    args = ("--time", "timestamp", "--device-column", "subject", "--label", "activity")
    result = invoke("datasets", "import", source, "--out", imported, *args, "--channels", AS_CHANNELS)
    assert result.exit_code == 0, result.output
    assert_same_log(read_log(imported), log)

    def replayed(path: Path) -> list[dict]:
        result = invoke("replay", "--artifacts", bundle_dir, "--log", path, "--policy", "all", "--json")
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        return [{k: v for k, v in row.items() if k != "ms_per_window"} for row in rows]

    first = replayed(direct)
    assert len(first) > 1 and first == replayed(imported)


def table(**columns) -> pa.Table:
    return pa.table(columns)


T = [0, 20, 40, 60]


@pytest.mark.parametrize(
    ("args", "columns", "message"),
    [
        (
            ["--time", "time"],
            {"t": T, "ax": [1.0] * 4},
            "column 'time' (given as --time) is not in the table; its columns: t, ax. Fix: pass one of "
            "those to --time",
        ),
        (
            ["--time", "t"],
            {"t": T, "ax": [1.0] * 4},
            "column 't' holds numbers, and their unit is not given. Fix: say it with --time-unit s, ms",
        ),
        (
            ["--time", "t"],
            {"t": ["2024-01-01T00:00:00Z", "soon", "later", "never"], "ax": [1.0] * 4},
            "column 't' holds 'soon' in row 2, which is not an ISO 8601 time like the rows before it",
        ),
        (
            ["--time", "t", "--time-unit", "ms"],
            {"t": [0, 20, 20, 60], "ax": [1.0] * 4},
            "column 't' repeats a time for device 'x' (1 time(s) in all). Fix: drop duplicate rows",
        ),
        (
            ["--time", "t", "--time-unit", "ms", "--channels", "ax,label"],
            {"t": T, "ax": [1.0] * 4, "label": [1.0] * 4},
            "channel name 'label' (column 'label') is reserved in the log format. Fix: rename the channel: "
            "--channels label=<new name>",
        ),
        (
            ["--time", "t", "--time-unit", "ms", "--channels", "ax,note"],
            {"t": T, "ax": [1.0] * 4, "note": ["a", "b", "c", "d"]},
            "column 'note' (a channel) holds string values that are not numbers",
        ),
        (
            ["--time", "t", "--time-unit", "ms", "--label", "act", "--classes", "walk"],
            {"t": T, "ax": [1.0] * 4, "act": ["walk", "run", None, "walk"]},
            "column 'act' holds class(es) ['run'] that --classes does not list. Fix: add them to --classes",
        ),
        (
            ["--time", "t", "--time-unit", "ms", "--label", "act", "--classes", "walk,run,walk"],
            {"t": T, "ax": [1.0] * 4, "act": ["walk", "run", None, "walk"]},
            "--classes lists class(es) ['walk'] twice. Fix: list each class once",
        ),
        (
            ["--time", "t", "--time-unit", "ms", "--label", "act"],
            {"t": T, "ax": [1.0] * 4, "act": [0, 1, 2.5, -1]},
            "column 'act' holds numbers that are not class indices (whole numbers >= -1)",
        ),
        (
            ["--time", "t", "--time-unit", "ms", "--device-column", "dev"],
            {"t": T, "ax": [1.0] * 4, "dev": ["a", None, "a", "b"]},
            "column 'dev' has 1 empty value(s), the first in row 2. Fix: give every row a device",
        ),
        (
            ["--time", "t", "--time-unit", "s"],
            {"t": [0.0, 1.0, 1.0, 2.0], "ax": [1.0] * 4},
            "column 't' repeats a time for device 'x'",
        ),
    ],
    ids=[
        "no such column",
        "no unit",
        "not iso",
        "repeated time",
        "reserved name",
        "text channel",
        "unknown class",
        "class twice",
        "fractional index",
        "missing device",
        "duplicate seconds",
    ],
)
def test_each_refusal_is_one_line_naming_the_column_and_the_fix(tmp_path: Path, args, columns, message):
    source = tmp_path / "x.parquet"
    pq.write_table(table(**columns), source)
    out = tmp_path / "out.parquet"
    result = invoke("datasets", "import", source, "--out", out, *args)
    assert result.exit_code == 2, result.output
    line, rest = result.output.split("\n", 1)
    assert rest == "" and line.startswith(f"error: {source}: {message}"), line
    assert "Fix: " in line and not out.exists()


def test_a_csv_device_id_keeps_its_leading_zeros(tmp_path: Path):
    csv = tmp_path / "phone.csv"
    csv.write_text("t,dev,ax\n0,007,1.0\n0,008,2.0\n20,007,1.5\n")
    out = tmp_path / "out.parquet"
    result = invoke("datasets", "import", csv, "--out", out, "--time", "t", "--time-unit", "ms",
                    "--device-column", "dev", "--rate", "50")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_log(out).devices() == ["007", "008"]


def import_seconds(tmp_path: Path, name: str, text: str):
    """`datasets import` of a CSV with the given text, times in seconds in column t: the result
    (asserted a success) and the log written."""
    csv = tmp_path / name
    csv.write_text(text)
    out = tmp_path / "out.parquet"
    result = invoke("datasets", "import", csv, "--out", out, "--time", "t", "--time-unit", "s")
    assert result.exit_code == 0, result.output
    return result, read_log(out)


def test_an_out_that_would_replace_the_input_or_is_not_parquet_is_refused(tmp_path: Path):
    """The input itself, by its path or through a link, and a log named as a CSV: one line, and the
    input untouched."""
    source = tmp_path / "cap.parquet"
    pq.write_table(table(t=T, ax=[1.0] * 4), source)
    before = source.read_bytes()
    (tmp_path / "link.parquet").symlink_to(source)
    cases = {
        source: f"--out is the input file {source} itself, which the log would replace. Fix: name a new "
        f"file for the log, e.g. --out {tmp_path / 'cap-log.parquet'}.",
        tmp_path / "link.parquet": f"--out is the input file {source} itself",
        tmp_path / "cap.csv": "--out names a '.csv' file, but a recorded log is a Parquet file. Fix: name it "
        "cap.parquet (.parquet, .pq).",
    }
    for out, message in cases.items():
        result = invoke("datasets", "import", source, "--out", out, "--time", "t", "--time-unit", "ms")
        assert result.exit_code == 2 and result.output.startswith(f"error: {out}: {message}"), result.output
        assert len(result.output.splitlines()) == 1 and source.read_bytes() == before
    assert not (tmp_path / "cap.csv").exists()


def test_watch_refuses_an_out_that_is_a_file_in_one_line(tmp_path: Path):
    (tmp_path / "notes").write_text("a user's file")
    for out in (tmp_path / "notes", tmp_path / "notes" / "logs"):
        result = invoke("datasets", "watch", "--out", out)
        assert result.exit_code == 2 and result.output == (
            f"error: --out {out}: {tmp_path / 'notes'} is a file; --out must be a directory (new or "
            "existing) for the two logs\n"
        )
    assert (tmp_path / "notes").read_text() == "a user's file"


def test_a_sensor_column_with_a_stray_text_cell_is_reported_not_dropped_unseen(tmp_path: Path):
    text = "t,ax,ay,note\n0,1,2,start\n0.02,1..5,3,\n0.04,1,2,\n"  # a typo in ax
    result, log = import_seconds(tmp_path, "cap.csv", text)
    assert log.channels == ("ay",)
    assert "warning: column(s) ax, note left out of the channels: they hold values that are not numbers" in (
        result.output
    )


def test_a_semicolon_separated_csv_is_read_by_its_header(tmp_path: Path):
    """Spreadsheets in locales with decimal commas write ';' between the columns."""
    _, log = import_seconds(tmp_path, "export.csv", "t;ax;ay\n0.00;1;2\n0.02;1;3\n0.04;1;2\n")
    assert log.channels == ("ax", "ay") and log.values[:, 1].tolist() == [2, 3, 2]


def test_without_a_device_column_the_file_name_is_the_device(tmp_path: Path):
    _, log = import_seconds(tmp_path, "lab-capture.csv", "t,ax,ay\n0.00,1,2\n0.01,1,2\n0.02,1,2\n")
    assert log.devices() == ["lab-capture"] and log.channels == ("ax", "ay")
    assert log.sample_rate_hz == pytest.approx(100.0) and log.label is None


def test_a_zone_offset_on_some_rows_only_is_refused_at_the_first_one():
    times = ["2024-01-01T00:00:00.020", "2024-01-01T00:00:00.040", "2024-01-01T00:00:00.060Z"]
    with pytest.raises(ValueError, match=re.escape("holds '2024-01-01T00:00:00.060Z' in row 3, which")):
        table_to_log(table(t=times, ax=[1.0] * 3), ImportSpec(time="t", device="d"), "x")


def test_zoned_and_unzoned_iso_times_are_the_same_utc_instants():
    zoned = ["2024-01-01T01:00:00.020+01:00", "2024-01-01T00:00:00.040Z"]
    unzoned = ["2024-01-01 00:00:00.020", "2024-01-01T00:00:00.040"]
    logs = [
        table_to_log(table(t=times, ax=[1.0, 2.0]), ImportSpec(time="t", device="d"), "x")[0]
        for times in (zoned, unzoned)
    ]
    want = 1_704_067_200_000_000_000 + np.array([20, 40]) * 1_000_000
    assert (logs[0].t_ns == want).all() and (logs[1].t_ns == want).all()


def test_numeric_labels_are_indices_and_classes_name_them():
    spec = ImportSpec(time="t", time_unit="ms", device="d", label="y", classes=("a", "b"))
    log = table_to_log(table(t=T, ax=[0.0] * 4, y=[1, None, 0, -1]), spec, "x").log
    assert log.label.tolist() == [1, -1, 0, -1] and log.class_names == ("a", "b")


def test_timing_reports_jitter_gaps_and_irregular_sampling():
    steady = measure(np.full(99, 20_000_000), None)
    assert steady.rate_hz == 50.0 and steady.rate_inferred and steady.jitter_ns == 0.0 and steady.gaps == 0
    assert not steady.irregular and not steady.line().startswith("irregular")
    rng = np.random.default_rng(0)
    shaky = np.concatenate([20_000_000 + rng.integers(-6_000_000, 6_000_000, 200), [1_000_000_000]])
    timing = measure(shaky, None)
    assert timing.gaps == 1 and 3e6 < timing.jitter_ns < 4e6  # uniform on +-6 ms: sd 3.46 ms
    assert timing.irregular and timing.line().startswith("irregular timing: ")
    slow = measure(np.full(10, 25_000_000), 50.0)  # 40 Hz samples said to be 50 Hz
    assert not slow.rate_inferred and slow.irregular


def test_channels_option_renames_with_equals():
    assert parse_channels("acc_x=ax, gz") == (("acc_x", "ax"), ("gz", "gz"))


def test_the_worked_example_in_the_docs_prints_what_it_says(tmp_path: Path, monkeypatch):
    page = (Path(__file__).resolve().parents[1] / "docs" / "log-format.md").read_text()
    example = page[page.index("A worked example") :]
    csv_text = re.search(r"```\n(timestamp,.*?)```", example, flags=re.S).group(1)
    console = re.search(r"```console\n\$ edge-ttt (.*?)\n(phone\.parquet.*?)```", example, flags=re.S)
    (tmp_path / "phone.csv").write_text(csv_text)
    monkeypatch.chdir(tmp_path)
    result = invoke(*console.group(1).replace("\\\n", " ").split())
    assert result.exit_code == 0, result.output
    assert result.output == console.group(2)
    log = read_log(tmp_path / "phone.parquet")
    assert log.label.tolist() == [1, 1, 0, 0, 0, -1] and np.isnan(log.values[4, 2])
