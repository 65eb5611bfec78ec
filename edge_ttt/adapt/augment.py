"""Strong augmentation of sensor windows: the student's view in RoTTA's teacher-student update.

RoTTA perturbs images (colour jitter, affine, blur, noise); a wearable's windows get the
augmentations the wearable-sensor literature uses (Um et al., ICMI 2017): scaling, jitter and
rotation, plus a constant offset. Each window draws its own: a gain per channel (log-normal), an
offset and white noise per channel in units of the channel's spread, and one rotation of every
x/y/z triad by a random angle about a random axis (the sensor turned a little on the wrist).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Strength:
    """How strongly to perturb; chosen as mild versions of the corruptions, not tuned."""

    gain: float = 0.1  # standard deviation of the log gain, per channel
    offset: float = 0.1  # standard deviation of the offset, in channel spreads
    jitter: float = 0.05  # standard deviation of the white noise, in channel spreads
    degrees: float = 15.0  # largest rotation angle


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """The 3x3 rotation by `angle` radians about `axis` (Rodrigues' formula).

    >>> rotation(np.array([0.0, 0.0, 1.0]), np.pi / 2).round(6).tolist()
    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    k = axis / np.linalg.norm(axis)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def strong_augment(
    x: np.ndarray,
    spread: np.ndarray,
    triads: Sequence[tuple[int, int, int]],
    rng: np.random.Generator,
    strength: Strength = Strength(),
) -> np.ndarray:
    """Perturbed copies of windows `x` ([n, channels, length], raw units) as float32; `spread` is
    each channel's scale (the manifest's standardization std).

    >>> x = np.ones((2, 3, 4), np.float32)
    >>> y = strong_augment(x, np.ones(3), [(0, 1, 2)], np.random.default_rng(0))
    >>> y.shape, bool(np.abs(y - x).max() > 0), bool(np.abs(y - x).max() < 2)
    ((2, 3, 4), True, True)
    """
    n, channels, length = x.shape
    scale = np.asarray(spread, np.float64)[None, :, None]
    out = x * np.exp(rng.normal(0.0, strength.gain, (n, channels, 1)))
    out = out + rng.normal(0.0, strength.offset, (n, channels, 1)) * scale
    out = out + rng.normal(0.0, strength.jitter, (n, channels, length)) * scale
    for i in range(n):
        turn = rotation(rng.normal(size=3), np.radians(rng.uniform(0.0, strength.degrees)))
        for triad in triads:
            out[i, list(triad)] = turn @ out[i, list(triad)]
    return out.astype(np.float32)
