"""Label-free estimates and the fallback to source: the estimator on streams of known accuracy,
the switch within the configured windows and back, and what the engine reports about it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_ttt.adapt.engine import Engine
from edge_ttt.adapt.estimates import (
    class_mix_cap,
    device_estimates,
    entropy_threshold,
    likely_right,
    steadiness,
    stream_estimate,
)
from edge_ttt.adapt.fallback import Fallback, FallbackOptions
from edge_ttt.adapt.input_alignment import InputOptions
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.artifacts import load_bundle
from edge_ttt.steadiness import stay_rates
from tests.model_factory import CLASSES, windows

K = 5


def calibrated_stream(n: int, low: float, rng: np.random.Generator):
    """A calibrated classifier: top probability c ~ U(low, 1), right with probability c; the
    rest spread evenly. Returns (entropy, right)."""
    c = rng.uniform(low, 1.0, n)
    probs = np.repeat(((1 - c) / (K - 1))[:, None], K, axis=1)
    probs[:, 0] = c
    entropy = -(probs * np.log(probs)).sum(axis=1)
    return entropy, rng.random(n) < c


@pytest.mark.parametrize("low", [0.3, 0.5, 0.7])
def test_the_estimate_matches_the_accuracy_of_a_stream_like_the_held_out_data(low: float):
    rng = np.random.default_rng(int(low * 10))
    held_out, right = calibrated_stream(20_000, low, rng)
    q = np.linspace(0.01, 0.99, 99)
    manifest = SimpleNamespace(
        reference=SimpleNamespace(
            val_accuracy=float(right.mean()),
            entropy=SimpleNamespace(q=q.tolist(), value=np.quantile(held_out, q).tolist()),
        )
    )
    stream, truth = calibrated_stream(20_000, low, rng)
    estimate = likely_right(stream, entropy_threshold(manifest)).mean()
    assert estimate == pytest.approx(truth.mean(), abs=0.03)


def test_a_model_stuck_on_one_class_is_capped_at_that_class_share():
    prior = np.full(4, 0.25)
    assert class_mix_cap(np.zeros(100, np.int64), prior) == pytest.approx(0.25)
    assert class_mix_cap(np.arange(100) % 4, prior) == pytest.approx(1.0)
    assert class_mix_cap(np.array([], np.int64), prior) == 1.0


def test_whole_stream_estimates_are_per_device_class_mix_bounds_weighted_by_windows():
    prior = np.full(4, 0.25)
    devices = np.array(["a"] * 8 + ["b"] * 4 + ["c"] * 2, dtype=object)
    classes = np.concatenate([np.arange(8) % 4, np.zeros(4, np.int64), np.full(2, -1)])  # c never ran
    per_device = device_estimates(classes, devices, prior)
    assert per_device == {"a": (8, 1.0), "b": (4, 0.25), "c": (0, None)}
    assert stream_estimate(per_device) == pytest.approx((8 * 1.0 + 4 * 0.25) / 12)
    assert stream_estimate({"c": (0, None)}) is None


def activity_stream(right: float, rng: np.random.Generator, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Labels in activities of 20 windows (4 classes in turn, as often each), and a model right on a
    window with probability `right`, otherwise any other class: its mix stays the prior's."""
    labels = np.repeat(np.arange(n // 20) % 4, 20)
    wrong = (labels + rng.integers(1, 4, n)) % 4
    return labels, np.where(rng.random(n) < right, labels, wrong)


def test_stay_rates_count_pairs_within_each_device_in_the_order_given():
    classes = np.array([0, 0, 1, 1, 2, 2])
    devices = np.array(["a", "a", "a", "b", "b", "b"])  # a: 0 0 1, b: 1 2 2
    assert stay_rates(classes, devices, lags=3) == pytest.approx([2 / 4, 0 / 2, 1.0])  # lag 3: no pair


def test_steadiness_scales_a_mix_preserving_confusion_toward_the_true_accuracy():
    rng = np.random.default_rng(0)
    labels, held_out = activity_stream(0.9, rng)
    reference = stay_rates(held_out, np.zeros(len(held_out)))
    prior = np.full(4, 0.25)
    for right in (0.9, 0.7, 0.5):
        labels, predicted = activity_stream(right, rng)
        devices = np.zeros(len(labels))
        bound = device_estimates(predicted, devices, prior)[0.0][1]
        (n, estimate) = device_estimates(predicted, devices, prior, reference)[0.0]
        truth = float(np.mean(predicted == labels))
        assert n == len(labels) and bound > 0.97  # the mix gives nothing away
        assert abs(estimate - truth) < 0.12 and abs(estimate - truth) < abs(bound - truth) - 0.1 * (
            right < 0.9
        )
    # A model sampled every 4th window is compared at lag 4, not at lag 1.
    labels, predicted = activity_stream(0.9, rng)
    sampled = np.where(np.arange(len(predicted)) % 4 == 0, predicted, -1)
    assert steadiness(sampled, reference) > 0.93  # as steady as the held-out model, up to sampling
    assert steadiness(sampled, reference[:1]) == 1.0  # pairs 4 apart: lag 1's rate says nothing of them


def test_without_the_reference_the_estimate_is_the_bound_alone():
    prior = np.full(2, 0.5)
    flips = np.array([0, 1] * 10)
    assert device_estimates(flips, np.zeros(20), prior) == {0.0: (20, 1.0)}  # a bundle without `stay`
    assert device_estimates(flips, np.zeros(20), prior, [0.9])[0.0] == (20, 0.0)
    assert steadiness(np.array([3]), [0.9]) == 1.0  # no pair: nothing to say


def test_the_fallback_waits_for_min_windows_and_keeps_a_margin_both_ways():
    f = Fallback(FallbackOptions(horizon=10, margin=0.2, min_windows=4))
    assert not any(f.update([0.0], [1.0]) for _ in range(3)) and not f.on_source  # too few windows
    assert f.update([0.0], [1.0]) and f.on_source
    f.reset()
    for _ in range(10):  # within the margin: no switch
        assert not f.update([0.0, 1.0, 1.0, 1.0, 1.0], [1.0] * 5)
    with pytest.raises(ValueError, match="min_windows"):
        FallbackOptions(horizon=4, min_windows=8)


class Harmful:
    """Wraps a policy so its predictions are what the test says: `bad` gives uniform logits
    (estimated wrong), `good` very confident ones (estimated right); the state is the policy's."""

    def __init__(self, policy) -> None:
        self.policy, self.mode = policy, "good"

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def _shape(self, out: Outputs) -> Outputs:
        logits = (
            np.zeros_like(out.logits) if self.mode == "bad" else 50.0 * np.eye(CLASSES)[out.logits.argmax(1)]
        )
        return Outputs(logits.astype(np.float32), out.moments, out.loss)

    def update(self, x: np.ndarray) -> Outputs:
        return self._shape(self.policy.update(x))

    def predict(self, x: np.ndarray) -> Outputs:
        return self._shape(self.policy.predict(x))


def test_the_engine_serves_source_within_min_windows_of_harm_and_returns_when_it_ends(bundle_dir: Path):
    options = FallbackOptions(horizon=16, margin=0.05, min_windows=8)
    model = OrtModel(load_bundle(bundle_dir))
    e = Engine(model, "norm", fallback=options)
    source = Engine(model, "source")
    e.policy = Harmful(e.policy)
    x = windows(64, seed=3)
    entropy = np.concatenate([source.process(x[i : i + 1]).entropy for i in range(64)])
    # A threshold at which the source model counts as right on half the windows: room to be better.
    e.threshold = source.threshold = float(np.median(entropy))
    e.policy.mode = "bad"
    served = [e.process(x[i : i + 1]) for i in range(8)]
    assert not any(p.on_source[0] for p in served)  # decided from earlier windows only
    assert e.counters.fallbacks == 1 and e.fallback.on_source  # switched at the 8th window
    later = [e.process(x[i : i + 1]) for i in range(8, 24)]
    assert all(p.on_source[0] for p in later) and e.counters.windows_on_source == 16
    for i, p in zip(range(8, 24), later, strict=True):  # the source model's predictions, exactly
        expected = source.process(x[i : i + 1])
        np.testing.assert_array_equal(p.probs, expected.probs)
        assert p.estimated_correct[0] == p.source_estimated_correct[0] == expected.estimated_correct[0]
    e.policy.mode = "good"
    back = next(i for i in range(24, 64) if not e.process(x[i : i + 1]).on_source[0] or i == 63)
    assert not e.fallback.on_source and back < 24 + 16  # within one horizon
    assert e.counters.fallbacks == 1  # a switch back is not a fallback


class HarmfulAlignment:
    """Wraps the engine's input alignment: `bad` squeezes every channel tenfold (windows the test
    model is less sure of than of any raw one, and not flat), `good` is the alignment's own output;
    learning and state are the alignment's."""

    def __init__(self, inputs) -> None:
        self.inputs, self.mode = inputs, "good"

    def __getattr__(self, name: str):
        return getattr(self.inputs, name)

    def apply(self, x: np.ndarray, offset_floor: float | None = None) -> np.ndarray:
        return 0.1 * x if self.mode == "bad" else self.inputs.apply(x, offset_floor)


def test_the_fallback_judges_what_the_input_alignment_feeds_the_model(bundle_dir: Path):
    options = FallbackOptions(horizon=16, margin=0.05, min_windows=8)
    model = OrtModel(load_bundle(bundle_dir))
    e = Engine(model, "norm", fallback=options, inputs=InputOptions())
    source = Engine(model, "source", inputs=None)
    e.inputs = HarmfulAlignment(e.inputs)
    x = windows(64, seed=3)
    entropy = np.concatenate([source.process(x[i : i + 1]).entropy for i in range(64)])
    e.threshold = source.threshold = float(np.median(entropy))  # source right on half the windows
    e.inputs.mode = "bad"
    for i in range(8):
        assert not e.process(x[i : i + 1]).on_source[0]
    assert e.fallback.on_source and e.counters.fallbacks == 1
    for i in range(8, 24):  # the source model on the raw windows, not on what the alignment made
        p, expected = e.process(x[i : i + 1]), source.process(x[i : i + 1])
        assert p.on_source[0]
        np.testing.assert_array_equal(p.probs, expected.probs)
    e.inputs.mode = "good"  # back once the statistics `norm` took from the squeezed windows fade
    back = next(i for i in range(24, 64) if not e.process(x[i : i + 1]).on_source[0] or i == 63)
    assert not e.fallback.on_source and back < 63 and e.counters.fallbacks == 1


def test_without_a_fallback_the_policy_always_serves(bundle_dir: Path):
    """(The source model runs on a sample of the windows then: tests/test_source_sample.py.)"""
    e = Engine(OrtModel(load_bundle(bundle_dir)), "norm", fallback=None)
    p = e.process(windows(4, seed=1))
    assert not p.on_source.any() and e.fallback is None
    np.testing.assert_array_equal(
        p.estimated_correct, likely_right(p.entropy, e.threshold).astype(np.float32)
    )


def test_the_fallback_state_survives_a_restart(bundle_dir: Path, tmp_path: Path):
    model = OrtModel(load_bundle(bundle_dir))
    options = FallbackOptions(horizon=16, margin=0.05, min_windows=4)
    e = Engine(model, "norm", fallback=options)
    e.policy = Harmful(e.policy)
    e.policy.mode = "bad"
    for i in range(6):
        e.process(windows(1, seed=i))
    assert e.fallback.on_source
    e.save_state(tmp_path / "s.npz")
    again = Engine(model, "norm", fallback=options)
    again.load_state(tmp_path / "s.npz")
    assert again.fallback.on_source and again.counters.fallbacks == 1
    assert np.array_equal(again.fallback.adapted.state(), e.fallback.adapted.state())


def test_export_writes_the_held_out_stay_rates_and_the_manifest_checks_them(bundle_dir: Path):
    import json

    from edge_ttt.manifest import Manifest

    doc = json.loads((bundle_dir / "manifest.json").read_text())
    stay = Manifest.model_validate(doc).reference.stay
    assert len(stay) == 8 and all(0.0 <= v <= 1.0 for v in stay)
    for value, message in {
        "above 1": ([1.5], r"stay\.0\n  Input should be less than or equal to 1"),
        "empty": ([], r"stay\n  List should have at least 1 item"),
    }.values():
        doc["reference"]["stay"] = value
        with pytest.raises(ValueError, match=message):
            Manifest.model_validate(doc)
    del doc["reference"]["stay"]  # a bundle exported before it still loads (the bound alone)
    assert Manifest.model_validate(doc).reference.stay is None
