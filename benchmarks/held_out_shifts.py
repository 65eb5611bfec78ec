"""The sensor shifts that no benchmark table was tuned on (`benchmarks.unseen_shifts` compares the
policies on them, `benchmarks.unseen_estimates` the label-free estimates): each maps one device's
samples in time order to shifted ones, applied to every target device's whole recording; and the
scaffolding both benchmarks share (the shifted logs for `edge-ttt replay`, one command per table)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.adaptation.models import prepare_models
from benchmarks.harness import one_model_args, write_json
from edge_ttt.recordlog import RecordedLog, write_log
from firmware_sim.datasets.watch import watch_logs
from firmware_sim.signal import finite_moments

SEED = 7


@dataclass(frozen=True)
class Sensors:
    """What a shift may need besides one device's samples: the channel indices of each sensor
    triad ({"a": [0, 1, 2], "w": [3, 4, 5]}), the log's per-channel std, the sample rate, and
    the generator random shifts draw from."""

    triads: dict[str, list[int]]
    scale: np.ndarray
    rate: float
    rng: np.random.Generator


# A shift maps one device's samples [n, C] (float64, time order) to shifted ones.
Shift = Callable[[np.ndarray, Sensors], np.ndarray]
Run = Callable[[Path, RecordedLog, list[str]], list[dict]]  # a benchmark's rows over the shifts
Markdown = Callable[[list[dict], dict, str], str]  # its table from the rows, the run's meta, the model


def triads(channels: tuple[str, ...]) -> dict[str, list[int]]:
    """Channel indices per sensor, from names that end in the axis (`ax`, `ay`, `az`, `wx`, ...).

    >>> triads(("ax", "ay", "az", "wx", "wy", "wz"))
    {'a': [0, 1, 2], 'w': [3, 4, 5]}
    """
    out: dict[str, list[int]] = {}
    for i, name in enumerate(channels):
        if len(name) < 2 or name[-1] not in "xyz":
            raise ValueError(f"channel {name!r} does not name a sensor axis (x, y or z last)")
        out.setdefault(name[:-1], []).append(i)
    if any(len(axes) != 3 for axes in out.values()):
        raise ValueError(f"channels {list(channels)} are not whole x, y, z triads")
    return out


def _scaled(factors: dict[str, float]) -> Shift:
    """Every channel of each named sensor times its factor (the others unchanged)."""

    def apply(v: np.ndarray, s: Sensors) -> np.ndarray:
        out = v.copy()
        for sensor, factor in factors.items():
            out[:, s.triads[sensor]] *= factor
        return out

    return apply


def _permuted(order: list[int], signs: list[float]) -> Shift:
    """Within every triad, axis i reads axis order[i] times signs[i] (a mounting or wiring change)."""

    def apply(v: np.ndarray, s: Sensors) -> np.ndarray:
        out = v.copy()
        for axes in s.triads.values():
            out[:, axes] = v[:, [axes[k] for k in order]] * np.asarray(signs)
        return out

    return apply


def _sensors_swapped(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The two sensors' streams exchanged (a wiring or firmware mix-up)."""
    first, second = s.triads.values()
    out = v.copy()
    out[:, first], out[:, second] = v[:, second], v[:, first]
    return out


def _gyro_offset(stds: float) -> Shift:
    """A constant offset of `stds` source stds on every gyroscope axis (an uncalibrated gyroscope)."""

    def apply(v: np.ndarray, s: Sensors) -> np.ndarray:
        out = v.copy()
        out[:, s.triads["w"]] += stds * s.scale[s.triads["w"]]
        return out

    return apply


def _accel_z_offset(v: np.ndarray, s: Sensors) -> np.ndarray:
    """An offset of 2 source stds on the accelerometer's z axis alone (one axis miscalibrated)."""
    out = v.copy()
    z = s.triads["a"][2]
    out[:, z] += 2.0 * s.scale[z]
    return out


def _gyro_late(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The gyroscope 10 samples behind the accelerometer (sensors read by unsynchronised firmware),
    its first 10 samples held at its first reading."""
    out = v.copy()
    w = s.triads["w"]
    out[10:, w] = v[:-10, w]
    out[:10, w] = v[0, w]
    return out


def _gain_wave(v: np.ndarray, s: Sensors) -> np.ndarray:
    """Every channel's gain swinging between x0.6 and x1.6 with a 2-minute period (an amplifier
    that drifts with temperature)."""
    t = np.arange(len(v)) / s.rate
    low, high = np.log(0.6), np.log(1.6)
    gain = np.exp((low + high) / 2 + (high - low) / 2 * np.sin(2 * np.pi * t / 120.0))
    return v * gain[:, None]


def _noise_everywhere(v: np.ndarray, s: Sensors) -> np.ndarray:
    """White noise of one source std on every channel."""
    return v + s.rng.normal(0.0, 1.0, v.shape) * s.scale


def _saturated(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The accelerometer clipped one source std either side of its mean (a range set too small)."""
    out = v.copy()
    a = s.triads["a"]
    mean = v[:, a].mean(axis=0)
    out[:, a] = np.clip(v[:, a], mean - s.scale[a], mean + s.scale[a])
    return out


