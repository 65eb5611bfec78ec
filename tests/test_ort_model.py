"""OrtModel's fast paths give exactly what the training module's own calls give."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_ttt.adapt.engine import Engine  # noqa: E402
from edge_ttt.adapt.ort_model import OrtModel  # noqa: E402
from edge_ttt.artifacts import load_bundle  # noqa: E402
from export.bundle import export_bundle  # noqa: E402
from tests.conftest import MODELS  # noqa: E402
from tests.model_factory import source_model, windows  # noqa: E402


@pytest.fixture(scope="module", params=MODELS)
def model(request, tmp_path_factory) -> OrtModel:
    out = tmp_path_factory.mktemp("bundle") / request.param
    export_bundle(source_model(request.param), out)
    return OrtModel(load_bundle(out))


def module_eval(model: OrtModel, x: np.ndarray, stats, mix: float) -> list[np.ndarray]:
    """The training module's eval step: the reference `forward` must equal."""
    model._sync_state()
    model.module.eval()
    weights = np.zeros(len(x), np.float32)
    return list(model.module(*model._feeds(model._eval_inputs, x, weights, stats, mix))[1:])


def assert_forward_is_the_eval_step(model: OrtModel, x: np.ndarray, stats, mix: float) -> None:
    out = model.forward(x, stats, mix)
    got = [out.logits] + [m for layer in model._layers for m in out.moments[layer.name]]
    for a, b in zip(got, module_eval(model, x, stats, mix), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch", [1, 5])
def test_forward_equals_the_modules_eval_step_as_parameters_change(model: OrtModel, batch: int):
    assert model._graphs is not None  # the CPU path under test
    x = windows(batch)
    stats = {k: (m + 0.1, v * 1.5) for k, (m, v) in model.source_stats().items()}
    source = model.parameters()
    try:
        for mix in (0.0, 1.0):
            assert_forward_is_the_eval_step(model, x, stats, mix)
        model.set_parameters({k: v * 1.1 + 0.01 for k, v in source.items()})
        assert_forward_is_the_eval_step(model, x, stats, 0.0)
        assert_forward_is_the_eval_step(model, x, stats, 1.0)
    finally:
        model.set_parameters(source)


def module_train(model: OrtModel, x: np.ndarray, weights: np.ndarray, stats, mix: float) -> list[np.ndarray]:
    """The training module's own step: outputs, then the gradients it accumulated."""
    model._sync_state()
    model.module.train()
    out = model.module(*model._feeds(model._train_inputs, x, weights, stats, mix))
    return [*out, *(model.state.parameters[n].grad for n in model.layout.names)]


@pytest.mark.parametrize("batch", [1, 5])
def test_forward_backward_equals_the_modules_training_step(model: OrtModel, batch: int):
    """Outputs and gradients bit for bit, accumulating over passes until `discard_gradients`."""
    assert model._graphs is not None  # the CPU path under test
    stats = {k: (m + 0.1, v * 1.5) for k, (m, v) in model.source_stats().items()}
    weights = np.linspace(0.1, 1.0, batch, dtype=np.float32)
    source = model.parameters()
    try:
        model.set_parameters({k: v * 1.1 + 0.01 for k, v in source.items()})
        for mix, seeds in ((0.0, [1]), (1.0, [2, 3]), (0.5, [4])):  # mix 1: two passes accumulate
            model.discard_gradients()
            for seed in seeds:
                x = windows(batch, seed=seed)
                out = model.forward_backward(x, weights, stats, mix)
                expected = module_train(model, x, weights, stats, mix)
            got = [
                np.float32(out.loss),
                out.logits,
                *(m for layer in model._layers for m in out.moments[layer.name]),
            ]
            for a, b in zip(got, expected, strict=False):
                np.testing.assert_array_equal(a, b)
            grads = expected[-len(model.layout.names) :]
            np.testing.assert_array_equal(model.gradient_vector(), np.concatenate(grads))
            assert np.abs(model.gradient_vector()).max() > 0
            model.module.lazy_reset_grad()
    finally:
        model.discard_gradients()
        model.set_parameters(source)


def test_set_parameters_keeps_its_own_copy(model: OrtModel):
    x = windows(2)
    stats = model.source_stats()
    source = model.parameters()
    values = {k: v * 0.9 for k, v in source.items()}
    try:
        model.set_parameters(values)
        before = model.forward(x, stats).logits
        for v in values.values():
            v += 1.0  # the caller reuses its arrays
        np.testing.assert_array_equal(model.forward(x, stats).logits, before)
        assert_forward_is_the_eval_step(model, x, stats, 0.0)
    finally:
        model.set_parameters(source)


def test_one_buffer_write_sets_every_trainable_parameter_by_name(model: OrtModel):
    """`write_parameters` fills ORT's contiguous buffer: each name must get its own slice."""
    source = model.parameters()
    assert sorted(model.layout.names) == sorted(model.trainable)
    vector = np.arange(model.layout.size, dtype=np.float32) * 0.01
    try:
        model.write_parameters(vector)
        got = model.parameters()
        for name, expected in model.layout.split(vector).items():
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
        np.testing.assert_array_equal(model.gradient_vector().shape, vector.shape)
    finally:
        model.set_parameters(source)


@pytest.mark.parametrize("policy", ["tent", "steady"])
def test_engines_on_the_training_modules_own_calls_predict_as_on_the_bound_graphs(
    model: OrtModel, policy: str
):
    """Off CPU (CUDA) `OrtModel` keeps the training module's calls: the same predictions, step by step."""
    options = {"gate_shift": 0.0, "gate_spread": 0.0, "reliable_quantile": 0.99} if policy == "steady" else {}
    bound = Engine(OrtModel(load_bundle(model.bundle_path)), policy, options)
    module_only = OrtModel(load_bundle(model.bundle_path))
    module_only._graphs = None  # what a CUDA device runs
    modules = Engine(module_only, policy, options)
    start = bound.model.parameters()
    for seed in range(6):
        x = windows(1 + seed % 3, seed=seed) * 1.3
        np.testing.assert_array_equal(bound.process(x).probs, modules.process(x).probs)
    assert bound.counters.adapt_steps > 0
    moved = modules.model.parameters()
    for name, value in bound.model.parameters().items():
        np.testing.assert_array_equal(value, moved[name])
    assert any(not np.array_equal(v, start[k]) for k, v in moved.items())  # the steps moved them
