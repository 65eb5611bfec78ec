"""The self-supervised task's transformations of a sensor window: what the auxiliary head predicts.

One definition for both sides: export trains the auxiliary head on them, the device builds its
own labeled copies with them at test time. Pure numpy; every transformation only permutes
samples or channels and flips signs, so it is exact in float32 and the label of a transformed
copy is known by construction.

The set (label order, written to the manifest): for every x/y/z triad of channels (accelerometer
and gyroscope turned together, as when the sensor sits differently on the wrist)

0. `identity`
1. `time_reversal`: the window played backwards (all channels; the gyroscope is *not* negated, so
   a reversed window is also recognisable from accelerometer-gyroscope inconsistency);
2. `rotate_z_180`: x, y -> -x, -y (a half turn about z; a proper rotation, handedness kept);
3. `rotate_x_180`: y, z -> -y, -z;
4. `cycle_axes`: x, y, z -> z, x, y (a 120-degree turn about the x = y = z diagonal).

Why these: gravity gives every accelerometer window an orientation, and arm movements are not
time-symmetric, so each copy is recognisable from the window alone. What is left out, and why:
amplitude scaling and offsets are the `gain`, `bias` and `drift` corruptions themselves (the task
would then teach the head to call a corrupted window "scaled" instead of telling the encoder
something about it); noise, clipping and dropout are corruptions too. The `rotation` corruption
turns by at most 50 degrees about a random axis, far from the half and third turns used here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Transform = Callable[[np.ndarray, list[tuple[int, int, int]]], np.ndarray]


def triads(channels: Sequence[str]) -> list[tuple[int, int, int]]:
    """Indices of every (<p>x, <p>y, <p>z) channel triple, ordered by the x channel's position."""
    index = {name: i for i, name in enumerate(channels)}
    found = []
    for name in channels:
        if name.endswith("x"):
            members = [name[:-1] + axis for axis in "xyz"]
            if all(m in index for m in members):
                found.append((index[members[0]], index[members[1]], index[members[2]]))
    return found


def _axes(signs: tuple[float, float, float], order: tuple[int, int, int]) -> Transform:
    """New axis k of every triad = signs[k] * old axis order[k]."""

    def apply(x: np.ndarray, groups: list[tuple[int, int, int]]) -> np.ndarray:
        out = x.copy()
        for group in groups:
            for k, target in enumerate(group):
                out[:, target] = signs[k] * x[:, group[order[k]]]
        return out

    return apply


def _identity(x: np.ndarray, groups: list[tuple[int, int, int]]) -> np.ndarray:
    return x.copy()


def _time_reversal(x: np.ndarray, groups: list[tuple[int, int, int]]) -> np.ndarray:
    return x[:, :, ::-1].copy()


TRANSFORMS: dict[str, Transform] = {
    "identity": _identity,
    "time_reversal": _time_reversal,
    "rotate_z_180": _axes((-1.0, -1.0, 1.0), (0, 1, 2)),
    "rotate_x_180": _axes((1.0, -1.0, -1.0), (0, 1, 2)),
    "cycle_axes": _axes((1.0, 1.0, 1.0), (2, 0, 1)),
}


def check_channels(channels: Sequence[str]) -> list[tuple[int, int, int]]:
    """The triads the rotations act on; refuses channels without any (they would be identities)."""
    groups = triads(channels)
    if not groups:
        raise ValueError(
            f"the auxiliary transformations need x/y/z channel triads (e.g. ax, ay, az); "
            f"channels are {tuple(channels)}"
        )
    return groups


def transformed_copies(
    x: np.ndarray, channels: Sequence[str], names: Sequence[str] = tuple(TRANSFORMS)
) -> tuple[np.ndarray, np.ndarray]:
    """Every transformation of every window of x [n, C, L]: copies [n * K, C, L] window-major
    (window i's copies are rows i*K .. i*K + K-1) and their labels [n * K] (index into `names`)."""
    groups = check_channels(channels)
    x = np.asarray(x, np.float32)
    stacked = np.stack([TRANSFORMS[name](x, groups) for name in names], axis=1)  # [n, K, C, L]
    labels = np.tile(np.arange(len(names), dtype=np.int64), len(x))
    return stacked.reshape(len(x) * len(names), *x.shape[1:]), labels


def transform_each(
    x: np.ndarray, labels: np.ndarray, channels: Sequence[str], names: Sequence[str] = tuple(TRANSFORMS)
) -> np.ndarray:
    """Window i transformed by names[labels[i]]: one copy per window (source training draws labels)."""
    groups = check_channels(channels)
    out = np.empty_like(np.asarray(x, np.float32))
    for k, name in enumerate(names):
        rows = labels == k
        if rows.any():
            out[rows] = TRANSFORMS[name](np.asarray(x[rows], np.float32), groups)
    return out
