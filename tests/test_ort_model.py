"""OrtModel: on a current bundle the standard graph gives what ORT's training graph gives, with
the same accumulation; on a schema-1 bundle the bound graphs give the training module's own calls
(within float32 rounding: the module runs its sessions with options of its own); with the inputs
in copies pushed after each write (the GPU's rule), every path gives what it gives reading the
host arrays themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edge_ttt.adapt.ort_model as ort_model  # noqa: E402
import edge_ttt.adapt.schema1 as schema1  # noqa: E402
from edge_ttt.adapt.engine import Engine  # noqa: E402
from edge_ttt.adapt.ort_model import OrtModel  # noqa: E402
from edge_ttt.artifacts import BundleError, load_bundle  # noqa: E402
from export.bundle import export_bundle  # noqa: E402
from tests.conftest import MODELS, legacy_bundle  # noqa: E402
from tests.model_factory import source_model, windows  # noqa: E402
from tests.training_module import TrainingModule  # noqa: E402

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
        if m._step_gradient is not None:
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


@pytest.fixture(scope="module")
def module(bundles, legacy: OrtModel) -> TrainingModule:
    return TrainingModule(load_bundle(bundles[1]), legacy)


def assert_forward_is_the_eval_step(
    model: OrtModel, module: TrainingModule, x: np.ndarray, stats, mix: float
):
    module.hold(model.parameters())
    got = flat_outputs(model, model.forward(x, stats, mix))
    for a, b in zip(got, module.eval(x, stats, mix), strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("batch", [1, 5])
def test_schema_1_forward_equals_the_modules_eval_step_as_parameters_change(
    legacy: OrtModel, module: TrainingModule, batch: int
):
    x = windows(batch)
    stats = shifted_stats(legacy)
    source = legacy.parameters()
    try:
        for mix in (0.0, 1.0):
            assert_forward_is_the_eval_step(legacy, module, x, stats, mix)
        legacy.set_parameters({k: v * 1.1 + 0.01 for k, v in source.items()})
        assert_forward_is_the_eval_step(legacy, module, x, stats, 0.0)
        assert_forward_is_the_eval_step(legacy, module, x, stats, 1.0)
    finally:
        legacy.set_parameters(source)


@pytest.mark.parametrize("batch", [1, 5])
def test_schema_1_forward_backward_equals_the_modules_training_step(
    legacy: OrtModel, module: TrainingModule, batch: int
):
    """Outputs and gradients within RTOL, accumulating over passes until `discard_gradients`."""
    stats = shifted_stats(legacy)
    weights = np.linspace(0.1, 1.0, batch, dtype=np.float32)
    source = legacy.parameters()
    try:
        legacy.set_parameters({k: v * 1.1 + 0.01 for k, v in source.items()})
        module.hold(legacy.parameters())
        for mix, seeds in ((0.0, [1]), (1.0, [2, 3]), (0.5, [4])):  # mix 1: two passes accumulate
            legacy.discard_gradients()
            for seed in seeds:
                x = windows(batch, seed=seed)
                out = legacy.forward_backward(x, weights, stats, mix)
                expected = module.train(x, weights, stats, mix)
            got = [np.float32(out.loss), *flat_outputs(legacy, out)]
            for a, b in zip(got, expected, strict=False):
                assert_close(a, b)
            grads = module.gradients(legacy.layout.names)
            assert_close(legacy.gradient_vector(), np.concatenate(grads))
            assert np.abs(legacy.gradient_vector()).max() > 0
            module.lazy_reset_grad()
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
    finally:
        m.set_parameters(source)


@pytest.mark.parametrize("which", ["standard", "schema-1"])
def test_one_buffer_write_sets_every_trainable_parameter_by_name(
    model: OrtModel, legacy: OrtModel, which: str
):
    """`write_parameters` fills the flat vector: each name must get its own slice."""
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


@pytest.mark.parametrize("policy", ["tent", "sar", "steady", "note", "unmix-tns"])
def test_engines_on_every_path_predict_alike(bundles, policy: str):
    """The standard graph and the schema-1 bound graphs, each reading the host arrays and reading
    copies pushed after each write (as on a GPU): the same predictions, step by step, and the same
    adapted parameters; bit for bit between the two placements of one graph."""
    if policy in ("note", "unmix-tns") and not load_bundle(bundles[0]).manifest.batch_norms:
        pytest.skip(f"{policy} adapts batch-norm statistics only")
    options = {"gate_shift": 0.0, "gate_spread": 0.0, "reliable_quantile": 0.99} if policy == "steady" else {}
    engines = {
        (which, copies): Engine(OrtModel(load_bundle(bundles[i]), copies=copies), policy, options)
        for i, which in enumerate(("standard", "schema-1"))
        for copies in (False, True)
    }
    if policy == "sar":  # every window through SAR's entropy filter: its perturbed second pass runs
        for engine in engines.values():
            engine.policy.margin = np.inf
    bound = engines["schema-1", False]
    start = bound.model.parameters()
    for seed in range(6):
        x = windows(1 + seed % 3, seed=seed) * 1.3
        out = {key: engine.process(x).probs for key, engine in engines.items()}
        for which in ("standard", "schema-1"):
            np.testing.assert_array_equal(out[which, True], out[which, False])
        np.testing.assert_allclose(out["standard", False], out["schema-1", False], atol=1e-5)
    assert bound.counters.adapt_steps > 0
    assert len({engine.counters.adapt_steps for engine in engines.values()}) == 1
    params = {key: engine.model.parameters() for key, engine in engines.items()}
    for name, value in params["schema-1", False].items():
        np.testing.assert_array_equal(params["schema-1", True][name], value)
        np.testing.assert_array_equal(params["standard", True][name], params["standard", False][name])
        np.testing.assert_allclose(params["standard", False][name], value, atol=1e-5)
    if policy in ("tent", "sar", "steady"):  # NOTE steps from a fuller memory, UnMix-TNS never
        assert any(not np.array_equal(v, start[k]) for k, v in params["schema-1", True].items())


@pytest.mark.parametrize("which", [0, 1])
def test_with_copies_a_write_is_unseen_until_pushed(bundles, which: int):
    """What makes the test above mean something: in copies, the graphs do not read the host
    arrays, so a write that skipped its push would show there."""
    x = windows(2)
    for copies in (False, True):
        m = OrtModel(load_bundle(bundles[which]), copies=copies)
        stats = m.source_stats()
        before = m.forward(x, stats).logits
        np.copyto(m._param_vector, m._param_vector * 0.5 + 0.1)  # behind write_parameters' back
        unpushed = m.forward(x, stats).logits
        assert np.array_equal(unpushed, before) == copies
        m.write_parameters(m._param_vector.copy())
        assert not np.array_equal(m.forward(x, stats).logits, before)


def test_a_schema_1_bundle_off_the_cpu_says_to_re_export(bundles, monkeypatch):
    monkeypatch.setattr(ort_model, "resolve_device", lambda device: "cuda")
    with pytest.raises(BundleError, match=r"runs on the CPU only, not on 'cuda'.*`edge-ttt export`"):
        OrtModel(load_bundle(bundles[1]), device="cuda")
