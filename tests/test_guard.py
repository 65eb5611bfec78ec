"""Input checks and the collapse detector, on hand-made numbers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_ttt.adapt.guard import (
    GAP_SHARE,
    CollapseDetector,
    InputLimits,
    beyond,
    check_windows,
    extremes,
    fill_gaps,
    glitched,
    sanitize,
)

LIMITS = InputLimits(mean=np.zeros(2), std=np.ones(2), range_sigmas=10.0, flat_ratio=1e-3)


def window(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((1, 2, 32)).astype(np.float32)


def test_each_check_flags_what_it_names_and_nothing_else():
    rng = np.random.default_rng(0)
    ok, nan, flat, far = (window(rng) for _ in range(4))
    nan[0, 1, 3] = np.nan
    flat[0, 0, :] = 0.5
    far[0, 1, 7] = 11.0
    v = check_windows(np.concatenate([ok, nan, flat, far]), LIMITS)
    assert v.nonfinite.tolist() == [False, True, False, False]
    assert v.flat.tolist() == [False, False, True, False]
    assert v.out_of_range.tolist() == [False, False, False, True]
    assert v.valid.tolist() == [True, False, False, False]


def test_glitched_tells_isolated_readings_from_a_stretch_out_of_range():
    rng = np.random.default_rng(2)
    one, two, three, unit, inside = (window(rng) for _ in range(5))
    one[0, 0, 5] = 1e4  # one reading
    two[0, 1, 20:22] = -50.0  # two in a row: still within a running median of 5
    three[0, 1, 20:23] = 50.0  # three: a stretch
    unit *= 57.3  # every reading scaled (a wrong unit)
    x = np.concatenate([one, two, three, unit, inside])
    out_of_range = check_windows(x, LIMITS).out_of_range
    assert out_of_range.tolist() == [True, True, True, True, False]
    assert glitched(x, out_of_range, LIMITS).tolist() == [True, True, False, False, False]
    assert not glitched(x, np.zeros(5, bool), LIMITS).any()  # only suspects are looked at


def test_near_constant_channels_count_as_flat_by_default():
    """A channel that wobbles by 1 % of its source spread (the issue's stuck sensor) is flat; one
    that moves as little as the stillest real window (0.15 source stds) is not."""
    limits = InputLimits(mean=np.zeros(2), std=np.array([1.0, 3.0]))
    rng = np.random.default_rng(1)
    x = np.concatenate([window(rng), window(rng), window(rng)])
    x[0, 1] = 2.0 + 0.01 * 3.0 * np.linspace(-0.5, 0.5, 32)  # spans 1 % of the std
    x[1, 1] = 2.0 + 0.15 * 3.0 * np.linspace(-0.5, 0.5, 32)  # spans 15 %
    assert check_windows(x, limits).flat.tolist() == [True, False, False]


def test_inf_is_nonfinite_and_a_nan_window_is_not_also_called_flat():
    x = window(np.random.default_rng(1))
    x[0, 0, 0] = -np.inf
    v = check_windows(x, LIMITS)
    assert v.nonfinite[0] and not v.flat[0] and not v.out_of_range[0]


def test_fill_gaps_fills_up_to_the_share_of_a_channel_and_leaves_the_rest_to_the_guard():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 3, 64)).astype(np.float32)
    most = int(GAP_SHARE * 64)  # 8 of 64 samples
    x[0, 1, 10 : 10 + most] = np.nan  # at the limit: filled
    x[1, 1, 10 : 11 + most] = np.nan  # one more: left as it is
    x[2, 0, :] = np.inf  # a channel gone altogether
    before = x.copy()
    filled, done = fill_gaps(x)
    assert done.tolist() == [True, False, False, False]
    assert np.array_equal(before, x, equal_nan=True), "the caller's windows are not written to"
    assert np.isfinite(filled[0]).all() and np.array_equal(filled[3], x[3])
    assert np.array_equal(filled[1:3], x[1:3], equal_nan=True)
    line = np.linspace(x[0, 1, 9], x[0, 1, 10 + most], most + 2)[1:-1]
    np.testing.assert_allclose(filled[0, 1, 10 : 10 + most], line, rtol=1e-6)


def test_fill_gaps_returns_finite_windows_themselves_however_large():
    x = np.full((2, 3, 64), 3e38, np.float32)  # finite, if not in range: the guard's to refuse
    filled, done = fill_gaps(x)
    assert filled is x and not done.any()
    calm = np.zeros((2, 3, 64), np.float32)
    assert fill_gaps(calm)[0] is calm


def test_sanitize_replaces_only_nonfinite_values_by_the_source_mean():
    limits = InputLimits(mean=np.array([5.0, -1.0]), std=np.ones(2))
    x = np.array([[[1.0, np.nan], [np.inf, 2.0]]], np.float32)
    assert sanitize(x, limits).tolist() == [[[1.0, 5.0], [-1.0, 2.0]]]


def test_detector_needs_low_entropy_and_one_class_together():
    d = CollapseDetector(entropy_floor=0.1, classes=3, horizon=10)
    d.observe(np.zeros(10, int), np.full(10, 0.5))
    assert d.verdict() is None  # one class, but no more confident than source: a long activity
    d.observe(np.arange(10) % 3, np.full(10, 0.01))
    assert d.verdict() is None  # very confident, but several classes
    d.observe(np.zeros(10, int), np.full(10, 0.01))
    assert "one class at 100%" in d.verdict()
    d.clear()
    assert d.verdict() is None  # not before a full horizon


def test_detector_flags_parameters_and_statistics_that_left_any_plausible_range():
    d = CollapseDetector(entropy_floor=0.1, classes=3, max_param_drift=1.0, max_stat_shift=50.0)
    assert d.verdict(param_drift=0.5, stat_shift=10.0) is None
    assert "parameters moved" in d.verdict(param_drift=1.5)
    assert "statistics moved" in d.verdict(stat_shift=80.0)


def elementwise_check(x: np.ndarray, limits: InputLimits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The checks as first written, on every element: `check_windows` looks at extremes only."""
    finite = np.isfinite(x)
    clean = np.where(finite, x, limits.mean[None, :, None])
    flat = (clean.max(axis=2) - clean.min(axis=2) < limits.flat_ratio * limits.std[None, :]).any(axis=1)
    distance = np.abs(clean - limits.mean[None, :, None]) / limits.std[None, :, None]
    return ~finite.all(axis=(1, 2)), flat, (distance > limits.range_sigmas).any(axis=(1, 2))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.float64]),
    st.floats(1e-3, 1e3),
    st.floats(-5.0, 5.0),
)
def test_extremes_give_the_elementwise_verdicts(seed, dtype, scale, offset):
    rng = np.random.default_rng(seed)
    limits = InputLimits(
        mean=rng.normal(size=3), std=rng.uniform(0.1, 2.0, 3), range_sigmas=3.0, flat_ratio=1e-3
    )
    x = (offset + scale * rng.standard_normal((4, 3, 16))).astype(dtype)
    x[0, 1] = limits.mean[1]  # flat
    x[1, 2, 5] = limits.mean[2] + limits.range_sigmas * limits.std[2]  # right at the range limit
    if seed % 2:
        x[2, 0, 3] = [np.nan, np.inf, -np.inf][seed % 3]
    v = check_windows(x, limits)
    for got, want in zip((v.nonfinite, v.flat, v.out_of_range), elementwise_check(x, limits), strict=True):
        np.testing.assert_array_equal(got, want)
    e = extremes(x, limits)
    np.testing.assert_array_equal(beyond(e.high, e.low, limits), v.out_of_range)  # the range check alone
