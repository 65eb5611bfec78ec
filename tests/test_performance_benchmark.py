"""The performance benchmark's parts: turn-taking timer, summaries, targets, report, tiny runs."""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import graph_paths, rss_workload  # noqa: E402
from benchmarks.adaptation import FAIL, NOT_MEASURED, PASS  # noqa: E402
from benchmarks.performance import (  # noqa: E402
    COLUMNS,
    CYCLE,
    DEFAULT_POLICY,
    TORCH_TENT,
    TRAIN_PASS,
    UNGATED,
    evaluate_targets,
    in_batches,
    markdown,
    measure_gate,
    measure_replay,
    measure_windows,
    parse_args,
    ratio,
    summary_ms,
    time_turns,
)
from tests.conftest import synthetic_log  # noqa: E402


def test_runners_take_turns_on_the_same_batches_and_warmup_is_not_recorded():
    calls: list[tuple[str, int]] = []
    runners = {name: (lambda x, name=name: calls.append((name, int(x[0])))) for name in "abc"}
    times = time_turns(runners, [np.array([0]), np.array([1])], rounds=40, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 40, "b": 40, "c": 40}
    rounds = [calls[3 * i : 3 * i + 3] for i in range(42)]
    assert all(sorted(name for name, _ in r) == ["a", "b", "c"] for r in rounds)  # each once a round
    assert all(batch == i % 2 for i, r in enumerate(rounds) for _, batch in r)  # on the same batch
    # in changing orders: no runner always right after the same one
    follows = {(r[j][0], r[j + 1][0]) for r in rounds for j in range(2)}
    assert len(follows) == 6
    again: list[tuple[str, int]] = []
    runners = {name: (lambda x, name=name: again.append((name, int(x[0])))) for name in "abc"}
    time_turns(runners, [np.array([0]), np.array([1])], rounds=40, warmup=2)
    assert again == calls  # seeded: a rerun takes the same orders


def test_a_block_goes_through_one_batch_at_a_time():
    seen: list[list[int]] = []
    in_batches(lambda x: seen.append(x.tolist()), 2)(np.arange(5))
    assert seen == [[0, 1], [2, 3], [4]]


def test_summary_is_per_window():
    s = summary_ms([0.016] * 9 + [0.032], batch_size=16)
    assert s["median_ms"] == pytest.approx(1.0) and s["p90_ms"] == pytest.approx(1.1) and s["calls"] == 10


def rows(ungated: float, torch_tent: float, source: float) -> list[dict]:
    values = {UNGATED: ungated, TORCH_TENT: torch_tent, "source": source}
    return [
        {"model": "m", "batch_size": 1, "column": c, "median_ms": v, "p90_ms": v, "counters": None}
        for c, v in values.items()
    ]


def gate(gated_ms: float, gated_acc: float, ungated_ms: float = 1.0, ungated_acc: float = 0.8) -> dict:
    entry = {"counters": {"skipped_no_drift": 5}}
    return {
        "model": "m",
        "windows": 10,
        "source": {"mean_ms": 0.2, "accuracy": 0.78, **entry},
        DEFAULT_POLICY: {"mean_ms": gated_ms, "accuracy": gated_acc, **entry},
        UNGATED: {"mean_ms": ungated_ms, "accuracy": ungated_acc, **entry},
    }


def rss(engine_mib: float, torch_mib: float, torch_importable: bool = False) -> dict:
    engine = {"peak_rss_mib": engine_mib, "torch_importable": torch_importable}
    return {
        "model": "m",
        "engine": engine,
        "engine_beside_torch": engine,
        "torch": {"peak_rss_mib": torch_mib},
    }


def results(**overrides) -> dict:
    base = {
        "windows": rows(ungated=0.4, torch_tent=1.0, source=0.2),
        "gate": [gate(0.5, 0.80)],
        "rss": [rss(80, 300)],
        "replay": [{"model": "m", "x_real_time": 500.0}],
    }
    return {**base, **overrides}


def test_targets_pass_on_good_numbers():
    assert [t.status for t in evaluate_targets(results())] == [PASS] * 5


def test_each_target_fails_on_its_own_number():
    cases = {
        0: {"windows": rows(ungated=0.6, torch_tent=1.0, source=0.3)},  # over half of torch
        1: {"windows": rows(ungated=0.4, torch_tent=1.0, source=0.1)},  # 4x inference
        2: {"gate": [gate(0.5, 0.75)]},  # the gate costs accuracy
        3: {"rss": [rss(120, 300)]},
        4: {"replay": [{"model": "m", "x_real_time": 150.0}]},
    }
    for index, override in cases.items():
        statuses = [t.status for t in evaluate_targets(results(**override))]
        assert statuses == [FAIL if i == index else PASS for i in range(5)], index
    slower = evaluate_targets(results(gate=[gate(1.2, 0.80)]))[2]
    assert slower.status == FAIL and "missed" in slower.details[0]


