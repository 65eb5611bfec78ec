"""The engine's per-window shortcuts (docs/performance.md, "Third round") change no result: an
engine run with the code they replaced, patched back in, predicts the same and ends in the same
state, bit for bit, for every policy that runs on the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt import engine as engine_module
from edge_ttt.adapt import outputs as pass_outputs
from edge_ttt.adapt import screen as screen_module
from edge_ttt.adapt.engine import Engine
from edge_ttt.adapt.guard import CollapseDetector, InputLimits, Validity
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.statistics import ClassBalance, FlatStats, LayerMoments
from edge_ttt.artifacts import load_bundle
from tests.model_factory import windows


def reference_softmax_entropy(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    return p, -(p * logp).sum(axis=1)


def reference_check_windows(x: np.ndarray, limits: InputLimits, bounds=None) -> Validity:
    """The checks from `x` itself, whatever extremes the engine worked out beforehand."""
    high = x.max(axis=2).astype(np.float64)
    low = x.min(axis=2).astype(np.float64)
    nonfinite = ~np.isfinite(high - low).all(axis=1)
    if nonfinite.any():
        clean = np.where(np.isfinite(x), x, limits.mean[None, :, None])
        high = clean.max(axis=2).astype(np.float64)
        low = clean.min(axis=2).astype(np.float64)
    flat = (high - low < limits.flat_ratio * limits.std[None, :]).any(axis=1)
    mean = limits.mean[None, :]
    distance = np.maximum(np.abs(high - mean), np.abs(low - mean)) / limits.std[None, :]
    out_of_range = (distance > limits.range_sigmas).any(axis=1)
    return Validity(nonfinite=nonfinite, flat=flat, out_of_range=out_of_range)


def reference_weights(self: ClassBalance, classes: np.ndarray) -> np.ndarray:
    return np.minimum(1.0, 1.0 / (len(self.share) * np.maximum(self.share[classes], 1e-12)))


def reference_observe_classes(self: ClassBalance, classes: np.ndarray) -> None:
    counts = np.bincount(classes, minlength=len(self.share))
    a = 1.0 - (1.0 - self.momentum) ** len(classes)
    self.share = (1.0 - a) * self.share + a * counts / len(classes)


def reference_stats(self: LayerMoments) -> dict:
    """Plain per-layer arrays: the model copies them layer by layer, not as one `FlatStats`."""
    means = self.layout.split(self.ema.mean.astype(np.float32))
    variances = self.layout.split(self.ema.var.astype(np.float32))
    return {k: (means[k], variances[k]) for k in self.layout.names}


def reference_observe(self: CollapseDetector, classes: np.ndarray, entropy: np.ndarray) -> None:
    self._classes.extend(int(c) for c in classes)
    self._entropy.extend(float(h) for h in entropy)


def stream(n: int) -> np.ndarray:
    """Windows drifting in gain, with a non-finite, a flat-lined and an out-of-range one."""
    x = windows(n, seed=5) * np.linspace(0.5, 3.0, n)[:, None, None].astype(np.float32)
    x[4, 1, 7] = np.nan
    x[9, 2] = 0.25
    x[13, 0, 3] = 1e6
    return x


def run(bundle: Path, policy: str, options: dict | None, batch: int) -> tuple[list, dict]:
    engine = Engine(OrtModel(load_bundle(bundle)), policy, options)
    x = stream(36)
    predictions = [engine.process(x[i : i + batch]) for i in range(0, len(x), batch)]
    return predictions, {**engine.policy.state(), **engine.counters.as_dict()}


@pytest.mark.parametrize(
    ("policy", "options"),
    [
        ("steady", None),
        ("steady", {"gate_shift": 0.0, "gate_spread": 0.0, "watch_every": 2, "snapshot_every": 4}),
        ("source", None),
        ("norm", None),
        ("tent", None),
        ("sar", None),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_predictions_and_states_equal_the_replaced_code(
    confident_bundle_dir, policy, options, batch, monkeypatch
):
    with monkeypatch.context() as patch:
        patch.setattr(pass_outputs, "softmax_entropy", reference_softmax_entropy)
        patch.setattr(engine_module, "softmax_entropy", reference_softmax_entropy)
        patch.setattr(screen_module, "check_windows", reference_check_windows)
        patch.setattr(ClassBalance, "weights", reference_weights)
        patch.setattr(LayerMoments, "stats", reference_stats)
        patch.setattr(CollapseDetector, "observe", reference_observe)
        patch.setattr(ClassBalance, "observe", reference_observe_classes)
        before, state_before = run(confident_bundle_dir, policy, options, batch)
    after, state_after = run(confident_bundle_dir, policy, options, batch)
    fields = ("classes", "probs", "entropy", "valid", "estimated_correct", "source_classes")
    for a, b in zip(after, before, strict=True):
        for field in fields:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
            assert getattr(a, field).dtype == getattr(b, field).dtype
    assert state_after.keys() == state_before.keys()
    for key, value in state_after.items():
        np.testing.assert_array_equal(value, state_before[key], err_msg=key)
    assert not all(p.valid.all() for p in after)  # the bad windows were there


def test_flat_statistics_feed_the_model_as_per_layer_ones(confident_bundle_dir):
    model = OrtModel(load_bundle(confident_bundle_dir))
    moments = LayerMoments(model.source_stats(), momentum=0.3)
    x = windows(2, seed=1)
    moments.fold(model.forward(x * 2.0, moments.stats()).moments, windows=2)
    flat = moments.stats()
    assert isinstance(flat, FlatStats)
    plain = {k: (m.copy(), v.copy()) for k, (m, v) in flat.items()}
    means, variances = zip(*plain.values(), strict=True)
    np.testing.assert_array_equal(flat.vector, np.concatenate([*means, *variances]))

    def outputs(stats) -> list[np.ndarray]:
        logits = model.forward(x, stats).logits
        trained = model.forward_backward(x, np.full(2, 0.5, np.float32), stats).logits
        grads = model.gradient_vector()
        model.discard_gradients()
        return [logits, trained, grads]

    source = outputs(model.source_stats())  # bound before each: the statistics must be copied in
    from_flat = outputs(flat)
    outputs(model.source_stats())
    from_plain = outputs(plain)
    assert not np.array_equal(source[0], from_flat[0])
    for a, b in zip(from_flat, from_plain, strict=True):
        np.testing.assert_array_equal(a, b)
