"""The fixed-statistics graphs (`export.fixed_graphs`): what the general graphs give at stat_mix 0,
bit for bit, from fewer nodes; the device runs them at mix 0, and a bundle without them still runs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

torch = pytest.importorskip("torch")

from edge_ttt.adapt.engine import Engine  # noqa: E402
from edge_ttt.adapt.ort_model import OrtModel  # noqa: E402
from edge_ttt.artifacts import Bundle, load_bundle  # noqa: E402
from edge_ttt.manifest import EVAL_MODEL, FIXED_EVAL_MODEL, FIXED_TRAINING_MODEL  # noqa: E402
from export import fixed_graphs  # noqa: E402
from export.bundle import export_bundle  # noqa: E402
from export.onnx_graph import MAX_IR_VERSION  # noqa: E402
from export.standard_graph import nonstandard_ops  # noqa: E402
from tests.conftest import MODELS, without_fixed_graphs  # noqa: E402
from tests.model_factory import graph_inputs, off_source, source_model, windows  # noqa: E402


@pytest.fixture(scope="module", params=[*MODELS, "cnn-bn-ttt"])
def bundle(request, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("fixed") / request.param
    export_bundle(source_model(request.param), out)
    return load_bundle(out)


def session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(path: Path, values: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    s = session(path)
    return s.run(outputs, {p.name: values[p.name] for p in s.get_inputs()})


def pairs(bundle: Bundle) -> list[tuple[str, str]]:
    """(fixed graph, the general graph it stands for at mix 0) in the bundle."""
    m = bundle.manifest
    found = [(m.fixed_eval, EVAL_MODEL), (m.fixed_training, m.standard_graph.model)]
    return [(fixed, general) for fixed, general in found if fixed is not None]


def test_every_bundle_has_them_with_fewer_nodes_and_standard_operators(bundle: Bundle):
    m = bundle.manifest
    assert m.fixed_eval == FIXED_EVAL_MODEL
    # Without batch norms there is no mix: the standard training graph is already the fixed one.
    assert m.fixed_training == (FIXED_TRAINING_MODEL if m.graph.stat_mix is not None else None)
    for fixed, general in pairs(bundle):
        proto = onnx.load(bundle.file(fixed))
        assert nonstandard_ops(proto) == [], fixed
        assert proto.ir_version <= MAX_IR_VERSION
        assert "stat_mix" not in {i.name for i in proto.graph.input}
        assert len(proto.graph.node) < len(onnx.load(bundle.file(general)).graph.node), fixed


@pytest.mark.parametrize("batch", [1, 4])
def test_they_give_the_general_graphs_outputs_at_mix_0_bit_for_bit(bundle: Bundle, batch: int):
    values = graph_inputs(bundle, batch, mix=0.0)
    with np.load(bundle.file(bundle.manifest.standard_graph.parameters), allow_pickle=False) as saved:
        values.update(saved)
    for fixed, general in pairs(bundle):
        outputs = [o.name for o in session(bundle.file(fixed)).get_outputs()]
        got, expected = run(bundle.file(fixed), values, outputs), run(bundle.file(general), values, outputs)
        assert len(outputs) >= 1 + 2 * len(bundle.manifest.norm_layers)
        for name, a, b in zip(outputs, got, expected, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{fixed}: {name}")


def count_runs(model: OrtModel) -> dict[str, int]:
    """Calls of each graph the model holds, counted from now on."""
    calls: dict[str, int] = {}
    for field, graph in model._graphs._asdict().items():
        if graph is None:
            continue
        calls[field] = 0

        def counted(run=graph.run, field=field):
            calls[field] += 1
            return run()

        graph.run = counted
    return calls


def test_the_model_runs_them_at_mix_0_and_the_general_graphs_otherwise(bundle: Bundle):
    model = OrtModel(bundle)
    calls = count_runs(model)
    x, stats, weights = windows(2), model.source_stats(), np.full(2, 0.5, np.float32)
    model.forward(x, stats)
    model.forward_backward(x, weights, stats)
    fixed_training = "fixed_training" if bundle.manifest.fixed_training else "training"
    assert calls["fixed_eval"] == 1 and calls[fixed_training] == 1 and calls["eval"] == 0
    if bundle.manifest.graph.stat_mix is not None:
        model.forward(x, stats, mix=1.0)
        model.forward_backward(x, weights, stats, mix=1.0)
        assert calls["eval"] == 1 and calls["training"] == 1


def test_an_engine_serves_and_adapts_alike_with_and_without_them(bundle_dir: Path, tmp_path: Path):
    """The default policy, one window at a time, its gradient steps and statistics included."""
    plain = load_bundle(without_fixed_graphs(bundle_dir, tmp_path / "plain"))
    assert plain.manifest.fixed_eval is None and plain.manifest.fixed_training is None
    engines = [
        Engine(OrtModel(b), options={"gate_shift": 0.0, "gate_spread": 0.0})
        for b in (load_bundle(bundle_dir), plain)
    ]
    stream = off_source(80, seed=3)
    for i in range(len(stream)):
        with_fixed, without = (e.process(stream[i : i + 1]) for e in engines)
        np.testing.assert_array_equal(with_fixed.probs, without.probs, err_msg=f"window {i}")
    assert engines[0].counters.as_dict() == engines[1].counters.as_dict()
    assert engines[0].counters.adapt_steps == len(stream)
    np.testing.assert_array_equal(engines[0].policy.param_vector, engines[1].policy.param_vector)


def test_a_fixed_graph_that_differs_is_left_out_with_a_warning(tmp_path: Path, monkeypatch, caplog):
    """The export checks what it writes: a fixed graph off by 1e-3 in the logits is not kept."""
    traced = fixed_graphs.trace

    def off(*args) -> onnx.ModelProto:
        proto = traced(*args)
        for node in proto.graph.node:
            node.output[:] = ["logits.exact" if o == "logits" else o for o in node.output]
        shift = onnx.helper.make_tensor("logits.shift", onnx.TensorProto.FLOAT, [], [1e-3])
        proto.graph.initializer.append(shift)
        proto.graph.node.append(onnx.helper.make_node("Add", ["logits.exact", "logits.shift"], ["logits"]))
        return proto

    monkeypatch.setattr(fixed_graphs, "trace", off)
    with caplog.at_level(logging.WARNING, logger="export.fixed_graphs"):
        export_bundle(source_model("cnn-bn"), tmp_path / "b")
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest.fixed_eval is None and bundle.manifest.fixed_training is None
    assert not (tmp_path / "b" / FIXED_EVAL_MODEL).exists()
    assert sum("not written" in r.getMessage() for r in caplog.records) == 2
    out = OrtModel(bundle).forward(windows(1), OrtModel(bundle).source_stats())
    assert np.isfinite(out.logits).all()


def test_a_fixed_graph_that_cannot_be_built_is_left_out_and_the_export_goes_on(
    tmp_path: Path, monkeypatch, caplog
):
    """They only save time: a generator failing on the fixed training graph costs it, not the bundle."""

    def broken(*args) -> None:
        raise RuntimeError("generator failed")

    monkeypatch.setattr(fixed_graphs, "generate", broken)
    with caplog.at_level(logging.WARNING, logger="export.fixed_graphs"):
        export_bundle(source_model("cnn-bn"), tmp_path / "b")
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest.fixed_eval == FIXED_EVAL_MODEL and bundle.manifest.fixed_training is None
    assert any("could not be built (generator failed)" in r.getMessage() for r in caplog.records)
    model = OrtModel(bundle)
    out = model.forward_backward(windows(2), np.full(2, 0.5, np.float32), model.source_stats())
    assert np.isfinite(out.loss)


def test_a_cached_benchmark_bundle_without_them_is_exported_again_not_retrained(
    model_paths, tmp_path: Path, monkeypatch
):
    from benchmarks.adaptation import models, prepare_models

    cache = tmp_path / "cache"
    without_fixed_graphs(model_paths.bundle, cache / "cnn-bn")
    shutil.copy(model_paths.checkpoint, cache / "cnn-bn.pt")
    monkeypatch.setattr(models, "train", lambda *args, **kwargs: pytest.fail("trained again"))
    bundle = load_bundle(prepare_models(["cnn-bn"], cache, retrain=False)["cnn-bn"].bundle)
    assert bundle.manifest.fixed_eval == FIXED_EVAL_MODEL
    assert bundle.manifest.fixed_training == FIXED_TRAINING_MODEL
