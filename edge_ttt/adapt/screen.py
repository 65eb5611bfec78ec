"""What the model sees of a batch, and which of its windows may teach: the raw windows checked
for shape, input alignment applied, the guard's checks of what the model will see, and a
sanitized copy where a window failed them. Pure numpy; the engine acts on it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edge_ttt.adapt.guard import (
    Extremes,
    InputLimits,
    Validity,
    beyond,
    check_windows,
    extremes,
    fill_gaps,
    glitched,
    sanitize,
)
from edge_ttt.adapt.input_alignment import InputAlignment


class Screened(NamedTuple):
    """One batch: the raw windows (float32, a few dropped samples filled in), their extremes where
    alignment changes them (None where the model sees them as they are), the guard's checks of the
    aligned windows, what the model is fed (aligned, sanitized where a check failed), and which
    windows had dropped samples filled in (`guard.fill_gaps`)."""

    x: np.ndarray
    raw: Extremes | None
    checks: Validity
    clean: np.ndarray
    filled: np.ndarray


def screen(
    x: np.ndarray,
    shape: tuple[int, int],
    limits: InputLimits,
    inputs: InputAlignment | None,
    floor: float | None = None,
) -> Screened:
    """Check, fill in (a few dropped samples), align (with the offset `floor` if given) and guard
    a batch [n, channels, length]."""
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or x.shape[1:] != shape:
        raise ValueError(f"windows must have shape [n, {shape[0]}, {shape[1]}], got {list(x.shape)}")
    # The raw extremes first: a value that is not finite shows in them (max and min propagate NaN,
    # an infinity leaves the spread not finite), so only then are the windows filled in and read again.
    raw, filled = extremes(x, limits), np.zeros(len(x), bool)
    if np.logical_or.reduce(raw.nonfinite):
        x, filled = fill_gaps(x)
        raw = extremes(x, limits)
    finite = not np.logical_or.reduce(raw.nonfinite)  # else the guard reads the windows themselves
    seen = x if inputs is None else inputs.apply(x, floor)
    if seen is x:  # the model sees the raw windows: their extremes are the guard's
        raw, bounds = None, (raw.high, raw.low) if finite else None
    else:  # the aligned windows' extremes from the raw ones (no second pass)
        bounds = inputs.aligned_bounds(raw.high, raw.low, floor) if finite else None
    checks = check_windows(seen, limits, bounds)
    clean = seen if np.logical_and.reduce(checks.valid) else sanitize(seen, limits)
    return Screened(x, raw, checks, clean, filled)


def adapting(s: Screened, limits: InputLimits) -> np.ndarray:
    """The windows the policy may adapt on. The guard judges what the model will see (a gyroscope
    in degrees is in range once its gain is learnt); the policy adapts only on windows in range
    raw as well (while that gain is learnt, long-horizon statistics would keep what it lets through)."""
    valid = s.checks.valid
    return valid if s.raw is None else valid & ~beyond(s.raw.high, s.raw.low, limits)


def teaching(s: Screened, limits: InputLimits) -> np.ndarray:
    """The windows input alignment may learn from, in range or not yet (a unit error is learnt from
    windows out of range): finite, not flat, and not out of range through a glitch alone (a bit
    error's reading would drag the gain, the offset and the mounting)."""
    c = s.checks
    if np.logical_and.reduce(c.valid):  # the guard refuses more than this: all of them teach
        return c.valid
    return ~(c.nonfinite | c.flat | glitched(s.x, c.out_of_range, limits))


def source_view(x: np.ndarray, valid: np.ndarray, limits: InputLimits) -> np.ndarray:
    """What the source model sees: the raw windows, sanitized where the guard refused one."""
    return x if np.logical_and.reduce(valid) else sanitize(x, limits)
