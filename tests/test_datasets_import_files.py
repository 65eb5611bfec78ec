"""`edge-ttt datasets import` on CSV files as people have them: decimal commas, other encodings,
a column named twice. Each refusal is one line naming the column and the fix, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_ttt.cli import app
from edge_ttt.recordlog import read_log
from firmware_sim.datasets.importer import first_non_utf8

runner = CliRunner()


def run_import(csv: Path, *args: str):
    out = csv.with_name("out.parquet")
    result = runner.invoke(app, ["datasets", "import", str(csv), "--out", str(out), *args])
    return result, out


def one_line_refusal(result, out: Path, csv: Path, message: str) -> None:
    assert result.exit_code == 2, result.output
    line, rest = result.output.split("\n", 1)
    assert rest == "" and line.startswith(f"error: {csv}: {message}"), line
    assert "Fix: " in line and not out.exists()


def test_a_semicolon_csv_with_decimal_commas_imports_its_numbers(tmp_path: Path):
    """What a spreadsheet in a decimal-comma locale saves: the channels found without --channels
    (they were text, so none was left: 'no numeric column is left for channels'), and the times."""
    csv = tmp_path / "export.csv"
    csv.write_text("t;ax;ay;note\n0,00;1,5;2;start\n0,02;-1,25;3;\n0,04;1,5e-1;;\n")
    result, out = run_import(csv, "--time", "t", "--time-unit", "s")
    assert result.exit_code == 0, result.output
    log = read_log(out)
    assert log.channels == ("ax", "ay") and log.t_ns.tolist() == [0, 20_000_000, 40_000_000]
    assert log.values[:, 0].tolist() == pytest.approx([1.5, -1.25, 0.15])
    assert "note left out" in result.output
    named, out = run_import(csv, "--time", "t", "--time-unit", "s", "--channels", "ax=x")
    assert named.exit_code == 0 and read_log(out).values[:, 0].tolist() == pytest.approx([1.5, -1.25, 0.15])


def test_a_header_that_is_not_utf8_is_one_line_not_a_traceback(tmp_path: Path):
    csv = tmp_path / "lab.csv"
    csv.write_bytes("t,ax,température\n0,1,21.5\n20,2,21.5\n".encode("latin-1"))
    result, out = run_import(csv, "--time", "t", "--time-unit", "ms")
    message = "the file is not UTF-8 text (line 1, byte 0xe9). Fix: save it as UTF-8"
    one_line_refusal(result, out, csv, message)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--label", "column 'act' holds text that is not UTF-8 (class names). Fix: save the file as UTF-8"),
        ("--device-column", "the file is not UTF-8 text (line 3, byte 0xe9). Fix: save it as UTF-8"),
    ],
)
def test_text_columns_that_are_not_utf8_say_so(tmp_path: Path, option: str, message: str):
    """Before: 'has type binary ... Fix: pass the label column to --label' (it was passed), and
    'not a readable CSV file (... invalid UTF8 data). Fix: check the file and its suffix'."""
    csv = tmp_path / "cap.csv"
    csv.write_bytes("t,ax,act\n0,1,assis\n20,2,marché\n".encode("latin-1"))
    result, out = run_import(csv, "--time", "t", "--time-unit", "ms", option, "act")
    one_line_refusal(result, out, csv, message)


def test_a_column_named_twice_is_one_line_not_a_traceback(tmp_path: Path):
    csv = tmp_path / "cap.csv"
    csv.write_text("t,ax,ax,ay\n0,1,2,3\n20,1,2,3\n")
    result, out = run_import(csv, "--time", "t", "--time-unit", "ms")
    message = "the header names column(s) 'ax' more than once. Fix: give every column its own name"
    one_line_refusal(result, out, csv, message)


def test_first_non_utf8_finds_the_line_across_chunks(tmp_path: Path):
    path = tmp_path / "x.csv"
    path.write_bytes("ab\ncé\n".encode())
    assert first_non_utf8(path, chunk=1) is None  # é split between chunks is still UTF-8
    path.write_bytes(b"ab\ncd\n\xe9\n")
    assert first_non_utf8(path, chunk=2) == "line 3, byte 0xe9"
    path.write_bytes(b"ab\n\xc3")
    assert first_non_utf8(path, chunk=2) == "line 2, at its end"


@pytest.mark.parametrize(
    ("args", "text", "message"),
    [
        (["--device", ""], "t,ax\n0,1\n20,2\n", "--device '' cannot be a level of the devices' MQTT topics"),
        (["--device", "lab/1"], "t,ax\n0,1\n20,2\n", "--device 'lab/1' cannot be a level"),
        (
            ["--device-column", "dev"],
            "t,dev,ax\n0,a+b,1\n20,a+b,2\n",
            "column 'dev' holds device id 'a+b', which cannot be a level of the devices' MQTT topics "
            "(it holds '+'). Fix: rename it",
        ),
    ],
    ids=["empty name", "slash", "wildcard in the column"],
)
def test_a_device_id_that_cannot_be_a_topic_level_is_refused_at_import(tmp_path: Path, args, text, message):
    """`--device ""` (an unset shell variable) or `lab/1` wrote a log that `firmware-sim replay` and
    the agent refuse later (its topics would be `<prefix>//dt/0`, `<prefix>/lab/1/dt/0`)."""
    csv = tmp_path / "cap.csv"
    csv.write_text(text)
    result, out = run_import(csv, "--time", "t", "--time-unit", "ms", *args)
    one_line_refusal(result, out, csv, message)
