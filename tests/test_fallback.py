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
from edge_ttt.adapt.predictions import Scored
from edge_ttt.adapt.softmax import softmax_entropy
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


PRIOR = np.full(4, 0.25)


def test_the_fallback_switches_past_the_margin_and_returns_within_recover():
    f = Fallback(
        FallbackOptions(horizon=40, margin=0.2, recover=0.1, min_windows=8, classes=0.5), PRIOR, None
    )
    source = np.repeat(np.arange(4), 10)  # every class, as often: the source's bound is 1
    assert not f.update(np.zeros(7, np.int64), source[:7])  # too few windows
    f.reset()
    assert f.update(np.zeros(40, np.int64), source) and f.on_source  # stuck on one class: 0.25 vs 1
    half = np.where(source < 2, source, 0)  # two classes right, two taken for class 0: 0.5
    assert not f.update(half, source) and f.on_source  # 0.5 below: not within recover
    assert f.update(source, source) and not f.on_source  # as good as source: back
    nearly = np.where(source < 3, source, 0)  # 0.75: 0.25 below, past the margin again
    assert f.update(nearly, source) and f.on_source
    f.update(np.where(np.arange(40) < 34, source, 0), source)  # 0.85: within the margin ...
    assert f.on_source  # ... but not within recover


def test_the_fallback_waits_for_the_source_model_to_see_most_classes():
    """During one long activity the source model's own mix is narrow: no switch, however the
    adapted model does; a collapsed adapted model does not keep it shut."""
    f = Fallback(
        FallbackOptions(horizon=40, margin=0.1, recover=0.0, min_windows=8, classes=0.7), PRIOR, None
    )
    assert not f.update(np.full(40, 3), np.zeros(40, np.int64)) and not f.on_source
    assert f.update(np.full(40, 3), np.repeat(np.arange(4), 10)) and f.on_source


def test_the_class_gate_never_holds_the_source_model_serving():
    """A source model whose classes narrow once it serves (confused by the very shift it was
    called for) shuts the gate; the adapted model, estimated far ahead, serves again anyway."""
    f = Fallback(
        FallbackOptions(horizon=40, margin=0.1, recover=0.0, min_windows=8, classes=0.7), PRIOR, None
    )
    every = np.repeat(np.arange(4), 10)
    assert f.update(np.zeros(40, np.int64), every) and f.on_source
    narrow = np.zeros(40, np.int64)  # one class: below the gate's 2.8 effective classes, bound 0.25
    assert f.source.effective_classes() >= f.needed
    assert f.update(every, narrow) and not f.on_source  # the adapted model's bound 1.0: back
    assert f.source.effective_classes() < f.needed
    assert not f.update(narrow, narrow) and not f.on_source  # the shut gate holds a new switch back


def test_the_fallback_reads_steadiness_and_the_sampled_source_at_its_gap():
    """A model that confuses classes without changing their mix changes its mind from window to
    window: the reference's stay rates (here 0.9 at every gap) tell it from a steady one."""
    f = Fallback(FallbackOptions(horizon=80, margin=0.2, recover=0.1, min_windows=8), PRIOR, [0.9] * 8)
    source = np.repeat(np.arange(4), 20)
    sampled = np.where(np.arange(80) % 4 == 0, source, -1)  # every 4th: pairs 4 apart, 16 of 19 stay
    flapping = np.tile(np.arange(4), 20)  # the prior's mix, never the same class twice
    assert f.update(flapping, sampled) and f.on_source
    assert f.source.get() == pytest.approx(min(1.0, (16 / 19) / 0.9))
    assert f.adapted.get() == 0.0


def test_without_a_source_window_nothing_is_compared_whatever_the_gate():
    f = Fallback(FallbackOptions(horizon=8, margin=0.1, recover=0.0, min_windows=1, classes=0.0), PRIOR, None)
    assert not f.update(np.zeros(4, np.int64), np.full(4, -1)) and not f.on_source


def test_fallback_options_name_what_does_not_fit():
    for bad, message in {
        "min_windows": (dict(horizon=4, min_windows=8), "min_windows"),
        "recover": (dict(margin=0.05, recover=0.1), "recover"),
        "classes": (dict(classes=1.5), "classes"),
    }.values():
        with pytest.raises(ValueError, match=message):
            FallbackOptions(**bad)


def test_a_state_of_the_earlier_rule_starts_the_comparison_afresh():
    f = Fallback(FallbackOptions(), PRIOR, None)
    f.update(np.zeros(40, np.int64), np.repeat(np.arange(4), 10))
    f.load_state({"on_source": np.asarray(True), "adapted": np.ones(5), "source": np.ones(5)})
    assert not f.on_source and f.adapted.ran() == f.source.ran() == 0


RUN = 16  # windows per activity in the scripted streams below


class Scripted:
    """The test's stand-in for both models' predictions, since the test bundle's random model
    predicts one class on nearly every window: the activity of the window being processed
    (`label`, set by the test) for the source model and, in `good` mode, for the policy; class 0
    in `bad` mode (a collapse). The policy's state and the engine around it are real, and the
    real source pass still runs (for what it does to the shared model)."""

    def __init__(self, engine: Engine) -> None:
        self.policy, self.mode, self.label, self.engine = engine.policy, "good", 0, engine
        engine.policy = self
        self.real_source = engine._source
        engine._source = self.source

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def _logits(self, n: int, label: int) -> np.ndarray:
        return (50.0 * np.eye(CLASSES)[np.full(n, label)]).astype(np.float32)

    def _served(self, out: Outputs, n: int) -> Outputs:
        return Outputs(self._logits(n, 0 if self.mode == "bad" else self.label), out.moments, out.loss)

    def update(self, x: np.ndarray) -> Outputs:
        return self._served(self.policy.update(x), len(x))

    def predict(self, x: np.ndarray) -> Outputs:
        return self._served(self.policy.predict(x), len(x))

    def source(self, x: np.ndarray, owner: object, follow=None) -> Scored:
        self.real_source(x, owner, follow)
        probs, entropy = softmax_entropy(self._logits(len(x), self.label).astype(np.float64))
        return Scored(probs, likely_right(entropy, self.engine.threshold), entropy)


