"""Momentum statistics: closed forms, and batch-size-1 averages that find the population."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_ttt.adapt.statistics import LayerMoments, MomentEMA

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


def test_layer_moments_fold_every_layer_as_its_own_average_would():
    """One average over the concatenated layers gives each layer's floats bit for bit."""
    rng = np.random.default_rng(2)
    source = {f"l{i}": (rng.standard_normal(c), rng.uniform(0.5, 2, c)) for i, c in enumerate((3, 5))}
    moments = LayerMoments(source, momentum=0.1, prior_windows=10.0)
    alone = {k: MomentEMA.from_stats(m, v, 0.1, 10.0) for k, (m, v) in source.items()}
    for _ in range(20):
        batch = {k: (rng.standard_normal(len(m)), rng.uniform(0, 3, len(m))) for k, (m, _) in source.items()}
        windows = float(rng.uniform(0.1, 4))
        moments.fold(batch, windows)
        for k, ema in alone.items():
            ema.update(*batch[k], windows=windows)
    for k, ema in alone.items():
        mean, var = moments.stats()[k]
        np.testing.assert_array_equal(mean, ema.mean.astype(np.float32))
        np.testing.assert_array_equal(var, ema.var.astype(np.float32))
        assert all(np.array_equal(moments.state()[f"{k}/{n}"], v) for n, v in ema.state().items())


def test_layer_moments_refuse_a_state_whose_layers_saw_different_windows():
    source = {"a": (np.zeros(2), np.ones(2)), "b": (np.zeros(1), np.ones(1))}
    moments = LayerMoments(source, momentum=0.1)
    state = moments.state() | {"b/seen": np.asarray(3.0)}
    with pytest.raises(ValueError, match="different numbers of windows"):
        moments.load_state(state)
