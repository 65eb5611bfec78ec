"""The adaptation benchmark's parts: the torch Tent reference, stream orders, one cell, the command.
The targets and the report, pure functions of results, are tested in test_adaptation_targets.py."""

from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.adaptation import (  # noqa: E402
    NO_FALLBACK_COLUMN,
    ORDERS,
    TORCH_TENT,
    Cell,
    main,
    make_stream,
    run_cell,
    stream_order,
)
from benchmarks.torch_tent import TorchTent, softmax_entropy, tent_predictions  # noqa: E402
from edge_ttt.adapt.engine import Engine  # noqa: E402
from edge_ttt.adapt.ort_model import OrtModel  # noqa: E402
from edge_ttt.artifacts import load_bundle  # noqa: E402
from edge_ttt.metrics import accuracy  # noqa: E402
from edge_ttt.stream.window import windows_from_log  # noqa: E402
from export.norms import norm_layers  # noqa: E402
from firmware_sim.corruptions import corrupt_log  # noqa: E402
from tests.conftest import MODELS, synthetic_log  # noqa: E402
from tests.model_factory import randomized_model, windows  # noqa: E402


def batch_statistics_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits with every batch norm normalizing by the batch's own statistics (torch train mode)."""
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        return reference(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_torch_tent_step_moves_only_norm_affines_and_returns_pre_step_logits(name):
    model = randomized_model(name)
    before = copy.deepcopy(model.state_dict())
    x = windows(8)
    tent = TorchTent(model, lr=1e-2)
    logits = tent.forward_and_adapt(x)
    np.testing.assert_allclose(logits, batch_statistics_logits(model, x), atol=1e-5)

    norm_params = {f"{layer}.{p}" for layer in norm_layers(model) for p in ("weight", "bias")}
    after = tent.model.state_dict()
    for key, value in before.items():
        if key in norm_params:
            assert not torch.equal(after[key], value), f"{key} did not learn"
        elif key in after:  # running statistics are dropped, not updated
            assert torch.equal(after[key], value), f"{key} changed"
        else:
            assert key.endswith(("running_mean", "running_var"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # caller's model kept

    # One step lowers the entropy on the same batch: the step goes downhill.
    after_logits = torch.from_numpy(tent.forward_and_adapt(x))
    assert softmax_entropy(after_logits).mean() < softmax_entropy(torch.from_numpy(logits)).mean()


def test_torch_tent_batches_in_order_including_size_one_and_a_short_last_batch():
    model = randomized_model("cnn-bn")
    x = windows(7, seed=2)
    tent = TorchTent(model, lr=1e-3)
    expected = np.concatenate([tent.forward_and_adapt(x[i : i + 3]).argmax(axis=1) for i in (0, 3, 6)])
    np.testing.assert_array_equal(tent_predictions(model, x, batch_size=3, lr=1e-3), expected)
    one = tent_predictions(model, x, batch_size=1, lr=1e-3)
    assert one.shape == (7,) and one.dtype == np.int64
    # The first window is predicted before any step: normalized by its own statistics.
    assert one[0] == batch_statistics_logits(model, x[:1]).argmax()
    with pytest.raises(ValueError, match="batch size"):
        tent_predictions(model, x, batch_size=0, lr=1e-3)


def test_stream_orders():
    devices = np.array(["b", "a", "b", "a", "c", "a"], dtype=object)
    t_end = np.array([10, 10, 20, 30, 5, 20])
    labels = np.array([1, 0, 0, 2, 1, 0])
    recorded = stream_order(devices, t_end, labels, "recorded", seed=0)
    assert devices[recorded].tolist() == ["a", "a", "a", "b", "b", "c"]
    assert t_end[recorded].tolist() == [10, 20, 30, 10, 20, 5]
    shuffled = stream_order(devices, t_end, labels, "shuffled", seed=0)
    assert sorted(shuffled.tolist()) == list(range(6))
    np.testing.assert_array_equal(shuffled, stream_order(devices, t_end, labels, "shuffled", seed=0))
    assert any(
        not np.array_equal(shuffled, stream_order(devices, t_end, labels, "shuffled", seed=s)) for s in (1, 2)
    )
    by_class = stream_order(devices, t_end, labels, "class-sorted", seed=0)
    assert labels[by_class].tolist() == [0, 0, 0, 1, 1, 2]
    assert by_class.tolist() == [1, 5, 2, 0, 4, 3]  # recorded order within a class
    with pytest.raises(ValueError, match="unknown order"):
        stream_order(devices, t_end, labels, "sorted", seed=0)


def test_stream_keeps_windows_and_labels_together():
    log = synthetic_log(devices=3, seconds=20)
    batch, devices = windows_from_log(log, 64, 32)
    cell = Cell("cnn-bn", "clean", 4, "shuffled", 1, "source", seed=0)
    stream, stream_devices = make_stream(log, cell, 64, 32)
    position = {t.tobytes(): i for i, t in enumerate(batch.x)}
    idx = [position[w.tobytes()] for w in stream.x]
    assert sorted(idx) == list(range(len(batch)))
    np.testing.assert_array_equal(stream.label, batch.label[idx])
    np.testing.assert_array_equal(stream.t_end_ns, batch.t_end_ns[idx])
    np.testing.assert_array_equal(stream_devices, devices[idx])


@pytest.mark.parametrize("corruption", ["clean", "noise"])
def test_source_cell_scores_every_window_against_its_own_label(model_paths, corruption):
    log = synthetic_log(devices=2, seconds=20)
    batch, _ = windows_from_log(corrupt_log(log, corruption, 4, seed=0), 64, 32)
    engine = Engine(OrtModel(load_bundle(model_paths.bundle)), policy="source")
    expected = accuracy(batch.label, engine.process(batch.x).classes)
    for order in ORDERS:  # the source model does not adapt: the order cannot change its accuracy
        r = run_cell(Cell("cnn-bn", corruption, 4, order, 4, "source", seed=0), model_paths, log)
        assert r["accuracy"] == expected
        assert (
            r["windows"] == len(batch) and r["counters"]["windows"] == len(batch) and r["ms_per_window"] > 0
        )


def test_torch_tent_cell(model_paths):
    log = synthetic_log(devices=2, seconds=20)
    r = run_cell(Cell("cnn-bn", "gain", 4, "recorded", 1, TORCH_TENT, seed=0), model_paths, log)
    assert (r["policy"], r["order"], r["batch_size"], r["counters"]) == (TORCH_TENT, "recorded", 1, None)
    assert r["windows"] == len(windows_from_log(log, 64, 32)[0]) and 0.0 <= r["accuracy"] <= 1.0


def weighted(devices: list[dict], field: str) -> float:
    return sum(d["windows"] * d[field] for d in devices) / sum(d["windows"] for d in devices)


def test_cells_carry_per_device_accuracy_and_estimates(model_paths):
    log = synthetic_log(devices=3, seconds=20)
    cells = {
        column: run_cell(Cell("cnn-bn", "noise", 4, "recorded", 4, column, seed=0), model_paths, log)
        for column in ("source", "steady", NO_FALLBACK_COLUMN, "tent", TORCH_TENT)
    }
    for column, r in cells.items():
        assert [d["device"] for d in r["devices"]] == ["dev0", "dev1", "dev2"], column
        assert sum(d["windows"] for d in r["devices"]) == r["windows"]
        assert weighted(r["devices"], "accuracy") == pytest.approx(r["accuracy"])
        # The estimate comes from the predicted classes, so the torch Tent has one too.
        assert weighted(r["devices"], "estimated_accuracy") == pytest.approx(r["estimated_accuracy"])
        assert 0.0 <= r["estimated_accuracy"] <= 1.0
    # The source model estimates itself; the other engines run it on a sample of the windows
    # (`Engine`'s source_every, and every window while the fallback serves it), the torch Tent not
    # at all. Only the default policy has the fallback.
    source = cells["source"]
    assert source["source_estimated_accuracy"] == source["estimated_accuracy"]
    for column in ("steady", NO_FALLBACK_COLUMN, "tent"):
        r = cells[column]
        assert 0.0 <= r["source_estimated_accuracy"] <= 1.0
        per_device = weighted(r["devices"], "source_estimated_accuracy")
        assert per_device == pytest.approx(r["source_estimated_accuracy"])
        assert {"fallbacks", "windows_on_source"} <= set(r["counters"])
        assert column == "steady" or r["counters"]["windows_on_source"] == r["counters"]["fallbacks"] == 0
    assert cells[TORCH_TENT]["source_estimated_accuracy"] is None
    assert all(d["source_estimated_accuracy"] is None for d in cells[TORCH_TENT]["devices"])


def test_the_label_runs_column_runs_the_switch_and_records_its_options(model_paths):
    from benchmarks.adaptation.cells import NO_RUNS_COLUMN, RUNS_COLUMN, variant
    from benchmarks.adaptation.cli import _column_info
    from edge_ttt.adapt.engine import AUTO_RUNS

    assert variant(RUNS_COLUMN).runs.serve == "source" and variant("no-such-variant").runs is AUTO_RUNS
    assert (
        _column_info(RUNS_COLUMN)["runs"]["horizon"] == 64.0
        and _column_info("steady")["runs"]["horizon"] == 128.0
    )
    assert _column_info("tent")["runs"] is None and _column_info(NO_RUNS_COLUMN)["runs"] is None
    log = synthetic_log(devices=2, seconds=20)
    r = run_cell(Cell("cnn-bn", "noise", 4, "class-sorted", 1, RUNS_COLUMN, seed=0), model_paths, log)
    assert 0 < r["counters"]["windows_in_runs"] < r["windows"]  # it starts out of a run


def test_the_blend_column_carries_the_instance_offsets_in_its_runs_only():
    from benchmarks.adaptation.cells import RUN_BLEND_COLUMN, variant
    from benchmarks.adaptation.cli import _column_info

    v = variant(RUN_BLEND_COLUMN)
    assert v.policy == "steady" and v.options == {} and v.runs is not None
    assert (v.runs.horizon, v.runs.serve, v.runs.instance_offsets) == (128.0, "blend", 4.0)
    assert _column_info(RUN_BLEND_COLUMN)["runs"]["instance_offsets"] == 4.0


def test_a_resampling_shift_changes_the_number_of_windows(model_paths):
    log = synthetic_log(devices=2, seconds=20)
    clean, rate = (
        run_cell(Cell("cnn-bn", name, 5, "recorded", 8, "source", seed=0), model_paths, log)
        for name in ("clean", "rate")
    )
    assert rate["windows"] != clean["windows"] and rate["windows"] > 0
    assert sum(d["windows"] for d in rate["devices"]) == rate["windows"]


@pytest.mark.skipif(importlib.util.find_spec("seglearn") is None, reason="seglearn ships the watch data")
def test_main_writes_results_that_do_not_depend_on_jobs(model_paths, tmp_path):
    args = [
        "--models",
        "cnn-bn",
        "--corruptions",
        "clean,bias,wrist",
        "--orders",
        "shuffled",
        "--batch-sizes",
        "16",
    ]
    args += [
        "--policies",
        f"source,steady,{NO_FALLBACK_COLUMN}",
        "--no-torch-tent",
        "--cache",
        str(model_paths.bundle.parent),
    ]
    main([*args, "--jobs", "1", "--out", str(tmp_path / "one")])
    main([*args, "--jobs", "2", "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / d / "adaptation.json").read_text()) for d in ("one", "two"))
    assert [c["accuracy"] for c in one["cells"]] == [c["accuracy"] for c in two["cells"]]
    assert [c["devices"] for c in one["cells"]] == [c["devices"] for c in two["cells"]]
    assert [(c["corruption"], c["policy"]) for c in one["cells"]] == [
        (name, policy)
        for name in ("clean", "bias", "wrist")
        for policy in ("source", "steady", NO_FALLBACK_COLUMN)
    ]
    meta = one["meta"]
    assert "paced" not in one and "paced_hz" not in meta  # without --paced: as before it existed
    assert meta["git_commit"] and meta["models"]["cnn-bn"]["bundle_sha256"]
    assert (
        meta["columns"]["steady"]["fallback"] == meta["fallback"]
        and meta["columns"][NO_FALLBACK_COLUMN]["fallback"] is None
        and meta["columns"]["source"]["fallback"] is None
    )
    assert len(one["cells"][0]["devices"]) == 10  # the target subjects' devices
    report = (tmp_path / "one" / "adaptation.md").read_text()
    for row in ("original | **mean over corruptions**", "deployment | **mean over deployment shifts**"):
        assert f"| shuffled | 16 | {row} |" in report
    assert "| shuffled | 16 | deployment | wrist |" in report and "## Targets" in report
    assert "Paced" not in report
    assert (
        "| order | batch | shift | steady | estimated | fallbacks | on source | source | estimated | "
        f"{NO_FALLBACK_COLUMN} |" in report
    )


@pytest.mark.parametrize(
    ("argv", "out"),
    [
        ([], "benchmarks/results"),
        (["--jobs", "1", "--cache", "elsewhere"], "benchmarks/results"),
        (["--models", "cnn-bn", "--policies", "source"], "runs/bench/partial"),
        (["--no-torch-tent"], "runs/bench/partial"),
        (["--seed", "1"], "runs/bench/partial"),
        (["--models", "cnn-bn", "--out", "benchmarks/results"], "benchmarks/results"),
    ],
)
def test_only_a_full_run_replaces_the_committed_results(argv, out):
    from pathlib import Path

    from benchmarks.adaptation.cli import parse_args

    assert parse_args(argv).out == Path(out)
