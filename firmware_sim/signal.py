"""What every sensor shift works on: one device's samples and the shift's description.

Shared by the corruption suite (`firmware_sim.corruptions`) and the deployment shifts
(`firmware_sim.deployment_shifts`), which both register `Shift`s applied by `corrupt`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Signal:
    """One device's samples in time order, plus what a shift may need to know about them."""

    values: np.ndarray  # float64 [n, C], a private copy
    channels: tuple[str, ...]
    scale: np.ndarray  # float64 [C], the clean data's per-channel std
    rng: np.random.Generator


@dataclass(frozen=True)
class Corruption:
    """One shift: what its level means, the level per severity 1..5, and how to apply a level.

    `apply` returns the new samples, one per input sample. A shift that changes the timing
    (`resample` set) instead says where each output sample falls in the input, as fractional
    sample positions; the values are interpolated there and the labels taken from the nearest
    input sample, so the output may have another length.
    """

    parameter: str
    levels: tuple[Any, ...]
    apply: Callable[[Signal, Any], np.ndarray]
    resample: Callable[[int, Any, np.random.Generator], np.ndarray] | None = None


def finite_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the finite values (0 for a channel without any)."""
    ok = np.isfinite(values)
    count = np.maximum(ok.sum(axis=0), 1)
    mean = np.where(ok, values, 0.0).sum(axis=0) / count
    var = (np.where(ok, values - mean, 0.0) ** 2).sum(axis=0) / count
    return mean, np.sqrt(var)


def random_signs(s: Signal) -> np.ndarray:
    """A random sign per channel."""
    return s.rng.choice(np.array([-1.0, 1.0]), size=len(s.channels))