def _repeated_blocks(v: np.ndarray, s: Sensors) -> np.ndarray:
    """A fifth of the blocks of 25 samples replaced by the block before (firmware that sends its
    last buffer again)."""
    out = v.copy()
    for block in np.flatnonzero(s.rng.random(len(v) // 25) < 0.2):
        if block > 0:
            out[block * 25 : (block + 1) * 25] = out[(block - 1) * 25 : block * 25]
    return out


def _low_pass(v: np.ndarray, s: Sensors) -> np.ndarray:
    """A moving average over 7 samples (a firmware filter that was not there in training)."""
    kernel = np.ones(7) / 7
    return np.stack([np.convolve(v[:, c], kernel, mode="same") for c in range(v.shape[1])], axis=1)


def _held(v: np.ndarray, s: Sensors) -> np.ndarray:
    """Each sample repeated three times (a sensor read at a third of the rate, sample-and-hold)."""
    return v[(np.arange(len(v)) // 3) * 3]


def _quantized(v: np.ndarray, s: Sensors) -> np.ndarray:
    """Readings rounded to steps of half a source std (a coarse ADC)."""
    step = 0.5 * s.scale
    return np.round(v / step) * step


def _vibration(v: np.ndarray, s: Sensors) -> np.ndarray:
    """A 17 Hz vibration of 0.6 source std on the accelerometer (a motor nearby)."""
    out = v.copy()
    wave = np.sin(2 * np.pi * 17.0 * np.arange(len(v)) / s.rate)
    out[:, s.triads["a"]] += np.outer(wave, 0.6 * s.scale[s.triads["a"]])
    return out


def _spikes(v: np.ndarray, s: Sensors) -> np.ndarray:
    """1 % of samples hit by a spike of 8 source stds (electrical glitches)."""
    hit = s.rng.random(v.shape) < 0.01
    return v + hit * s.rng.normal(0.0, 8.0, v.shape) * s.scale


def _gyro_noise(v: np.ndarray, s: Sensors) -> np.ndarray:
    """White noise of 1.5 source std on the gyroscope only."""
    out = v.copy()
    out[:, s.triads["w"]] += s.rng.normal(0.0, 1.5, (len(v), 3)) * s.scale[s.triads["w"]]
    return out


def _dead_axis(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The gyroscope's z axis reads zero (a dead axis)."""
    out = v.copy()
    out[:, s.triads["w"][2]] = 0.0
    return out


def _axis_negated(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The accelerometer's y axis negated alone (a sign error in one axis: a mirror, no rotation
    undoes it)."""
    out = v.copy()
    out[:, s.triads["a"][1]] *= -1.0
    return out


def _axis_gain(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The accelerometer's y axis alone amplified three times (one axis's own gain)."""
    out = v.copy()
    out[:, s.triads["a"][1]] *= 3.0
    return out


def _crossed_axes(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The x axes of the two sensors exchanged (one crossed wire)."""
    out = v.copy()
    a, w = s.triads["a"][0], s.triads["w"][0]
    out[:, a], out[:, w] = v[:, w], v[:, a]
    return out


def _random_gains(v: np.ndarray, s: Sensors) -> np.ndarray:
    """Every channel its own gain, log-uniform from x0.5 to x2 (uncalibrated parts)."""
    return v * np.exp(s.rng.uniform(np.log(0.5), np.log(2.0), v.shape[1]))


def _turned_in_plane(v: np.ndarray, s: Sensors, a: int, b: int, angle: np.ndarray | float) -> np.ndarray:
    """Every triad turned by `angle` (radians; one per sample, or one for all) in the plane of its
    axes `a` and `b`, from a towards b."""
    out = v.copy()
    c, si = np.cos(angle), np.sin(angle)
    for axes in s.triads.values():
        x, y = v[:, axes[a]], v[:, axes[b]]
        out[:, axes[a]], out[:, axes[b]] = c * x - si * y, si * x + c * y
    return out


def _slipping(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The orientation turning about z from 0 to 90 degrees over the recording (a strap slipping)."""
    return _turned_in_plane(v, s, 0, 1, np.linspace(0.0, np.pi / 2, len(v)))


def _clipped_2g(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The accelerometer clipped at +-2 g (a cheap part's range)."""
    out = v.copy()
    out[:, s.triads["a"]] = np.clip(v[:, s.triads["a"]], -2.0, 2.0)
    return out


def _noise_2std(v: np.ndarray, s: Sensors) -> np.ndarray:
    """White noise of two source stds on every channel."""
    return v + s.rng.normal(0.0, 2.0, v.shape) * s.scale


def _tilt_gain_noise(v: np.ndarray, s: Sensors) -> np.ndarray:
    """Three faults at once: turned 30 degrees about y, a gain of 1.5, noise of 0.3 source std."""
    turned = _turned_in_plane(v, s, 0, 2, np.radians(30.0))
    return turned * 1.5 + s.rng.normal(0.0, 0.3, v.shape) * s.scale


def _gyro_dead(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The whole gyroscope reads zero (a sensor that never started)."""
    out = v.copy()
    out[:, s.triads["w"]] = 0.0
    return out


def _accel_stuck(v: np.ndarray, s: Sensors) -> np.ndarray:
    """The accelerometer holding its first reading (a hung sensor)."""
    out = v.copy()
    out[:, s.triads["a"]] = v[:1, s.triads["a"]]
    return out


SHIFTS: dict[str, Shift] = {
    "attenuated x0.5": _scaled({"a": 0.5, "w": 0.5}),
    "attenuated x0.3": _scaled({"a": 0.3, "w": 0.3}),
    "accelerometer in m/s2": _scaled({"a": 9.81}),
    "accelerometer gain x2.5": _scaled({"a": 2.5}),
    "gyroscope offset 1 std": _gyro_offset(1.0),
    "gyroscope offset 3 std": _gyro_offset(3.0),
    "accelerometer z offset 2 std": _accel_z_offset,
    "accelerometer in mg": _scaled({"a": 1000.0}),
    "gain swinging x0.6 to x1.6": _gain_wave,
    "x and y swapped": _permuted([1, 0, 2], [1.0, 1.0, 1.0]),
    "turned 90 deg about z": _permuted([1, 0, 2], [-1.0, 1.0, 1.0]),
    "x mirrored": _permuted([0, 1, 2], [-1.0, 1.0, 1.0]),
    "upside down": _permuted([0, 1, 2], [1.0, -1.0, -1.0]),
    "gyroscope sign": _scaled({"w": -1.0}),
    "sensors swapped": _sensors_swapped,
    "low-pass 7": _low_pass,
    "sample-and-hold 3": _held,
    "quantized 0.5 std": _quantized,
    "vibration 17 Hz": _vibration,
    "spikes 1 %": _spikes,
    "gyroscope noise 1.5 std": _gyro_noise,
    "noise 1 std everywhere": _noise_everywhere,
    "accelerometer saturated": _saturated,
    "gyroscope 10 samples late": _gyro_late,
    "repeated blocks 20 %": _repeated_blocks,
    "dead gyroscope z": _dead_axis,
    "accelerometer y negated": _axis_negated,
    "accelerometer y gain x3": _axis_gain,
    "x axes of the sensors crossed": _crossed_axes,
    "random gain per channel": _random_gains,
    "strap slipping 0 to 90 deg": _slipping,
    "accelerometer clipped at 2 g": _clipped_2g,
    "noise 2 std everywhere": _noise_2std,
    "tilt 30 deg, gain 1.5, noise": _tilt_gain_noise,
    "gyroscope dead": _gyro_dead,
    "accelerometer stuck": _accel_stuck,
}


def shifted(log: RecordedLog, name: str, seed: int = SEED) -> RecordedLog:
    """The log with shift `name` applied to each device's samples in time order (times, labels kept)."""
    values = log.values.astype(np.float64)
    _, scale = finite_moments(values)  # the std the benchmark's own shifts scale by
    sensors = Sensors(triads(log.channels), scale, log.sample_rate_hz, np.random.default_rng(seed))
    shift = SHIFTS[name]
    out = np.empty_like(values)
    for device in log.devices():
        rows = np.flatnonzero(log.device_id == device)
        rows = rows[np.argsort(log.t_ns[rows], kind="stable")]
        out[rows] = shift(values[rows], sensors)
    return replace(log, values=out.astype(np.float32))


def shifted_logs(log: RecordedLog, names: list[str]) -> Iterator[tuple[str, Path]]:
    """Each shift's log written to a temporary file for `edge-ttt replay` (the next replaces it)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shifted.parquet"
        for name in names:
            write_log(path, shifted(log, name))
            yield name, path


def over_shifts(stem: str, doc: str | None, run: Run, markdown: Markdown, argv: list[str] | None) -> None:
    """`python -m benchmarks.<stem>`: `run` over every shift, written as <stem>.json and .md."""
    module = f"benchmarks.{stem}"
    args = one_model_args(module, doc, f"benchmarks/results/{stem}", argv)
    bundle_dir = prepare_models([args.model], args.cache, False)[args.model].bundle
    rows = run(bundle_dir, watch_logs()["target"], list(SHIFTS))
    meta = write_json(args.out, stem, module, argv, model=args.model, rows=rows)
    (args.out / f"{stem}.md").write_text(markdown(rows, meta, args.model))
    print(f"wrote {args.out / f'{stem}.md'}")
