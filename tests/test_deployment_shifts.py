"""Deployment shifts: each one does what docs/corruptions.md says, at the documented level."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ttt.recordlog import RecordedLog
from firmware_sim.corruptions import (
    CORRUPTIONS,
    DEPLOYMENT_SHIFTS,
    SEVERITIES,
    SHIFTS,
    corrupt_log,
    device_rng,
)
from tests.conftest import CHANNELS, synthetic_log
from tests.test_corruptions import imu, run

TRIADS_NEEDED = ("mount", "unit", "wrist")
# Where each axis of a triad comes from after each mounting, written out by hand: (sign, axis).
MOUNTED = {
    1: [(-1, 1), (1, 0), (1, 2)],  # 90° z: x' = -y, y' = x
    2: [(1, 0), (-1, 2), (1, 1)],  # 90° x: y' = -z, z' = y
    3: [(-1, 0), (-1, 1), (1, 2)],  # 180° z
    4: [(1, 0), (-1, 1), (-1, 2)],  # 180° x: upside down, y and z negated
    5: [(1, 2), (1, 0), (1, 1)],  # 90° z then 90° y: x' = z, y' = x, z' = y
}


def test_the_suite_is_the_corruptions_plus_the_deployment_shifts():
    assert list(SHIFTS) == [*CORRUPTIONS, "mount", "coupling", "unit", "rate", "creep", "wrist"]
    assert not set(CORRUPTIONS) & set(DEPLOYMENT_SHIFTS)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_mount_turns_both_triads_by_the_documented_matrix(severity):
    x = imu(500)
    out = run("mount", x, severity)
    for triad in ((0, 1, 2), (3, 4, 5)):
        for axis, (sign, source) in zip(triad, MOUNTED[severity], strict=True):
            np.testing.assert_array_equal(out[:, axis], sign * x[:, triad[source]])
    np.testing.assert_array_equal(run("mount", x, severity, seed=1), out)  # nothing is drawn


def test_mount_leaves_other_channels():
    channels = ("temp", "ax", "ay", "az", "gx")
    x = imu(200)[:, :5]
    out = run("mount", x, 4, channels=channels)
    np.testing.assert_array_equal(out[:, [0, 4]], x[:, [0, 4]])
    np.testing.assert_array_equal(out[:, 1:4], x[:, 1:4] * np.array([1.0, -1.0, -1.0], np.float32))


def mixing(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The matrix M with out / scale = (x / scale) M^T, fitted by least squares."""
    scale = x.astype(np.float64).std(axis=0)
    fitted, *_ = np.linalg.lstsq(x / scale, out.astype(np.float64) / scale, rcond=None)
    return fitted.T


def test_coupling_mixes_channels_by_identity_plus_k_times_one_drawn_matrix():
    x = imu(2000)
    c = len(CHANNELS)
    levels = DEPLOYMENT_SHIFTS["coupling"].levels
    drawn = [
        (mixing(x, run("coupling", x, s)) - np.eye(c)) / k for s, k in zip(SEVERITIES, levels, strict=True)
    ]
    for other in drawn[1:]:  # one generator, one M: the level only scales it
        np.testing.assert_allclose(other, drawn[0], atol=1e-4)
    assert 0.5 / np.sqrt(c) < drawn[0].std() < 1.5 / np.sqrt(c)  # M ~ N(0, 1/C)
    mild = mixing(x, run("coupling", x, 1))
    assert np.abs(mild - np.eye(c)).max() < 0.2 and np.all(np.abs(np.diag(mild) - 1) < 0.2)
    np.testing.assert_array_equal(run("coupling", x, 3, seed=5), run("coupling", x, 3, seed=5))
    assert not np.array_equal(run("coupling", x, 3, seed=5), run("coupling", x, 3, seed=6))


def test_unit_scales_only_the_last_triad_by_the_factor():
    x = imu(500)
    for severity, factor in zip(SEVERITIES, (1.5, 2.0, 4.0, 57.3, 100.0), strict=True):
        out = run("unit", x, severity)
        np.testing.assert_array_equal(out[:, :3], x[:, :3])
        np.testing.assert_allclose(out[:, 3:], x[:, 3:] * factor, rtol=1e-6)


def ramp(n: int) -> np.ndarray:
    """Channel c is (c + 1) times the sample index: interpolation shows as the position itself."""
    return (np.arange(n)[:, None] * np.arange(1, len(CHANNELS) + 1)).astype(np.float32)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_rate_resamples_faster_or_slower_by_the_factor(severity):
    factor = DEPLOYMENT_SHIFTS["rate"].levels[severity - 1]
    n = 1001
    lengths = set()
    for seed in range(12):
        out = run("rate", ramp(n), severity, seed=seed).astype(np.float64)
        f = factor if len(out) > n else 1.0 / factor
        assert len(out) == int((n - 1) * f) + 1  # about n·f or n/f
        positions = np.arange(len(out)) / f
        np.testing.assert_allclose(out, positions[:, None] * np.arange(1, 7), rtol=1e-6, atol=1e-6)
        lengths.add(len(out) > n)
    assert lengths == {True, False}  # a coin flip: sometimes fast, sometimes slow


