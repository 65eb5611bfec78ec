"""Deployment shifts: what happens to a sensor between the lab and the field, beyond faults.

A device mounted another way, axes that leak into each other, one sensor reporting in the wrong
unit, a clock that runs at another rate, a bias that wanders with temperature, the watch on the
other wrist. Same contract as the corruption suite (`firmware_sim.corruptions`), severities 1-5:

- `mount`: every triad turned by 90° z, 90° x, 180° z, 180° x (upside down), 90° z then 90° y.
- `coupling`: cross-axis mixing I + k·M in units of scale, M ~ N(0, 1/C); k = 0.1 ... 0.5.
- `unit`: the last triad (the gyroscope) times 1.5, 2, 4, 57.3 (degrees for radians), 100.
- `rate`: the clock 1.1, 1.2, 1.3, 1.5, 2 times fast or slow (a coin flip per device).
- `creep`: a bias random walk whose std at the end is 0.5 ... 2.5 scale.
- `wrist`: the other wrist (one level).

docs/corruptions.md has the same table.

Triads are found by name (`ax, ay, az`, ...). `wrist` mirrors across the y-z plane: the first triad
(the accelerometer, a polar vector) has x negated, the others (angular rates, axial vectors) y
and z negated. Pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.transforms import triads
from firmware_sim.signal import Corruption, Signal

_RZ90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
_RX90 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
_RY90 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
MOUNTINGS: dict[str, np.ndarray] = {
    "90° z": _RZ90,
    "90° x": _RX90,
    "180° z": np.diag([-1.0, -1.0, 1.0]),
    "180° x (upside down)": np.diag([1.0, -1.0, -1.0]),
    "90° z, then 90° y": _RY90 @ _RZ90,
}


def _triads(s: Signal, shift: str) -> list[tuple[int, int, int]]:
    groups = triads(s.channels)
    if not groups:
        raise ValueError(f"{shift} needs x/y/z channel triads (e.g. ax, ay, az); channels are {s.channels}")
    return groups


def _mount(s: Signal, mounting: str) -> np.ndarray:
    matrix = MOUNTINGS[mounting]
    out = s.values.copy()
    for group in _triads(s, "mount"):
        out[:, group] = s.values[:, group] @ matrix.T
    return out


def _coupling(s: Signal, k: float) -> np.ndarray:
    """Mixing in units of each channel's scale, so a gyroscope leaks into an accelerometer as
    much, relative to their spreads, as the other way round."""
    c = len(s.channels)
    mixing = np.eye(c) + k * s.rng.standard_normal((c, c)) / np.sqrt(c)
    scale = np.where(s.scale > 0, s.scale, 1.0)
    return ((s.values / scale) @ mixing.T) * scale


def _unit(s: Signal, factor: float) -> np.ndarray:
    out = s.values.copy()
    out[:, list(_triads(s, "unit")[-1])] *= factor
    return out


def _rate_positions(n: int, factor: float, rng: np.random.Generator) -> np.ndarray:
    """A clock `factor` fast (or slow, by a coin flip): output sample j shows the motion at input
    position j / factor, so a window spans less (more) motion than the model was trained on."""
    f = factor if rng.random() < 0.5 else 1.0 / factor
    return np.arange(int((n - 1) * f) + 1) / f


def _creep(s: Signal, k: float) -> np.ndarray:
    """A walk from zero at the first sample (as `drift` ramps from none) to std k·scale at the last."""
    n = len(s.values)
    steps = s.rng.standard_normal(s.values.shape) * (k * s.scale / np.sqrt(max(n - 1, 1)))
    steps[0] = 0.0
    return s.values + np.cumsum(steps, axis=0)


def _wrist(s: Signal, level: None) -> np.ndarray:
    out = s.values.copy()
    for i, group in enumerate(_triads(s, "wrist")):
        flipped = [group[0]] if i == 0 else [group[1], group[2]]
        out[:, flipped] = -out[:, flipped]
    return out


DEPLOYMENT_SHIFTS: dict[str, Corruption] = {
    "mount": Corruption("every triad turned by", tuple(MOUNTINGS), _mount),
    "coupling": Corruption("cross-axis mixing I + k·M, M ~ N(0, 1/C)", (0.1, 0.2, 0.3, 0.4, 0.5), _coupling),
    "unit": Corruption("factor on the last triad (gyroscope)", (1.5, 2.0, 4.0, 57.3, 100.0), _unit),
    "rate": Corruption(
        "clock factor, faster or slower (random)", (1.1, 1.2, 1.3, 1.5, 2.0), None, _rate_positions
    ),
    "creep": Corruption("bias random walk, std / scale at the end", (0.5, 1.0, 1.5, 2.0, 2.5), _creep),
    "wrist": Corruption("mirrored: the other wrist", (None,) * 5, _wrist),
}
