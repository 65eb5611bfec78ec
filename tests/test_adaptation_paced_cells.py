"""Paced cells and `--paced` (benchmarks/adaptation): the engine driven by the paced clock on a
small bundle. Rates at the physical extremes keep the assertions free of timing: at 1e-6 Hz a
window arrives every two years (nothing is missed), at 1e12 Hz every 64 ps (everything after
the first batch is)."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("torch")

from benchmarks.adaptation import Cell, main, run_cell
from benchmarks.adaptation.cli import parse_args
from tests.conftest import synthetic_log

SLOW, FAST = 1e-6, 1e12


@pytest.mark.parametrize("policy", ["source", "steady"])
def test_a_stream_slower_than_any_step_is_scored_as_unpaced(model_paths, policy):
    log = synthetic_log(devices=2, seconds=20)
    cell = Cell("cnn-bn", "gain", 4, "recorded", 4, policy, seed=0)
    unpaced, paced = run_cell(cell, model_paths, log), run_cell(cell, model_paths, log, SLOW)
    assert "paced" not in unpaced
    assert paced["accuracy"] == unpaced["accuracy"] and paced["counters"] == unpaced["counters"]
    p = paced["paced"]
    assert p["missed"] == 0 and p["ms_per_predict"] is None and p["ms_per_process"] > 0
    assert p["rate_hz"] == SLOW and p["hop_ms"] == pytest.approx(1000 * 32 / SLOW)  # the bundle's hop: 32


def test_a_stream_faster_than_any_step_adapts_on_the_first_batch_only(model_paths):
    log = synthetic_log(devices=2, seconds=20)
    cell = Cell("cnn-bn", "gain", 4, "recorded", 4, "steady", seed=0)
    paced = run_cell(cell, model_paths, log, FAST)
    assert paced["paced"]["missed"] == paced["windows"] - 4
    assert paced["counters"]["windows"] == 4  # the engine counts what it adapted on
    assert paced["paced"]["lag_ms"] > 0 and 0.0 <= paced["accuracy"] <= 1.0
    # The source model adapts nothing: predicted or processed, its accuracy is the same.
    source = Cell("cnn-bn", "gain", 4, "recorded", 4, "source", seed=0)
    assert (
        run_cell(source, model_paths, log, FAST)["accuracy"] == run_cell(source, model_paths, log)["accuracy"]
    )


def test_the_torch_tent_cannot_be_paced(model_paths):
    with pytest.raises(ValueError, match="cannot be paced"):
        run_cell(
            Cell("cnn-bn", "clean", 4, "recorded", 4, "torch-tent", seed=0),
            model_paths,
            synthetic_log(2, 20),
            SLOW,
        )


def test_paced_rates_are_a_comma_list_and_repeatable():
    assert parse_args([]).paced is None
    assert parse_args(["--paced", "50,5000", "--paced", "1e3"]).paced == [50.0, 5000.0, 1000.0]
    for bad in ("0", "-5", "fast", ","):
        with pytest.raises(SystemExit):
            parse_args(["--paced", bad])


@pytest.mark.skipif(importlib.util.find_spec("seglearn") is None, reason="seglearn ships the watch data")
def test_main_reports_paced_cells_next_to_the_unpaced_ones(model_paths, tmp_path):
    args = ["--models", "cnn-bn", "--corruptions", "clean", "--orders", "recorded", "--batch-sizes", "16"]
    args += ["--policies", "source,steady", "--cache", str(model_paths.bundle.parent), "--jobs", "1"]
    main([*args, "--paced", f"{SLOW:g},{FAST:g}", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "adaptation.json").read_text())
    assert [(c["policy"], "paced" in c) for c in doc["cells"]] == [
        ("source", False),
        ("steady", False),
        ("torch-tent", False),
    ]
    assert doc["meta"]["paced_hz"] == [SLOW, FAST]
    assert [(c["paced"]["rate_hz"], c["policy"]) for c in doc["paced"]] == [
        (SLOW, "source"),
        (SLOW, "steady"),
        (FAST, "source"),
        (FAST, "steady"),
    ]
    unpaced = {c["policy"]: c["accuracy"] for c in doc["cells"]}
    assert [c["paced"]["missed"] for c in doc["paced"][:2]] == [0, 0]
    assert doc["paced"][1]["accuracy"] == unpaced["steady"]
    report = (tmp_path / "adaptation.md").read_text()
    assert "| rate Hz | hop ms | order | batch | shift | policy | unpaced | paced | missed |" in report
    assert f"| {FAST:g} | " in report and "misses no window" in report
