"""Guards: which windows may touch the adapted state, and when the adapted state has collapsed.

Pure numpy. Input checks run on every window before any policy sees it: a window with more
NaN/Inf than a few dropped samples (those are filled in: `fill_gaps`), a flat-lined channel or
values far outside the source range is still predicted (from a sanitized copy) but never updates
statistics, parameters or optimizer state. The collapse detector watches label-free signals of the
adapted model and says when to roll back.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from edge_ttt.manifest import Manifest

# A window whose channel spans less than this share of the channel's source std is flat-lined
# (stuck or near-constant). In the smartwatch recordings no window of any channel spans less than
# 0.147 source stds (0.1 % of windows: under 0.21), so 0.02 leaves real motion a margin of 7x.
FLAT_RATIO = 0.02
# At most this share of a channel's samples in a window may be missing (NaN, +-Inf: a dropped
# packet, a failed read) for the window to be filled in and kept: 8 of 64 samples. More, and the
# window is invalid (a sensor that fails that often is not to be learnt from).
GAP_SHARE = 0.125
# Samples of the running median that tells isolated readings (a bit error, a glitch: one or two
# samples) from a stretch of them (a wrong unit or gain moves every sample).
GLITCH_SPAN = 5


@dataclass(frozen=True)
class InputLimits:
    """Per-channel source mean and std, and how far from them a window may go."""

    mean: np.ndarray  # [C]
    std: np.ndarray  # [C]
    range_sigmas: float = 50.0
    flat_ratio: float = FLAT_RATIO

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, range_sigmas: float = 50.0, flat_ratio: float = FLAT_RATIO
    ) -> InputLimits:
        ref = manifest.reference.channels
        return cls(
            mean=np.array([c.mean for c in ref], np.float64),
            std=np.sqrt(np.maximum([c.var for c in ref], 1e-24)),
            range_sigmas=range_sigmas,
            flat_ratio=flat_ratio,
        )

    @functools.cached_property
    def flat_below(self) -> np.ndarray:
        """Per channel, the spread under which a window's channel is flat-lined (worked out once)."""
        return self.flat_ratio * self.std


@dataclass(frozen=True)
class Validity:
    """Per window: may it adapt? And why not (a window can fail several checks)."""

    nonfinite: np.ndarray  # bool [n]
    flat: np.ndarray  # bool [n]
    out_of_range: np.ndarray  # bool [n]

    valid: np.ndarray = field(init=False)  # none of the above: derived once, read several times a batch

    def __post_init__(self) -> None:
        object.__setattr__(self, "valid", ~(self.nonfinite | self.flat | self.out_of_range))


class Extremes(NamedTuple):
    """Per window and channel the finite maximum, minimum and their spread (float64); per window
    whether a value was not finite (the non-finite values then count as the source mean)."""

    high: np.ndarray
    low: np.ndarray
    spread: np.ndarray
    nonfinite: np.ndarray


