"""Sensor corruptions with severities 1-5: the faults a deployed IMU develops, applied to a recording.

Each corruption takes one device's samples in time order (`values` [n, C]), the channel names,
a per-channel `scale` (the clean data's standard deviation, so that offsets, noise and clip levels
are in units natural to each sensor) and a random generator, and returns a new float32 array.
The parameter per severity level (docs/corruptions.md has the same table):

| name       | level                          | 1        | 2        | 3        | 4        | 5        |
|------------|--------------------------------|----------|----------|----------|----------|----------|
| `clean`    | none (identity)                | -        | -        | -        | -        | -        |
| `gain`     | factor on every channel        | 1.2      | 1.4      | 1.6      | 1.8      | 2.0      |
| `bias`     | offset / scale, random sign    | 0.5      | 1.0      | 1.5      | 2.0      | 2.5      |
| `noise`    | Gaussian std / scale           | 0.2      | 0.4      | 0.6      | 0.8      | 1.0      |
| `rotation` | angle, degrees                 | 10       | 20       | 30       | 40       | 50       |
| `clipping` | k, clip at mean +- k scale     | 3.0      | 2.5      | 2.0      | 1.5      | 1.0      |
| `dropout`  | share held (bursts, mean 5)    | 0.1      | 0.2      | 0.3      | 0.4      | 0.5      |
| `drift`    | gain, bias / scale at the end  | 1.2, 0.5 | 1.4, 1.0 | 1.6, 1.5 | 1.8, 2.0 | 2.0, 2.5 |

Rotation turns every x/y/z triad of channels (found by name: `ax, ay, az`, `wx, wy, wz`, any
common prefix) by one and the same rotation, as a sensor mounted at an angle would; other channels
are untouched. Pure numpy, no I/O, so the firmware simulator's drift scenarios can reuse it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_ttt.adapt.transforms import triads
from edge_ttt.recordlog import RecordedLog

__all__ = ["CORRUPTIONS", "SEVERITIES", "Corruption", "Signal", "corrupt", "corrupt_log", "triads"]

SEVERITIES = (1, 2, 3, 4, 5)
# Missed reads come in bursts (a busy bus misses several in a row): mean burst length, samples.
DROPOUT_MEAN_BURST = 5.0


@dataclass(frozen=True, eq=False)
class Signal:
    """One device's samples in time order, plus what a corruption may need to know about them."""

    values: np.ndarray  # float64 [n, C], a private copy
    channels: tuple[str, ...]
    scale: np.ndarray  # float64 [C], the clean data's per-channel std
    rng: np.random.Generator


@dataclass(frozen=True)
class Corruption:
    """One corruption: what its level means, the level per severity 1..5, and how to apply a level."""

    parameter: str
    levels: tuple[Any, ...]
    apply: Callable[[Signal, Any], np.ndarray]


def finite_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the finite values (0 for a channel without any)."""
    ok = np.isfinite(values)
    count = np.maximum(ok.sum(axis=0), 1)
    mean = np.where(ok, values, 0.0).sum(axis=0) / count
    var = (np.where(ok, values - mean, 0.0) ** 2).sum(axis=0) / count
    return mean, np.sqrt(var)


def _signs(s: Signal) -> np.ndarray:
    return s.rng.choice(np.array([-1.0, 1.0]), size=len(s.channels))


def _clean(s: Signal, level: None) -> np.ndarray:
    return s.values


def _gain(s: Signal, factor: float) -> np.ndarray:
    return s.values * factor


def _bias(s: Signal, k: float) -> np.ndarray:
    return s.values + _signs(s) * k * s.scale


def _noise(s: Signal, k: float) -> np.ndarray:
    return s.values + s.rng.standard_normal(s.values.shape) * (k * s.scale)


def rotation_matrix(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation by `degrees` about `axis` (Rodrigues' formula)."""
    u = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    theta = np.deg2rad(degrees)
    cross = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1.0 - np.cos(theta)) * np.outer(u, u)


def _rotation(s: Signal, degrees: float) -> np.ndarray:
    groups = triads(s.channels)
    if not groups:
        raise ValueError(f"rotation needs x/y/z channel triads (e.g. ax, ay, az); channels are {s.channels}")
    matrix = rotation_matrix(s.rng.standard_normal(3), degrees)  # uniform random axis
    out = s.values.copy()
    for group in groups:
        out[:, group] = s.values[:, group] @ matrix.T
    return out


def _clipping(s: Signal, k: float) -> np.ndarray:
    center, _ = finite_moments(s.values)
    return np.clip(s.values, center - k * s.scale, center + k * s.scale)


