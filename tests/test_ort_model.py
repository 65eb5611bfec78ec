"""OrtModel: on a current bundle the standard graph gives what ORT's training graph gives, with
the same accumulation; on a schema-1 bundle the bound graphs give exactly the training module's
own calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edge_ttt.adapt.schema1 as schema1  # noqa: E402
from edge_ttt.adapt.engine import Engine  # noqa: E402
from edge_ttt.adapt.ort_model import OrtModel  # noqa: E402
from edge_ttt.artifacts import BundleError, load_bundle  # noqa: E402
from export.bundle import export_bundle  # noqa: E402
from tests.conftest import MODELS, legacy_bundle  # noqa: E402
from tests.model_factory import source_model, windows  # noqa: E402

RTOL = 1e-5


@pytest.fixture(scope="module", params=MODELS)
def bundles(request, tmp_path_factory) -> tuple[Path, Path]:
    """A current bundle and its schema-1 copy."""
    root = tmp_path_factory.mktemp("bundle")
    export_bundle(source_model(request.param), root / "new")
    return root / "new", legacy_bundle(root / "new", root / "old")


@pytest.fixture(scope="module")
def model(bundles) -> OrtModel:
    return OrtModel(load_bundle(bundles[0]))


@pytest.fixture(scope="module")
def legacy(bundles) -> OrtModel:
    return OrtModel(load_bundle(bundles[1]))


def shifted_stats(model: OrtModel):
    return {k: (m + 0.1, v * 1.5) for k, (m, v) in model.source_stats().items()}


def flat_outputs(model: OrtModel, out) -> list[np.ndarray]:
    return [out.logits, *(m for layer in model._layers for m in out.moments[layer.name])]


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal within RTOL of the tensor's own scale."""
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * float(np.abs(expected).max()))


def test_a_current_bundle_runs_without_the_training_api(model: OrtModel, monkeypatch):
    assert model.module is None and model.state is None
    monkeypatch.setattr(schema1, "training_api", lambda: pytest.fail("the training API was used"))
    again = OrtModel(load_bundle(model.bundle_path))
    again.forward_backward(windows(2), np.ones(2, np.float32), again.source_stats())
    assert np.abs(again.gradient_vector()).max() > 0


def test_a_schema_1_bundle_without_the_training_api_says_to_re_export(bundles, monkeypatch):
    def missing():
        raise ImportError("no training API")

    monkeypatch.setattr(schema1, "training_api", missing)
    with pytest.raises(BundleError, match=r"no standard-operator training graph.*`edge-ttt export`"):
        OrtModel(load_bundle(bundles[1]))


def test_parameters_are_the_checkpoints(model: OrtModel, legacy: OrtModel):
    new, old = model.parameters(trainable_only=False), legacy.parameters(trainable_only=False)
    assert sorted(new) == sorted(old)
    for name, value in old.items():
        np.testing.assert_array_equal(new[name], value, err_msg=name)


def run_passes(m: OrtModel, batch: int, weights, stats, mix: float, seeds: list[int]) -> tuple:
    """Training passes from fresh gradients: the last pass's outputs, and each pass's own
    gradients (the standard path only: what it adds up)."""
    m.discard_gradients()
    passes = []
    for seed in seeds:
        out = m.forward_backward(windows(batch, seed=seed), weights, stats, mix)
        if m.module is None:
            passes.append(m._step_gradient.copy())
    return out, passes


@pytest.mark.parametrize("batch", [1, 5])
def test_standard_path_equals_the_training_graph_path_as_gradients_accumulate(
    model: OrtModel, legacy: OrtModel, batch: int
):
    """Outputs and accumulated gradients within RTOL, over passes until `discard_gradients`, with
    changed parameters; the accumulated gradient is the passes' own, added in float32."""
    stats = shifted_stats(model)
    weights = np.linspace(0.1, 1.0, batch, dtype=np.float32)
    source = model.parameters()
    try:
        for m in (model, legacy):
            m.set_parameters({k: v * 1.1 + 0.01 for k, v in source.items()})
        for mix, seeds in ((0.0, [1]), (1.0, [2, 3]), (0.5, [4])):  # mix 1: two passes accumulate
            got, passes = run_passes(model, batch, weights, stats, mix, seeds)
            expected, _ = run_passes(legacy, batch, weights, stats, mix, seeds)
            assert_close(np.float32(got.loss), np.float32(expected.loss))
            for a, b in zip(flat_outputs(model, got), flat_outputs(legacy, expected), strict=True):
                assert_close(a, b)
            gradient = legacy.gradient_vector()
            assert np.abs(gradient).max() > 0
            assert_close(model.gradient_vector(), gradient)
            np.testing.assert_array_equal(model.gradient_vector(), sum(passes[1:], passes[0]))
            x = windows(batch, seed=9)
            ahead = zip(
                flat_outputs(model, model.forward(x, stats, mix)),
                flat_outputs(legacy, legacy.forward(x, stats, mix)),
                strict=True,
            )
            for a, b in ahead:
                assert_close(a, b)
    finally:
        for m in (model, legacy):
            m.discard_gradients()
            m.set_parameters(source)


def module_eval(model: OrtModel, x: np.ndarray, stats, mix: float) -> list[np.ndarray]:
    """The training module's eval step: the reference the bound eval graph must equal."""
    model._sync_state()
    model.module.eval()
    weights = np.zeros(len(x), np.float32)
    return list(model.module(*model._feeds(model._eval_inputs, x, weights, stats, mix))[1:])