def check_windows(
    x: np.ndarray, limits: InputLimits, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> Validity:
    """Checks on raw windows [n, C, L].

    Flat-lined: a channel whose spread within the window is below `flat_ratio` of its source
    std (a dead or stuck sensor). Out of range: any finite value further than `range_sigmas`
    source stds from the source mean (a wrong unit or a broken reading, not drift).
    `bounds`: the windows' per-channel maxima and minima where the caller has them already
    (`InputAlignment.aligned_bounds`), exactly as the reductions over `x` would give them.
    """
    high, low, spread, nonfinite = extremes(x, limits, bounds)
    flat = np.logical_or.reduce(spread < limits.flat_below, axis=1)
    return Validity(nonfinite=nonfinite, flat=flat, out_of_range=beyond(high, low, limits))


def extremes(
    x: np.ndarray, limits: InputLimits, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> Extremes:
    """The windows' `Extremes`; from `bounds` (maxima, minima) when given, unless one is not finite."""
    # Only each channel's extremes matter: |v - mean| is largest at the minimum or the maximum,
    # and float64 rounding keeps that order, so this equals the element-wise test, without
    # the element-wise work. A NaN or an infinity shows in the extremes too (max and min
    # propagate NaN), as a spread that is not finite; only then is the window looked at whole.
    # The arithmetic is in float64 (the extremes are cast on the way into each subtraction). The
    # ufuncs' reductions stand for `.max`, `.min`, `.all` and `.any` (the same calls without their
    # Python wrappers).
    high, low = (np.maximum.reduce(x, axis=2), np.minimum.reduce(x, axis=2)) if bounds is None else bounds
    spread = np.subtract(high, low, dtype=np.float64)
    nonfinite = ~np.logical_and.reduce(np.isfinite(spread), axis=1)
    if np.logical_or.reduce(nonfinite):
        clean = np.where(np.isfinite(x), x, limits.mean[None, :, None])
        high = np.maximum.reduce(clean, axis=2)
        low = np.minimum.reduce(clean, axis=2)
        spread = np.subtract(high, low, dtype=np.float64)
    return Extremes(high, low, spread, nonfinite)


def beyond(high: np.ndarray, low: np.ndarray, limits: InputLimits) -> np.ndarray:
    """Per window: an extreme further than `range_sigmas` source stds from the source mean. Since
    high >= low, max(high - mean, mean - low) is the larger of |high - mean| and |low - mean|
    (float subtraction is monotone and negates exactly)."""
    distance = np.maximum(high - limits.mean, limits.mean - low) / limits.std
    return np.logical_or.reduce(distance > limits.range_sigmas, axis=1)


def glitched(x: np.ndarray, suspects: np.ndarray, limits: InputLimits) -> np.ndarray:
    """Per window [n, C, L]: among the `suspects` (windows out of range), those out of range
    through isolated readings alone: their running median over `GLITCH_SPAN` samples is in range.
    Only the suspects are filtered, so a stream in range pays nothing.

    >>> x = np.zeros((2, 1, 16)); x[0, 0, 7] = 1e4; x[1] *= 57.3; x[1, 0, 4:12] = 1e4
    >>> limits = InputLimits(mean=np.zeros(1), std=np.ones(1))
    >>> glitched(x, np.array([True, True]), limits).tolist()
    [True, False]
    """
    out = np.zeros(len(x), bool)
    if not np.logical_or.reduce(suspects):
        return out
    windows = np.lib.stride_tricks.sliding_window_view(x[suspects], GLITCH_SPAN, axis=2)
    median = np.median(windows, axis=3)
    out[suspects] = ~beyond(median.max(axis=2), median.min(axis=2), limits)
    return out


def fill_gaps(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n, C, L] with their few missing samples filled in, and per window whether it was.

    A missing sample (NaN, +-Inf) is a reading that never came, not a reading of zero or of the
    source mean: it is filled by linear interpolation between its channel's neighbours in the
    window (the nearest one at an edge), where at most `GAP_SHARE` of each channel's samples are
    missing. Other windows are returned as they are (the guard refuses them). A batch without a
    missing sample gets `x` itself back.

    >>> x = np.arange(16.0).reshape(1, 1, 16); x[0, 0, [1, 15]] = [np.nan, np.inf]
    >>> filled, done = fill_gaps(x)
    >>> filled[0, 0, :3].tolist(), filled[0, 0, -2:].tolist(), done.tolist()
    ([0.0, 1.0, 2.0], [14.0, 14.0], [True])
    """
    missing = ~np.isfinite(x)
    if not np.logical_or.reduce(missing, axis=None):
        return x, np.zeros(len(x), bool)
    counts = np.add.reduce(missing, axis=2)  # [n, C]
    done = counts.any(axis=1) & (counts <= GAP_SHARE * x.shape[2]).all(axis=1)
    if not done.any():
        return x, done
    x = x.copy()
    steps = np.arange(x.shape[2])
    for i, c in zip(*np.nonzero(done[:, None] & (counts > 0)), strict=True):
        hole = missing[i, c]
        x[i, c, hole] = np.interp(steps[hole], steps[~hole], x[i, c, ~hole])
    return x, done


def sanitize(x: np.ndarray, limits: InputLimits) -> np.ndarray:
    """A copy fit to predict from: non-finite values replaced by the channel's source mean."""
    return np.where(np.isfinite(x), x, limits.mean[None, :, None]).astype(np.float32)


@dataclass
class CollapseDetector:
    """Label-free collapse signals over the last `horizon` adapted windows.

    Entropy minimization collapses into one class predicted with near-certainty. A healthy model
    on a stream of one activity also predicts one class, but not with far more confidence than
    the source model ever had on its own held-out data; so both must hold: the mean entropy is
    below `entropy_floor` (a fraction of the source's low entropy quantile) and one class takes
    at least `max_class_share` of the predictions. Independently, adapted parameters or
    statistics that move further from source than any plausible drift mean a broken state.
    """

    entropy_floor: float
    classes: int
    horizon: int = 64
    max_class_share: float = 0.95
    max_param_drift: float = 1.0
    max_stat_shift: float = 50.0
    _entropy: deque = field(init=False)
    _classes: deque = field(init=False)

    def __post_init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._entropy = deque(maxlen=self.horizon)
        self._classes = deque(maxlen=self.horizon)

    def observe(self, classes: np.ndarray, entropy: np.ndarray) -> None:
        self._classes.extend(np.asarray(classes, np.int64).tolist())
        self._entropy.extend(np.asarray(entropy, np.float64).tolist())

    def state(self) -> dict[str, np.ndarray]:
        """The windows in view, oldest first."""
        return {"classes": np.array(self._classes, np.int64), "entropy": np.array(self._entropy, np.float64)}

    def load_state(self, flat: dict[str, np.ndarray]) -> None:
        self.clear()
        self._classes.extend(int(c) for c in flat["classes"])
        self._entropy.extend(float(h) for h in flat["entropy"])

    def verdict(self, param_drift: float = 0.0, stat_shift: float = 0.0) -> str | None:
        """None when healthy, else the reason for a rollback."""
        if param_drift > self.max_param_drift:
            return f"parameters moved {param_drift:.2f} (relative) from source"
        if stat_shift > self.max_stat_shift:
            return f"statistics moved {stat_shift:.1f} source stds from source"
        if len(self._classes) < self.horizon:
            return None
        share = np.bincount(np.asarray(self._classes), minlength=self.classes).max() / len(self._classes)
        if share < self.max_class_share:  # the common case: no need to average the entropies
            return None
        mean_entropy = float(np.mean(self._entropy))
        if mean_entropy < self.entropy_floor:
            return f"entropy {mean_entropy:.3f} below {self.entropy_floor:.3f} with one class at {share:.0%}"
        return None