def test_rate_interpolates_the_values_between_samples():
    x = imu(301)
    out = run("rate", x, 5, seed=0)
    f = (len(out) - 1) / (len(x) - 1)  # exactly 2 or 1/2 here, so it can be read back
    positions = np.arange(len(out)) / f
    for c in range(len(CHANNELS)):
        np.testing.assert_allclose(out[:, c], np.interp(positions, np.arange(len(x)), x[:, c]), rtol=1e-5)


def rate_log(devices: int = 3, n: int = 400) -> RecordedLog:
    """Values are the sample index, labels change every 7 samples, each device starts elsewhere."""
    ids, times, values, labels = [], [], [], []
    for d in range(devices):
        ids.append(np.full(n, f"dev{d}", dtype=object))
        times.append(1_000_000_000 * (d + 1) + np.arange(n, dtype=np.int64) * 20_000_000)
        values.append(ramp(n))
        labels.append((np.arange(n) // 7 % 3).astype(np.int32))
    return RecordedLog(
        device_id=np.concatenate(ids),
        t_ns=np.concatenate(times),
        values=np.concatenate(values),
        label=np.concatenate(labels),
        channels=CHANNELS,
        sample_rate_hz=50.0,
        class_names=("a", "b", "c"),
    )


def test_corrupt_log_rate_takes_labels_from_the_nearest_sample_and_times_at_the_nominal_rate():
    log = rate_log()
    out = corrupt_log(log, "rate", 4, seed=0)
    assert (out.channels, out.sample_rate_hz, out.class_names) == (log.channels, 50.0, log.class_names)
    fast = {}
    for device in log.devices():
        mine = out.device_id == device
        fast[device] = mine.sum() > 400
        f = 1.5 if fast[device] else 1.0 / 1.5
        assert mine.sum() == int(399 * f) + 1
        position = np.arange(mine.sum()) / f
        np.testing.assert_allclose(out.values[mine, 0], position, atol=1e-3)  # channel 0: the position
        nearest = np.round(position).astype(int)
        np.testing.assert_array_equal(out.label[mine], log.label[log.device_id == device][nearest])
        first = log.t_ns[log.device_id == device][0]
        np.testing.assert_array_equal(out.t_ns[mine], first + np.arange(mine.sum()) * 20_000_000)
    # Every device flips its own coin; with one generator the whole fleet runs at one rate.
    resample = DEPLOYMENT_SHIFTS["rate"].resample
    assert fast == {d: len(resample(400, 1.5, device_rng(0, d))) > 400 for d in log.devices()}
    fleet = corrupt_log(log, "rate", 4, seed=0, same_for_all_devices=True)
    assert len({(fleet.device_id == d).sum() for d in log.devices()}) == 1


@pytest.mark.parametrize("severity", SEVERITIES)
def test_creep_starts_at_zero_and_ends_with_std_k_scale(severity):
    k = DEPLOYMENT_SHIFTS["creep"].levels[severity - 1]
    x = imu(400)
    scale = x.astype(np.float64).std(axis=0)
    ends = []
    for seed in range(150):
        offset = run("creep", x, severity, seed=seed).astype(np.float64) - x
        np.testing.assert_allclose(offset[0], 0.0, atol=1e-6)
        ends.append(offset[-1] / scale)
    # 900 end points: the std is within 10% of k (its sampling error is about 2.4%).
    assert abs(np.std(ends) / k - 1.0) < 0.1
    assert abs(np.mean(ends)) < 0.15 * k


def test_wrist_mirrors_the_accelerometer_x_and_the_gyroscope_y_z():
    x = imu(300)
    for severity in SEVERITIES:  # one level, whatever the severity
        out = run("wrist", x, severity)
        np.testing.assert_array_equal(out, x * np.array([-1, 1, 1, 1, -1, -1], np.float32))


@pytest.mark.parametrize("name", TRIADS_NEEDED)
def test_shifts_on_triads_refuse_a_signal_without_one(name):
    with pytest.raises(ValueError, match=f"{name} needs x/y/z channel triads"):
        run(name, imu(20)[:, :2], channels=("temp", "gx"))


@pytest.mark.parametrize("name", list(DEPLOYMENT_SHIFTS))
def test_corrupt_log_accepts_every_shift_and_keeps_the_label_set(name):
    log = synthetic_log(devices=2, seconds=4)
    out = corrupt_log(log, name, 3, seed=0)
    assert out.channels == log.channels and set(out.devices()) == set(log.devices())
    assert set(np.unique(out.label)) <= set(np.unique(log.label))
    if name != "rate":
        np.testing.assert_array_equal(out.t_ns, log.t_ns)