def dropout_mask(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Which of n samples the bus misses: alternating read and missed runs of geometric length.

    Missed runs have mean length DROPOUT_MEAN_BURST and read runs DROPOUT_MEAN_BURST * (1 - rate)
    / rate, so the expected missed share is `rate`. The first run is a read run: sample 0 is
    always read, so there is a value to hold.
    """
    mean_read = DROPOUT_MEAN_BURST * (1.0 - rate) / rate
    if mean_read < 1.0:
        raise ValueError(f"dropout rate {rate} leaves read runs shorter than one sample")
    mask = np.zeros(n, dtype=bool)
    pos = int(rng.geometric(1.0 / mean_read))
    while pos < n:
        missed = int(rng.geometric(1.0 / DROPOUT_MEAN_BURST))
        mask[pos : pos + missed] = True
        pos += missed + int(rng.geometric(1.0 / mean_read))
    return mask


def _dropout(s: Signal, rate: float) -> np.ndarray:
    n = len(s.values)
    missed = dropout_mask(n, rate, s.rng)
    last_read = np.maximum.accumulate(np.where(missed, 0, np.arange(n)))
    return s.values[last_read]


def _drift(s: Signal, level: tuple[float, float]) -> np.ndarray:
    gain, k = level
    ramp = np.linspace(0.0, 1.0, len(s.values))[:, None]  # 0 at the first sample, 1 at the last
    return s.values * (1.0 + (gain - 1.0) * ramp) + ramp * (_signs(s) * k * s.scale)


_GAINS = (1.2, 1.4, 1.6, 1.8, 2.0)
_BIASES = (0.5, 1.0, 1.5, 2.0, 2.5)

CORRUPTIONS: dict[str, Corruption] = {
    "clean": Corruption("none (identity)", (None,) * len(SEVERITIES), _clean),
    "gain": Corruption("factor on every channel", _GAINS, _gain),
    "bias": Corruption("offset / scale, random sign", _BIASES, _bias),
    "noise": Corruption("Gaussian std / scale", (0.2, 0.4, 0.6, 0.8, 1.0), _noise),
    "rotation": Corruption("angle, degrees", (10, 20, 30, 40, 50), _rotation),
    "clipping": Corruption("k, clip at mean +- k scale", (3.0, 2.5, 2.0, 1.5, 1.0), _clipping),
    "dropout": Corruption(
        f"share held (bursts, mean {DROPOUT_MEAN_BURST:g})", (0.1, 0.2, 0.3, 0.4, 0.5), _dropout
    ),
    "drift": Corruption("gain, bias / scale at the end", tuple(zip(_GAINS, _BIASES, strict=True)), _drift),
}


def corrupt(
    name: str,
    values: np.ndarray,
    channels: tuple[str, ...],
    scale: np.ndarray,
    severity: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply corruption `name` at `severity` to one device's samples [n, C] in time order.

    Returns a new float32 array; `values` is left untouched.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    channels = tuple(channels)
    values = np.array(values, dtype=np.float64)  # a copy: corruptions may work in place
    if values.ndim != 2 or values.shape[1] != len(channels):
        raise ValueError(f"values must have shape (n, {len(channels)}), got {values.shape}")
    scale = np.asarray(scale, np.float64)
    if scale.shape != (len(channels),):
        raise ValueError(f"scale must have shape ({len(channels)},), got {scale.shape}")
    entry = CORRUPTIONS[name]
    out = entry.apply(Signal(values, channels, scale, rng), entry.levels[severity - 1])
    return out.astype(np.float32)


def device_rng(seed: int, device: str) -> np.random.Generator:
    """A device's own generator: a device gets the same draws whichever other devices a log holds."""
    return np.random.default_rng([seed, zlib.crc32(device.encode())])


def corrupt_log(
    log: RecordedLog, name: str, severity: int, seed: int, same_for_all_devices: bool = False
) -> RecordedLog:
    """Corrupt each device's samples independently, in time order; ids, times and labels are kept.

    `scale` is the per-channel std of the log's finite values, computed once for the whole log.
    By default every device draws its own random parameters (bias signs, rotation axis), as
    devices that each developed a fault of their own. With `same_for_all_devices` every device
    gets the same generator, hence the same fault: a fleet-wide change (a firmware update, a new
    mounting bracket), and the case where mixing windows of several devices still shows one shift.
    """
    _, scale = finite_moments(log.values.astype(np.float64))
    values = np.empty_like(log.values)
    for device in log.devices():
        rows = np.flatnonzero(log.device_id == device)
        rows = rows[np.argsort(log.t_ns[rows], kind="stable")]
        values[rows] = corrupt(
            name,
            log.values[rows],
            log.channels,
            scale,
            severity,
            device_rng(seed, "" if same_for_all_devices else device),
        )
    return RecordedLog(
        device_id=log.device_id,
        t_ns=log.t_ns,
        values=values,
        label=log.label,
        channels=log.channels,
        sample_rate_hz=log.sample_rate_hz,
        class_names=log.class_names,
    )
