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

import dataclasses
import zlib

import numpy as np

from edge_ttt.adapt.transforms import triads
from edge_ttt.recordlog import RecordedLog
from firmware_sim.deployment_shifts import DEPLOYMENT_SHIFTS
from firmware_sim.signal import Corruption, Signal, finite_moments, random_signs

__all__ = [
    "CORRUPTIONS",
    "DEPLOYMENT_SHIFTS",
    "SEVERITIES",
    "SHIFTS",
    "Corruption",
    "Signal",
    "corrupt",
    "corrupt_log",
    "triads",
]

SEVERITIES = (1, 2, 3, 4, 5)
# Missed reads come in bursts (a busy bus misses several in a row): mean burst length, samples.
DROPOUT_MEAN_BURST = 5.0


def _clean(s: Signal, level: None) -> np.ndarray:
    return s.values


def _gain(s: Signal, factor: float) -> np.ndarray:
    return s.values * factor


def _bias(s: Signal, k: float) -> np.ndarray:
    return s.values + random_signs(s) * k * s.scale


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
    return s.values * (1.0 + (gain - 1.0) * ramp) + ramp * (random_signs(s) * k * s.scale)


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


SHIFTS: dict[str, Corruption] = {**CORRUPTIONS, **DEPLOYMENT_SHIFTS}


def _apply(
    name: str,
    values: np.ndarray,
    channels: tuple[str, ...],
    scale: np.ndarray,
    severity: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The shifted samples (float32) and, for a shift that resamples, each one's input position."""
    if name not in SHIFTS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(SHIFTS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    channels = tuple(channels)
    values = np.array(values, dtype=np.float64)  # a copy: corruptions may work in place
    if values.ndim != 2 or values.shape[1] != len(channels):
        raise ValueError(f"values must have shape (n, {len(channels)}), got {values.shape}")
    scale = np.asarray(scale, np.float64)
    if scale.shape != (len(channels),):
        raise ValueError(f"scale must have shape ({len(channels)},), got {scale.shape}")
    entry = SHIFTS[name]
    level = entry.levels[severity - 1]
    if entry.resample is None:
        return entry.apply(Signal(values, channels, scale, rng), level).astype(np.float32), None
    positions = entry.resample(len(values), level, rng)
    index = np.arange(len(values))
    out = np.stack([np.interp(positions, index, values[:, c]) for c in range(len(channels))], axis=1)
    return out.reshape(len(positions), len(channels)).astype(np.float32), positions


def corrupt(
    name: str,
    values: np.ndarray,
    channels: tuple[str, ...],
    scale: np.ndarray,
    severity: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply shift `name` (a corruption or a deployment shift) at `severity` to one device's
    samples [n, C] in time order.

    Returns a new float32 array (of another length for a shift that resamples, `rate`);
    `values` is left untouched.
    """
    return _apply(name, values, channels, scale, severity, rng)[0]


def device_rng(seed: int, device: str) -> np.random.Generator:
    """A device's own generator: a device gets the same draws whichever other devices a log holds."""
    return np.random.default_rng([seed, zlib.crc32(device.encode())])


def corrupt_log(
    log: RecordedLog, name: str, severity: int, seed: int, same_for_all_devices: bool = False
) -> RecordedLog:
    """Corrupt each device's samples independently, in time order; ids, times and labels are kept
    (a shift that resamples keeps each device's first time and the log's nominal rate, and takes
    each sample's label from the nearest input sample).

    `scale` is the per-channel std of the log's finite values, computed once for the whole log.
    By default every device draws its own random parameters (bias signs, rotation axis), as
    devices that each developed a fault of their own. With `same_for_all_devices` every device
    gets the same generator, hence the same fault: a fleet-wide change (a firmware update, a new
    mounting bracket), and the case where mixing windows of several devices still shows one shift.
    """
    _, scale = finite_moments(log.values.astype(np.float64))
    values = np.empty_like(log.values)
    parts: dict[str, list[np.ndarray]] = {"device_id": [], "t_ns": [], "values": [], "label": []}
    period_ns = 1e9 / log.sample_rate_hz
    for device in log.devices():
        rows = np.flatnonzero(log.device_id == device)
        rows = rows[np.argsort(log.t_ns[rows], kind="stable")]
        rng = device_rng(seed, "" if same_for_all_devices else device)
        shifted, positions = _apply(name, log.values[rows], log.channels, scale, severity, rng)
        if positions is None:  # in place: the log's rows keep their order
            values[rows] = shifted
            continue
        taken = rows[np.minimum(np.round(positions).astype(np.int64), len(rows) - 1)]
        parts["device_id"].append(log.device_id[taken])
        parts["t_ns"].append(
            log.t_ns[rows[0]] + np.round(np.arange(len(shifted)) * period_ns).astype(np.int64)
        )
        parts["values"].append(shifted)
        if log.label is not None:
            parts["label"].append(log.label[taken])
    if not parts["values"]:
        return dataclasses.replace(log, values=values)
    return RecordedLog(
        device_id=np.concatenate(parts["device_id"]),
        t_ns=np.concatenate(parts["t_ns"]),
        values=np.concatenate(parts["values"]),
        label=None if log.label is None else np.concatenate(parts["label"]),
        channels=log.channels,
        sample_rate_hz=log.sample_rate_hz,
        class_names=log.class_names,
    )
