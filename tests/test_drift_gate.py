"""The drift gate's scores are the documented ones, and it opens only past its thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ttt.adapt.drift_gate import DriftGate, fade


def gate(**kw) -> DriftGate:
    return DriftGate.from_reference(np.zeros(2), np.ones(2), momentum=1.0, prior_windows=None, **kw)


def window(mean: float, std: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, std, (1, 2, 20_000))


def test_source_like_input_keeps_it_closed():
    g = gate()
    g.observe(window(0.0, 1.0))
    shift, spread = g.shift(), g.spread()
    assert shift < 0.05 and spread < 0.05 and not g.open


@pytest.mark.parametrize(
    ("mean", "std", "expect_shift", "expect_spread"), [(0.8, 1.0, 0.8, 0.0), (0.0, 1.5, 0.0, np.log(2.25))]
)
def test_scores_are_shift_in_source_stds_and_log_variance_ratio(mean, std, expect_shift, expect_spread):
    g = gate()
    g.observe(window(mean, std))
    shift, spread = g.shift(), g.spread()
    assert shift == pytest.approx(expect_shift, abs=0.03)
    assert spread == pytest.approx(expect_spread, abs=0.03)
    assert g.open


def test_thresholds_are_configurable():
    g = gate(max_shift=1.0, max_spread=1.0)
    g.observe(window(0.8, 1.5))
    assert not g.open


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.3, 1.0), (0.8, 1.0), (0.0, 1.5), (0.8, 2.0)])
def test_distance_counts_thresholds_and_opens_past_one(mean, std):
    g = gate(max_shift=0.5, max_spread=0.4)
    g.observe(window(mean, std))
    assert g.distance() == pytest.approx(max(g.shift() / 0.5, g.spread() / 0.4))
    assert g.open == (g.shift() > 0.5 or g.spread() > 0.4) == (g.distance() > 1.0)


def test_a_zero_threshold_makes_any_shift_infinitely_far():
    g = gate(max_shift=0.0, max_spread=0.0)
    assert g.distance() == 0.0 and not g.open  # nothing observed: the source itself
    g.observe(window(0.1, 1.0))
    assert g.distance() == float("inf") and g.open and fade(g.distance(), 1.0, 2.0) == 1.0


def test_fade_ramps_from_start_to_end():
    assert [fade(d, 1.0, 3.0) for d in (0.0, 1.0, 1.5, 2.0, 3.0, 9.0)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert fade(1.0, 1.0, 1.0) == 0.0 and fade(1.0 + 1e-12, 1.0, 1.0) == 1.0  # a step, past start