def test_the_first_target_names_the_bare_training_pass_as_its_floor():
    windows = rows(ungated=0.6, torch_tent=1.0, source=0.3)
    windows.append({**windows[0], "column": TRAIN_PASS, "median_ms": 0.45})
    first = evaluate_targets(results(windows=windows))[0]
    assert first.status == FAIL and first.details == ["m: 0.60 (missed)", f"m: {TRAIN_PASS} alone 0.45"]


def test_memory_target_fails_when_the_device_environment_has_torch():
    assert evaluate_targets(results(rss=[rss(80, 300, torch_importable=True)]))[3].status == FAIL


def test_nothing_measured():
    statuses = [t.status for t in evaluate_targets({"windows": [], "gate": [], "rss": [], "replay": []})]
    assert statuses == [NOT_MEASURED] * 5


def test_ratio_needs_both_columns():
    assert ratio(rows(0.4, 1.0, 0.2), "m", 1, UNGATED, TORCH_TENT) == pytest.approx(0.4)
    assert ratio(rows(0.4, 1.0, 0.2), "m", 16, UNGATED, TORCH_TENT) is None


def test_tiny_run_of_every_measurement_and_the_report(model_paths, synthetic_log_path, tmp_path):
    log = synthetic_log(devices=2, seconds=20)
    args = parse_args(["--repeats", "3", "--warmup", "1", "--batch-sizes", "1,4", "--corruption", "gain"])
    windows = measure_windows("cnn-bn", model_paths, log, args)
    assert {(r["batch_size"], r["column"]) for r in windows} == {(b, c) for b in (1, 4) for c in COLUMNS}
    assert all(r["calls"] == 3 and r["median_ms"] > 0 for r in windows)
    # at batch size 1 a timed call is a block of whole cycles (source pass, gradient step), window by window
    assert CYCLE == 4
    assert all(r["counters"]["windows"] == 4 * CYCLE for r in windows if "counters" in r)
    g = measure_gate("cnn-bn", model_paths, log, args)
    assert (
        g[UNGATED]["counters"]["skipped_no_drift"] == 0 and g["windows"] == g["source"]["counters"]["windows"]
    )
    replayed = measure_replay("cnn-bn", model_paths, synthetic_log_path)
    assert replayed["x_real_time"] > 0 and replayed["log_seconds"] == pytest.approx(4 * 40.0, rel=0.01)
    fleet = {"peak_rss_mib": 1.0, "torch_importable": True, "python": sys.executable}
    meta = {
        "command": "test", "date_utc": "now", "git_commit": "x", "git_dirty": False, "wall_s": 1.0,
        "cpus": 2, "corruption": "gain", "severity": 4, "repeats": 3, "warmup": 1, "devices": 2,
        "device_windows": 2, "device_python": sys.executable, "log": "synthetic",
    }  # fmt: skip
    res = {
        "meta": meta,
        "windows": windows,
        "gate": [g],
        "rss": [{"model": "cnn-bn", "engine": fleet, "engine_beside_torch": fleet, "torch": fleet}],
        "replay": [replayed],
    }
    report = markdown(res, evaluate_targets(res))
    assert "| cnn-bn | 4 |" in report and f"{UNGATED} / {TORCH_TENT}" in report and "**" in report


def test_engine_fleet_workload_runs_and_reports_peak_memory(model_paths, tmp_path, capsys):
    path = tmp_path / "w.npy"
    np.save(path, np.random.default_rng(0).normal(size=(2, 6, 64)).astype(np.float32))
    rss_workload.main(
        ["engine", "--bundle", str(model_paths.bundle), "--windows", str(path), "--devices", "3"]
    )
    out = capsys.readouterr().out
    assert '"kind": "engine"' in out and rss_workload.peak_rss_mib() > 0
    rss_workload.torch_fleet(model_paths.checkpoint, np.load(path), devices=2)


def test_arguments_are_checked():
    with pytest.raises(SystemExit):
        parse_args(["--repeats", "0"])
    assert isinstance(parse_args([]), argparse.Namespace)
    assert parse_args([]).models == ["cnn-bn", "cnn-gn", "tcn-ln"]  # no entropy steps on an auxiliary head
    with pytest.raises(SystemExit):
        parse_args(["--models", "cnn-bn-ttt"])


def test_graph_paths_times_every_path_of_one_bundle_side_by_side(model_paths, tmp_path):
    """The bundle as exported, without its fixed-statistics graphs, and as schema 1, in one run."""
    row = graph_paths.measure(
        "cnn-bn", model_paths, synthetic_log(devices=2, seconds=20), 2, random.Random(0), tmp_path
    )
    assert set(row["ratio_to_tent"]) == set(graph_paths.PATHS) == {"fixed", "standard", "training"}
    columns = {f"{c}/{p}" for c in ("steady-ungated", "train-pass") for p in graph_paths.PATHS} | {
        "torch-tent"
    }
    assert set(row["median_ms"]) == columns
    assert all(ms > 0 for ms in row["median_ms"].values())
    assert not (tmp_path / "cnn-bn").exists()  # the copies are removed after the model
