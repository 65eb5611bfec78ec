"""The adaptation benchmark's parts: the torch Tent reference, stream orders, targets, one cell."""

from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.adaptation import (  # noqa: E402
    FAIL,
    NOT_MEASURED,
    ORDERS,
    PASS,
    TORCH_TENT,
    Cell,
    evaluate_targets,
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
    batch, _ = windows_from_log(log, 64, 32)
    cell = Cell("cnn-bn", "clean", 4, "shuffled", 1, "source", seed=0)
    stream = make_stream(log, cell, 64, 32)
    position = {t.tobytes(): i for i, t in enumerate(batch.x)}
    idx = [position[w.tobytes()] for w in stream.x]
    assert sorted(idx) == list(range(len(batch)))
    np.testing.assert_array_equal(stream.label, batch.label[idx])
    np.testing.assert_array_equal(stream.t_end_ns, batch.t_end_ns[idx])


def results(cells: dict[tuple[str, str, str, int, str], float]) -> list[dict]:
    """Hand-made results: (model, corruption, order, batch, policy) -> accuracy in %."""
    return [
        {"model": m, "corruption": c, "order": o, "batch_size": b, "policy": p, "accuracy": acc / 100}
        for (m, c, o, b, p), acc in cells.items()
    ]


def grid(policies: dict[str, float]) -> dict:
    """Every cnn-bn cell for clean, gain and noise with the given accuracy per policy."""
    return {
        ("cnn-bn", c, o, b, p): acc
        for c in ("clean", "gain", "noise")
        for o in ("recorded", "shuffled")
        for b in (1, 16)
        for p, acc in policies.items()
    }


def test_targets_pass():
    cells = grid({"source": 70.0, "tent": 60.0, TORCH_TENT: 60.5, "steady": 70.0})
    cells[("cnn-bn", "gain", "recorded", 1, "steady")] = 69.2  # 0.8 below source: allowed off clean
    # The class-sorted stress test is reported, not judged: the targets name two orders only.
    cells.update(
        {("cnn-bn", "clean", "class-sorted", 1, p): a for p, a in (("source", 70.0), ("steady", 40.0))}
    )
    targets = evaluate_targets(results(cells), default="steady")
    assert [t.status for t in targets] == [PASS, PASS, PASS, NOT_MEASURED, NOT_MEASURED], targets
    assert targets[1].details[0] == "12 of 12 cells within the target"
    assert "steady 69.6 vs tent 60.0" in targets[0].details[0]


def test_targets_fail_and_name_the_cells():
    cells = grid({"source": 70.0, "tent": 60.0, TORCH_TENT: 60.0, "steady": 70.0})
    cells[("cnn-bn", "clean", "shuffled", 16, "steady")] = 69.9  # below source on clean data
    cells[("cnn-bn", "noise", "recorded", 1, "steady")] = 50.0  # far below: target 1 fails too
    cells[("cnn-bn", "gain", "recorded", 1, "steady")] = 50.0
    cells[("cnn-bn", "noise", "shuffled", 16, "tent")] = 90.0  # ORT tent parity broken
    targets = evaluate_targets(results(cells), default="steady")
    assert [t.status for t in targets][:3] == [FAIL, FAIL, FAIL]
    assert targets[0].details == ["steady 50.0 vs tent 75.0"]
    assert targets[1].details[1:] == [
        "cnn-bn clean shuffled b=16: steady 69.9 vs source 70.0 (-0.10)",
        "cnn-bn gain recorded b=1: steady 50.0 vs source 70.0 (-20.00)",
        "cnn-bn noise recorded b=1: steady 50.0 vs source 70.0 (-20.00)",
    ]
    assert targets[2].details[1:] == ["cnn-bn noise shuffled b=16: tent 90.0 vs torch-tent 60.0 (+30.00)"]


def test_targets_not_measured_without_the_policies():
    targets = evaluate_targets(results(grid({"source": 70.0, TORCH_TENT: 60.0})), default=None)
    assert [t.status for t in targets] == [NOT_MEASURED] * 5
    assert "DEFAULT_POLICY" in targets[0].details[0]


def aux_grid(ttt: float, episodic: float, tent: float) -> dict:
    """cnn-bn-ttt cells for source (70), ttt and ttt-episodic, and cnn-bn cells for tent."""
    cells = {}
    for c in ("clean", "gain", "noise"):
        for o in ("recorded", "shuffled"):
            for b in (1, 16):
                cells.update({("cnn-bn-ttt", c, o, b, p): a for p, a in (("source", 70.0), ("ttt", ttt))})
                cells[("cnn-bn-ttt", c, o, b, "ttt-episodic")] = episodic
                cells[("cnn-bn", c, o, b, "tent")] = tent
    return cells


def test_auxiliary_targets_compare_with_source_of_their_model_and_tent_of_the_plain_one():
    cells = aux_grid(ttt=70.5, episodic=69.5, tent=60.0)
    cells[("cnn-bn-ttt", "gain", "recorded", 1, "ttt-episodic")] = 68.0  # 2 below source at b=1
    cells[("cnn-bn-ttt", "noise", "shuffled", 16, "ttt-episodic")] = 40.0  # off b=1 recorded: not judged
    targets = evaluate_targets(results(cells), default=None)
    online, episodic = targets[3], targets[4]
    assert online.status == PASS and online.details[0] == "3 of 3 cells within 1 point of source"
    assert "mean over corruptions, recorded b=1: ttt 70.5 vs tent 60.0" in online.details
    assert episodic.status == FAIL
    assert episodic.details[:2] == [
        "2 of 3 cells within 1 point of source",
        "cnn-bn-ttt gain recorded b=1: ttt-episodic 68.0 vs source 70.0 (-2.00)",
    ]
    behind = evaluate_targets(results(aux_grid(ttt=70.5, episodic=70.0, tent=71.0)), default=None)[3]
    assert behind.status == FAIL
    assert "not above tent: mean over corruptions, recorded b=1: ttt 70.5 vs tent 71.0" in behind.details


def test_auxiliary_targets_judge_the_label_correlated_stream_and_list_the_others():
    cells = aux_grid(ttt=70.5, episodic=69.5, tent=60.0)
    for c in ("gain", "noise"):  # tent ahead on shuffled batches of 16 only
        cells[("cnn-bn", c, "shuffled", 16, "tent")] = 72.0
    online = evaluate_targets(results(cells), default=None)[3]
    assert online.status == PASS
    assert online.details[1] == "mean over corruptions, recorded b=1: ttt 70.5 vs tent 60.0"
    assert (
        "not judged: mean over corruptions, shuffled b=16: ttt 70.5 vs tent 72.0 (not above tent)"
        in online.details
    )
    assert "not judged: mean over corruptions, recorded b=16: ttt 70.5 vs tent 60.0" in online.details


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


@pytest.mark.skipif(importlib.util.find_spec("seglearn") is None, reason="seglearn ships the watch data")
def test_main_writes_results_that_do_not_depend_on_jobs(model_paths, tmp_path):
    args = [
        "--models",
        "cnn-bn",
        "--corruptions",
        "clean,bias",
        "--orders",
        "shuffled",
        "--batch-sizes",
        "16",
    ]
    args += ["--policies", "source", "--no-torch-tent", "--cache", str(model_paths.bundle.parent)]
    main([*args, "--jobs", "1", "--out", str(tmp_path / "one")])
    main([*args, "--jobs", "2", "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / d / "adaptation.json").read_text()) for d in ("one", "two"))
    assert [c["accuracy"] for c in one["cells"]] == [c["accuracy"] for c in two["cells"]]
    assert [(c["corruption"], c["policy"]) for c in one["cells"]] == [("clean", "source"), ("bias", "source")]
    assert one["meta"]["git_commit"] and one["meta"]["models"]["cnn-bn"]["bundle_sha256"]
    report = (tmp_path / "one" / "adaptation.md").read_text()
    assert "| shuffled | 16 | **mean over corruptions** |" in report and "## Targets" in report
