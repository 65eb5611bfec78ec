"""Momentum statistics: closed forms, and batch-size-1 averages that find the population."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_ttt.adapt.statistics import MomentEMA

finite = st.floats(-100, 100, allow_nan=False)


@given(mu0=finite, var0=st.floats(0.01, 50), m=finite, v=st.floats(0, 50), a=st.floats(0.01, 1.0))
def test_one_update_matches_the_closed_form(mu0, var0, m, v, a):
    ema = MomentEMA.from_stats(np.array([mu0]), np.array([var0]), momentum=a)
    ema.update(np.array([m]), np.array([v]), windows=1)
    mean = (1 - a) * mu0 + a * m
    second = (1 - a) * (var0 + mu0**2) + a * (v + m**2)
    assert ema.mean[0] == pytest.approx(mean, rel=1e-9, abs=1e-9)
    assert ema.var[0] == pytest.approx(max(second - mean**2, 0.0), rel=1e-6, abs=1e-6)


def test_a_batch_of_n_weighs_like_n_single_windows():
    ema = MomentEMA.from_stats(np.zeros(2), np.ones(2), momentum=0.1)
    assert ema.weight(16) == pytest.approx(1 - 0.9**16)
    assert ema.weight(1) == pytest.approx(0.1)


def test_batch_size_one_converges_to_population_not_within_window_statistics():
    """Windows whose means differ: within-window variance 1, population variance 1 + 4 = 5."""
    rng = np.random.default_rng(0)
    ema = MomentEMA.from_stats(np.zeros(3), np.ones(3), momentum=0.01)
    within = []
    for _ in range(5000):
        window = rng.normal(3.0 + rng.normal(0, 2.0, 3)[:, None], 1.0, size=(3, 128))
        m, v = window.mean(axis=1), window.var(axis=1)
        within.append(v)
        ema.update(m, v, windows=1)
    np.testing.assert_allclose(ema.mean, 3.0, atol=0.3)
    np.testing.assert_allclose(ema.var, 5.0, rtol=0.2)
    assert np.mean(within) == pytest.approx(1.0, rel=0.05)  # what a naive average would report


def test_momentum_is_validated():
    with pytest.raises(ValueError, match="momentum"):
        MomentEMA.from_stats(np.zeros(1), np.ones(1), momentum=0.0)
