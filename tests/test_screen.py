"""`screen.screen` reads the raw extremes first and fills dropped samples in only where they show
there: what it hands on must equal the guard's own checks of the filled windows."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ttt.adapt.guard import InputLimits, check_windows, fill_gaps
from edge_ttt.adapt.screen import screen, teaching

LIMITS = InputLimits(mean=np.zeros(3), std=np.ones(3))


def faulty(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(10, 3, 32)).astype(np.float32)
    x[1, 0, 4] = np.nan  # one sample dropped: filled in
    x[2, 1, :20] = np.nan  # too many: left to the guard
    x[3, 2, 7] = np.inf
    x[4, 0, :] = -np.inf  # a whole channel
    x[5, 1, [2, 9]] = [np.inf, -np.inf]
    x[6, 2] = 0.5  # flat-lined
    x[7, 0, 3] = 1e6  # out of range
    x[8] *= np.float32(1e30)  # finite, far out of range
    return x


@pytest.mark.parametrize("seed", range(4))
def test_screen_equals_the_guard_on_the_filled_windows(seed: int):
    x = faulty(seed)
    s = screen(x.copy(), (3, 32), LIMITS, None)
    filled, done = fill_gaps(x)
    want = check_windows(filled, LIMITS)
    for field in ("nonfinite", "flat", "out_of_range", "valid"):
        np.testing.assert_array_equal(getattr(s.checks, field), getattr(want, field), err_msg=field)
    np.testing.assert_array_equal(s.filled, done)
    np.testing.assert_array_equal(s.x, filled)  # NaN where nothing was filled in, as the guard left it
    assert s.raw is None and np.isfinite(s.clean).all()
    assert done.tolist() == [False, True, False, True, False, True, False, False, False, False]
    assert s.checks.valid.tolist() == [True, True, False, True, False, True, False, False, False, True]


def test_a_sound_batch_is_handed_on_as_it_came():
    x = faulty(0)[[0, 9]]
    s = screen(x, (3, 32), LIMITS, None)
    assert s.x is x and s.clean is x and not s.filled.any() and s.checks.valid.all()
    assert teaching(s, LIMITS).all()  # every window the guard passes teaches alignment


def test_windows_the_guard_refuses_teach_only_when_out_of_range_alone():
    s = screen(faulty(1), (3, 32), LIMITS, None)
    # a unit error (every value out of range) teaches; NaN, infinities, a flat line, one glitch do not
    assert teaching(s, LIMITS).tolist() == [True, True, False, True, False, True, False, False, True, True]
