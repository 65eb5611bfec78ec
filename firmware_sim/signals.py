"""Signal sources for simulated devices: a synthetic 6-axis IMU, or the samples of a recorded log.

A source hands out consecutive samples, `read(n)` at a time, as float64 [n, C]. The IMU model is
a function of the absolute sample index plus a noise stream drawn in order, so reading 10 + 10
samples gives exactly what reading 20 does: scenarios and tests can rely on chunking not mattering.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import numpy as np

__all__ = ["ACTIVITIES", "IMU_CHANNELS", "ImuSource", "LogSource", "Source"]

IMU_CHANNELS = ("ax", "ay", "az", "wx", "wy", "wz")  # m/s^2 and rad/s
GRAVITY = 9.81
ACCEL_NOISE = 0.05  # m/s^2, std of a consumer MEMS accelerometer at 50 Hz
GYRO_NOISE = 0.01  # rad/s
# Each activity: (tilt of gravity in degrees about x, motion frequency Hz, accel amplitude m/s^2,
# gyro amplitude rad/s). Rest is still; walking and running bounce vertically at the step rate and
# swing the wrist; arm circles spin the acceleration in the x-y plane with a steady z rotation.
ACTIVITIES: dict[str, tuple[float, float, float, float]] = {
    "rest": (0.0, 0.0, 0.0, 0.0),
    "walking": (20.0, 1.8, 2.5, 1.2),
    "running": (35.0, 2.8, 7.0, 3.0),
    "arm-circles": (70.0, 1.0, 4.0, 2.5),
}


class Source(Protocol):
    channels: tuple[str, ...]

    def read(self, n: int) -> np.ndarray:
        """The next n samples, float64 [n, C]."""
        ...


class ImuSource:
    """A wrist IMU whose wearer changes activity every `segment_s` seconds (labels = ACTIVITIES order)."""

    channels = IMU_CHANNELS

    def __init__(self, rate_hz: float, seed: int = 0, device: str = "", segment_s: float = 10.0) -> None:
        self.rate_hz = rate_hz
        self.segment = max(1, round(segment_s * rate_hz))
        self._key = [seed, zlib.crc32(device.encode())]
        self._noise = np.random.default_rng([*self._key, 0])
        self._index = 0

    def activity(self, segment: int) -> int:
        """Index into ACTIVITIES of the wearer's activity in segment `segment` (random, reproducible)."""
        return int(np.random.default_rng([*self._key, 1, segment]).integers(len(ACTIVITIES)))

    def read(self, n: int) -> np.ndarray:
        index = self._index + np.arange(n)
        self._index += n
        t = index / self.rate_hz
        first, last = index[0] // self.segment, index[-1] // self.segment
        kinds = np.array([self.activity(s) for s in range(first, last + 1)])
        params = np.array(list(ACTIVITIES.values()))[kinds[index // self.segment - first]]
        tilt, freq, acc, gyro = (np.deg2rad(params[:, 0]), params[:, 1], params[:, 2], params[:, 3])
        phase = 2 * np.pi * freq * t
        out = np.empty((n, 6))
        out[:, 0] = acc * 0.4 * np.sin(phase) + 0.1 * acc * np.sin(2 * phase)
        out[:, 1] = GRAVITY * np.sin(tilt) + acc * 0.3 * np.cos(phase)
        out[:, 2] = GRAVITY * np.cos(tilt) + acc * np.abs(np.sin(phase))
        out[:, 3] = gyro * np.sin(phase)
        out[:, 4] = 0.5 * gyro * np.cos(phase)
        out[:, 5] = gyro * (0.3 + 0.2 * np.sin(2 * phase))
        scale = np.array([ACCEL_NOISE] * 3 + [GYRO_NOISE] * 3)
        return out + self._noise.standard_normal((n, 6)) * scale


class LogSource:
    """One device's recorded samples, looped: a log of any length can drive a run of any length."""

    def __init__(self, values: np.ndarray, channels: tuple[str, ...]) -> None:
        if not len(values):
            raise ValueError("a log source needs at least one sample")
        self.values = np.asarray(values, dtype=np.float64)
        self.channels = channels
        self._index = 0

    def read(self, n: int) -> np.ndarray:
        rows = (self._index + np.arange(n)) % len(self.values)
        self._index += n
        return self.values[rows]
