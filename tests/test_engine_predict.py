"""`Engine.predict`: what a device serves for windows it has no time to adapt on. It must learn
nothing (policy, input alignment, fallback, counters) and serve what `process` would serve from
the same state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.engine import POLICIES, Engine, InputOptions
from edge_ttt.adapt.fallback import FallbackOptions
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import load_bundle
from tests.model_factory import windows
from tests.test_engine import bad_windows, bundle_for, states_equal

# The alignment learns from every window (no entropy filter, no warm-up); the fallback decides
# after two windows, so both have moved before the windows under test.
INPUTS = InputOptions(reliable_quantile=1.0, warmup_windows=0.0)
FALLBACK = FallbackOptions(horizon=8, margin=0.0, recover=0.0, min_windows=2)


def shifted(n: int, seed: int) -> np.ndarray:
    """Windows with an offset on one channel, so that the input alignment has something to learn."""
    x = windows(n, seed=seed)
    x[:, 0] += 2.0
    return x


def warmed(bundle_dir: Path, policy: str) -> Engine:
    fallback = None if policy == "source" else FALLBACK
    e = Engine(OrtModel(load_bundle(bundle_dir)), policy, fallback=fallback, inputs=INPUTS)
    initial = e.snapshot()[0]
    for seed in range(4):
        e.process(shifted(4, seed))
    assert not states_equal(e.snapshot()[0], initial), "the engine must have adapted something"
    return e


def mixed_batch() -> np.ndarray:
    """Good windows and one the guard refuses."""
    return np.concatenate([shifted(3, seed=20), bad_windows()["nan"]])


@pytest.mark.parametrize("policy", POLICIES)
def test_predict_changes_no_state_and_counts_nothing(bundle_dir: Path, aux_bundle_dir: Path, policy: str):
    e = warmed(bundle_for(policy, bundle_dir, aux_bundle_dir), policy)
    arrays, meta = e.snapshot()
    for x in (shifted(1, seed=10), shifted(5, seed=11), mixed_batch()):
        pred = e.predict(x)
        assert len(pred) == len(x) and np.all(np.isfinite(pred.probs))
    after, meta_after = e.snapshot()
    assert states_equal(after, arrays)
    assert meta_after["counters"] == meta["counters"]


@pytest.mark.parametrize("on_source", [False, True])
def test_predict_serves_what_process_serves_before_adapting(bundle_dir: Path, on_source: bool):
    """`norm`'s update predicts with the statistics before the batch, so `process` on a batch
    serves what `predict` serves on it, through the same alignment, guard and fallback decision.
    The refused window is the exception: `process` predicts it after the update."""
    e = warmed(bundle_dir, "norm")
    e.fallback.on_source = on_source
    x = mixed_batch()
    predicted = e.predict(x)
    processed = e.process(x)
    assert predicted.valid.tolist() == processed.valid.tolist() == [True, True, True, False]
    assert predicted.on_source.tolist() == processed.on_source.tolist() == [on_source] * len(x)
    assert (predicted.source_classes == -1).all()  # `predict` samples nothing for the estimate
    same = slice(None) if on_source else predicted.valid  # the source model served every window
    np.testing.assert_array_equal(predicted.classes[same], processed.classes[same])
    np.testing.assert_allclose(predicted.probs[same], processed.probs[same], rtol=1e-5, atol=1e-6)


def test_predict_of_the_source_policy_is_its_process(bundle_dir: Path):
    e = warmed(bundle_dir, "source")
    x = mixed_batch()
    predicted, processed = e.predict(x), e.process(x)
    np.testing.assert_array_equal(predicted.classes, processed.classes)
    np.testing.assert_array_equal(predicted.source_classes, processed.classes)
    np.testing.assert_allclose(predicted.probs, processed.probs, rtol=1e-5, atol=1e-6)