def assert_forward_is_the_eval_step(model: OrtModel, x: np.ndarray, stats, mix: float) -> None:
    got = flat_outputs(model, model.forward(x, stats, mix))
    for a, b in zip(got, module_eval(model, x, stats, mix), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch", [1, 5])
def test_schema_1_forward_equals_the_modules_eval_step_as_parameters_change(legacy: OrtModel, batch: int):
    assert legacy._graphs is not None  # the CPU path under test
    x = windows(batch)
    stats = shifted_stats(legacy)
    source = legacy.parameters()
    try:
        for mix in (0.0, 1.0):
            assert_forward_is_the_eval_step(legacy, x, stats, mix)
        legacy.set_parameters({k: v * 1.1 + 0.01 for k, v in source.items()})
        assert_forward_is_the_eval_step(legacy, x, stats, 0.0)
        assert_forward_is_the_eval_step(legacy, x, stats, 1.0)
    finally:
        legacy.set_parameters(source)


def module_train(model: OrtModel, x: np.ndarray, weights: np.ndarray, stats, mix: float) -> list[np.ndarray]:
    """The training module's own step: outputs, then the gradients it accumulated."""
    model._sync_state()
    model.module.train()
    out = model.module(*model._feeds(model._train_inputs, x, weights, stats, mix))
    return [*out, *(model.state.parameters[n].grad for n in model.layout.names)]


@pytest.mark.parametrize("batch", [1, 5])
def test_schema_1_forward_backward_equals_the_modules_training_step(legacy: OrtModel, batch: int):
    """Outputs and gradients bit for bit, accumulating over passes until `discard_gradients`."""
    assert legacy._graphs is not None  # the CPU path under test
    stats = shifted_stats(legacy)
    weights = np.linspace(0.1, 1.0, batch, dtype=np.float32)
    source = legacy.parameters()
    try:
        legacy.set_parameters({k: v * 1.1 + 0.01 for k, v in source.items()})
        for mix, seeds in ((0.0, [1]), (1.0, [2, 3]), (0.5, [4])):  # mix 1: two passes accumulate
            legacy.discard_gradients()
            for seed in seeds:
                x = windows(batch, seed=seed)
                out = legacy.forward_backward(x, weights, stats, mix)
                expected = module_train(legacy, x, weights, stats, mix)
            got = [np.float32(out.loss), *flat_outputs(legacy, out)]
            for a, b in zip(got, expected, strict=False):
                np.testing.assert_array_equal(a, b)
            grads = expected[-len(legacy.layout.names) :]
            np.testing.assert_array_equal(legacy.gradient_vector(), np.concatenate(grads))
            assert np.abs(legacy.gradient_vector()).max() > 0
            legacy.module.lazy_reset_grad()
    finally:
        legacy.discard_gradients()
        legacy.set_parameters(source)


@pytest.mark.parametrize("which", ["standard", "schema-1"])
def test_set_parameters_keeps_its_own_copy(model: OrtModel, legacy: OrtModel, which: str):
    m = model if which == "standard" else legacy
    x = windows(2)
    stats = m.source_stats()
    source = m.parameters()
    values = {k: v * 0.9 for k, v in source.items()}
    try:
        m.set_parameters(values)
        before = m.forward(x, stats).logits
        for v in values.values():
            v += 1.0  # the caller reuses its arrays
        np.testing.assert_array_equal(m.forward(x, stats).logits, before)
        if m.module is not None:
            assert_forward_is_the_eval_step(m, x, stats, 0.0)
    finally:
        m.set_parameters(source)


@pytest.mark.parametrize("which", ["standard", "schema-1"])
def test_one_buffer_write_sets_every_trainable_parameter_by_name(
    model: OrtModel, legacy: OrtModel, which: str
):
    """`write_parameters` fills the flat vector (ORT's contiguous buffer in schema 1): each name
    must get its own slice."""
    m = model if which == "standard" else legacy
    source = m.parameters()
    assert sorted(m.layout.names) == sorted(m.trainable)
    vector = np.arange(m.layout.size, dtype=np.float32) * 0.01
    try:
        m.write_parameters(vector)
        got = m.parameters()
        for name, expected in m.layout.split(vector).items():
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
        np.testing.assert_array_equal(m.gradient_vector().shape, vector.shape)
    finally:
        m.set_parameters(source)


@pytest.mark.parametrize("policy", ["tent", "steady"])
def test_engines_on_every_path_predict_alike(bundles, policy: str):
    """The standard graph, the schema-1 bound graphs and the training module's own calls (what a
    CUDA device ran before the standard graph): the same predictions, step by step, and the same
    adapted parameters."""
    options = {"gate_shift": 0.0, "gate_spread": 0.0, "reliable_quantile": 0.99} if policy == "steady" else {}
    standard = Engine(OrtModel(load_bundle(bundles[0])), policy, options)
    bound = Engine(OrtModel(load_bundle(bundles[1])), policy, options)
    module_only = OrtModel(load_bundle(bundles[1]))
    module_only._graphs = None
    modules = Engine(module_only, policy, options)
    start = bound.model.parameters()
    for seed in range(6):
        x = windows(1 + seed % 3, seed=seed) * 1.3
        expected = bound.process(x).probs
        np.testing.assert_array_equal(modules.process(x).probs, expected)
        np.testing.assert_allclose(standard.process(x).probs, expected, atol=1e-5)
    assert bound.counters.adapt_steps > 0 and standard.counters.adapt_steps == bound.counters.adapt_steps
    moved, adapted = modules.model.parameters(), standard.model.parameters()
    for name, value in bound.model.parameters().items():
        np.testing.assert_array_equal(value, moved[name])
        np.testing.assert_allclose(adapted[name], value, atol=1e-5)
    assert any(not np.array_equal(v, start[k]) for k, v in moved.items())  # the steps moved them