def stream_through(e: Engine, script: Scripted, start: int, stop: int) -> list:
    x = windows(stop, seed=3)
    out = []
    for i in range(start, stop):
        script.label = (i // RUN) % CLASSES
        out.append(e.process(x[i : i + 1]))
    return out


def fallback_engine(bundle_dir: Path) -> tuple[Engine, Scripted]:
    options = FallbackOptions(horizon=96, margin=0.2, recover=0.05, min_windows=8)
    e = Engine(OrtModel(load_bundle(bundle_dir)), "norm", fallback=options, runs=None)
    return e, Scripted(e)


def test_the_engine_serves_source_once_the_adapted_model_collapses_and_returns_when_it_recovers(
    bundle_dir: Path,
):
    e, script = fallback_engine(bundle_dir)
    script.mode = "bad"
    first = stream_through(e, script, 0, 96)
    switched = next(i for i, p in enumerate(first) if p.on_source[0])
    assert e.counters.fallbacks == 1 and e.fallback.on_source
    assert 8 < switched < 96  # once the source model has seen most classes, within one horizon
    assert all(p.classes[0] == 0 for p in first[:switched])  # decided from earlier windows only
    served = first[switched:]
    assert all(p.classes[0] == (switched + i) // RUN % CLASSES for i, p in enumerate(served))
    # The source model's estimate keeps to every 4th window, whichever model serves.
    assert [i for i, p in enumerate(first) if p.source_classes[0] >= 0] == list(range(0, 96, 4))
    assert e.counters.windows_on_source == len(served)
    script.mode = "good"
    later = stream_through(e, script, 96, 192)
    back = next(i for i, p in enumerate(later) if not p.on_source[0])
    assert back < 96 and not e.fallback.on_source and e.counters.fallbacks == 1  # back is no fallback
    assert all(p.classes[0] == (96 + i) // RUN % CLASSES for i, p in enumerate(later))


def test_without_harm_the_policy_serves_and_the_source_runs_on_every_fourth_window(bundle_dir: Path):
    e, script = fallback_engine(bundle_dir)
    out = stream_through(e, script, 0, 96)
    assert not any(p.on_source[0] for p in out) and e.counters.fallbacks == 0
    assert [i for i, p in enumerate(out) if p.source_classes[0] >= 0] == list(range(0, 96, 4))


class HarmfulAlignment:
    """Wraps the engine's input alignment: `bad` squeezes every channel tenfold, `good` is the
    alignment's own output; learning and state are the alignment's."""

    def __init__(self, inputs) -> None:
        self.inputs, self.mode = inputs, "good"

    def __getattr__(self, name: str):
        return getattr(self.inputs, name)

    def apply(self, x: np.ndarray, offset_floor: float | None = None) -> np.ndarray:
        return 0.1 * x if self.mode == "bad" else self.inputs.apply(x, offset_floor)


def test_the_source_model_serves_the_raw_windows_not_what_the_alignment_made(bundle_dir: Path):
    model = OrtModel(load_bundle(bundle_dir))
    e = Engine(model, "norm", fallback=FallbackOptions(), inputs=InputOptions())
    source = Engine(model, "source", inputs=None)
    e.inputs = HarmfulAlignment(e.inputs)
    e.inputs.mode = "bad"
    e.fallback.on_source = True  # as after a fallback
    x = windows(8, seed=3)
    for i in range(8):
        p, expected = e.process(x[i : i + 1]), source.process(x[i : i + 1])
        assert p.on_source[0]
        np.testing.assert_array_equal(p.probs, expected.probs)


def test_the_fallback_is_on_by_default_ahead_of_the_default_policy_only(bundle_dir: Path):
    model = OrtModel(load_bundle(bundle_dir))
    assert Engine(model, "steady").fallback is not None
    assert Engine(model, "norm").fallback is None and Engine(model, "source").fallback is None
    assert Engine(model, "steady", source_every=0).fallback is None  # it could compare with nothing
    with pytest.raises(ValueError, match="source_every must be at least 1"):
        Engine(model, "steady", fallback=FallbackOptions(), source_every=0)


def test_without_a_fallback_the_policy_always_serves(bundle_dir: Path):
    """(The source model runs on a sample of the windows then: tests/test_source_sample.py.)"""
    e = Engine(OrtModel(load_bundle(bundle_dir)), "norm", fallback=None)
    p = e.process(windows(4, seed=1))
    assert not p.on_source.any() and e.fallback is None
    np.testing.assert_array_equal(
        p.estimated_correct, likely_right(p.entropy, e.threshold).astype(np.float32)
    )


def test_the_fallback_state_survives_a_restart(bundle_dir: Path, tmp_path: Path):
    e, script = fallback_engine(bundle_dir)
    script.mode = "bad"
    stream_through(e, script, 0, 96)
    assert e.fallback.on_source
    e.save_state(tmp_path / "s.npz")
    again, _ = fallback_engine(bundle_dir)
    again.load_state(tmp_path / "s.npz")
    assert again.fallback.on_source and again.counters.fallbacks == 1
    for a, b in zip(again.fallback.state().values(), e.fallback.state().values(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert again.fallback.adapted.get() == e.fallback.adapted.get()


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
