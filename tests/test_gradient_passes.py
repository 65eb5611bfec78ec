"""Gradient passes: a batch is weighed on the eval graph, then takes at most one training pass,
and every prediction and state is bit for bit what the former two-pass scheme gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.engine import Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import Policy
from edge_ttt.artifacts import load_bundle
from tests.model_factory import windows


def two_pass_gradient(self: Policy, x: np.ndarray, stats, mix: float, weigh) -> tuple:
    """The scheme before: a training pass with uniform weights first, a second one when the
    weights it yields are not uniform."""
    n = len(x)
    out = self.model.forward_backward(x, np.full(n, 1.0 / n, np.float32), stats, mix)
    weights = np.full(n, 1.0 / n) if weigh is None else np.asarray(weigh(out), np.float64)
    if not weights.any():
        self.model.discard_gradients()
        return out, weights, None
    if (weights == weights[0]).all():
        grads = self.model.gradient_vector() * (weights[0] * n)
    else:
        self.model.discard_gradients()
        self.model.forward_backward(x, weights.astype(np.float32), stats, mix)
        grads = self.model.gradient_vector()
    self.model.discard_gradients()
    return out, weights, grads


class PassCounter:
    """Wraps an OrtModel's forward_backward to count training passes."""

    def __init__(self, model: OrtModel) -> None:
        self.passes = 0
        inner = model.forward_backward

        def counted(*args, **kwargs):
            self.passes += 1
            return inner(*args, **kwargs)

        model.forward_backward = counted


@pytest.fixture(scope="module")
def confident_bundle(tmp_path_factory) -> Path:
    """A cnn-bn with a scaled-up head: entropies spread across the policies' filters."""
    torch = pytest.importorskip("torch")
    from export.bundle import export_bundle
    from tests.model_factory import source_model

    src = source_model("cnn-bn")
    with torch.no_grad():
        src.model.head.weight.mul_(8.0)
    out = tmp_path_factory.mktemp("confident") / "cnn-bn"
    export_bundle(src, out)
    return out


@pytest.mark.parametrize("policy", ["tent", "sar", "steady"])
@pytest.mark.parametrize("batch", [1, 2, 16])
def test_predictions_and_states_equal_the_two_pass_scheme(confident_bundle, policy, batch, monkeypatch):
    bundle = load_bundle(confident_bundle)
    ungated = {"gate_shift": 0.0, "gate_spread": 0.0, "step_every": 1}  # a step on every batch
    options = ungated if policy == "steady" else None
    new = Engine(OrtModel(bundle), policy, options)
    old = Engine(OrtModel(bundle), policy, options)
    monkeypatch.setattr(old.policy, "_gradient", two_pass_gradient.__get__(old.policy))
    counter = PassCounter(new.model)
    x = windows(12 * batch, seed=3) * np.linspace(0.5, 3.0, 12 * batch)[:, None, None].astype(np.float32)
    for i in range(0, len(x), batch):
        a, b = new.process(x[i : i + batch]), old.process(x[i : i + batch])
        np.testing.assert_array_equal(a.probs, b.probs)
    state_new, state_old = new.policy.state(), old.policy.state()
    assert state_new.keys() == state_old.keys()
    for key in state_new:
        np.testing.assert_array_equal(state_new[key], state_old[key], err_msg=key)
    assert new.counters == old.counters
    batches = len(x) // batch
    if policy == "tent" or batch == 1:  # uniform weights: the training pass gives the logits
        assert counter.passes >= batches
    if policy == "tent":
        assert counter.passes == batches
    if batch > 1:  # at most one training pass per gradient (SAR: two gradients per step)
        assert counter.passes <= (2 if policy == "sar" else 1) * batches


def test_the_eval_graph_gives_the_training_pass_outputs(confident_bundle):
    model = OrtModel(load_bundle(confident_bundle))
    stats = {k: (m - 0.2, v * 0.7) for k, (m, v) in model.source_stats().items()}
    for batch in (1, 5):
        x = windows(batch, seed=batch)
        for mix in (0.0, 0.5, 1.0):
            a = model.forward(x, stats, mix)
            b = model.forward_backward(x, np.full(batch, 1.0 / batch, np.float32), stats, mix)
            model.discard_gradients()
            np.testing.assert_array_equal(a.logits, b.logits)
            for layer, (mean, var) in a.moments.items():
                np.testing.assert_array_equal(mean, b.moments[layer][0])
                np.testing.assert_array_equal(var, b.moments[layer][1])
