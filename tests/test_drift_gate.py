"""The drift gate's scores are the documented ones, and it opens only past its thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ttt.adapt.drift_gate import DriftGate


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
