"""The drift gate: take gradient steps only while the input stream has moved away from source.

Entropy steps on data that looks like the source data have nothing to correct and can only add
noise (and they cost a backward pass). The gate follows the stream's per-channel input moments
with the same long-horizon average as the normalization statistics and compares them with the
source reference in the manifest, in source units:

- shift: mean over channels of |mean - source mean| / source std;
- spread: mean over channels of |log(var / source var)|.

It opens when either exceeds its threshold (0.5 by default: half a source standard deviation,
or a variance changed by a factor of about 1.65). Noise and dropouts that keep the first two
moments leave it closed; they change too little for an entropy step to fix anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.statistics import MomentEMA

OPEN_AT = 1.0  # the distance (in thresholds) past which the gate is open


@dataclass
class DriftGate:
    source_mean: np.ndarray  # [C]
    source_var: np.ndarray  # [C]
    moments: MomentEMA
    max_shift: float = 0.5
    max_spread: float = 0.5

    @classmethod
    def from_reference(
        cls,
        mean: np.ndarray,
        var: np.ndarray,
        momentum: float,
        prior_windows: float | None,
        max_shift: float = 0.5,
        max_spread: float = 0.5,
    ) -> DriftGate:
        mean, var = np.asarray(mean, np.float64), np.maximum(np.asarray(var, np.float64), 1e-12)
        ema = MomentEMA.from_stats(mean, var, momentum, prior_windows)
        return cls(mean, var, ema, max_shift, max_spread)

    def __post_init__(self) -> None:
        self._source_std = np.sqrt(self.source_var)

    def observe(self, x: np.ndarray) -> None:
        """Fold in a batch of valid raw windows [n, C, L]."""
        x = np.asarray(x, np.float64)
        # np.mean and np.var per channel, the same float operations without their wrappers
        # (and with the sum once): they cost more than the arithmetic on one window.
        count = x.shape[0] * x.shape[2]
        mean = np.add.reduce(x, axis=(0, 2), keepdims=True) / count
        centered = x - mean
        var = np.add.reduce(centered * centered, axis=(0, 2)) / count
        self.moments.update(mean.reshape(-1), var, windows=len(x))

    def shift(self) -> float:
        """Mean over channels of |mean - source mean| / source std, for the stream so far."""
        shift = np.abs(self.moments.mean - self.source_mean) / self._source_std
        return float(np.add.reduce(shift) / len(shift))

    def spread(self) -> float:
        """Mean over channels of |log(var / source var)|, for the stream so far."""
        spread = np.abs(np.log(np.maximum(self.moments.var, 1e-12) / self.source_var))
        return float(np.add.reduce(spread) / len(spread))

    def distance(self) -> float:
        """How far the stream is, in gate thresholds: the larger of shift / max_shift and
        spread / max_spread (1: at the threshold; a zero threshold makes any shift infinite)."""
        return max(_ratio(self.shift(), self.max_shift), _ratio(self.spread(), self.max_spread))

    @property
    def open(self) -> bool:
        return self.distance() > OPEN_AT


def fade(distance: float, start: float, end: float) -> float:
    """0 while `distance` is at most `start`, 1 from `end` on (and past `start`), linear in
    between: how far past a threshold a stream is, for what should fade as it goes.

    >>> fade(1.5, 1.0, 2.0), fade(1.5, 2.0, 3.0), fade(1.5, 0.5, 0.5), fade(0.0, 0.0, 0.0)
    (0.5, 0.0, 1.0, 0.0)
    """
    if distance <= start:
        return 0.0
    return 1.0 if distance >= end else (distance - start) / (end - start)


def _ratio(value: float, threshold: float) -> float:
    if threshold > 0.0:
        return value / threshold
    return math.inf if value > 0.0 else 0.0
