"""Sensor corruptions: each one does what docs/corruptions.md says, at the documented level."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.recordlog import RecordedLog
from firmware_sim.corruptions import (
    CORRUPTIONS,
    DEPLOYMENT_SHIFTS,
    SEVERITIES,
    SHIFTS,
    corrupt,
    corrupt_log,
    triads,
)
from tests.conftest import CHANNELS, synthetic_log

ROOT = Path(__file__).resolve().parents[1]
RANDOM = ("bias", "noise", "rotation", "dropout", "drift")


def imu(n: int = 4000, seed: int = 0) -> np.ndarray:
    """Channels with different offsets and spreads, so per-channel scaling errors would show."""
    rng = np.random.default_rng(seed)
    mean = np.array([0.1, 0.4, -0.2, 0.0, 0.05, -0.1])
    std = np.array([0.9, 0.5, 0.6, 1.1, 2.6, 1.2])
    return (mean + std * rng.standard_normal((n, len(CHANNELS)))).astype(np.float32)


def run(name: str, values: np.ndarray, severity: int = 4, seed: int = 0, channels=CHANNELS) -> np.ndarray:
    scale = values.astype(np.float64).std(axis=0)
    return corrupt(name, values, channels, scale, severity, np.random.default_rng(seed))


def test_clean_is_an_identical_copy():
    x = imu()
    out = run("clean", x)
    assert out is not x and out.dtype == np.float32
    np.testing.assert_array_equal(out, x)


def test_gain_multiplies_every_channel_by_the_documented_factor():
    x = imu()
    for severity, factor in zip(SEVERITIES, (1.2, 1.4, 1.6, 1.8, 2.0), strict=True):
        np.testing.assert_allclose(run("gain", x, severity), x * factor, rtol=1e-6)


def test_bias_adds_k_scale_with_a_sign_per_channel():
    x = imu()
    offset = run("bias", x, severity=4).astype(np.float64) - x
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape), atol=1e-5)  # constant
    np.testing.assert_allclose(np.abs(offset[0]), 2.0 * x.astype(np.float64).std(axis=0), rtol=1e-5)
    signs = {tuple(np.sign(run("bias", x, 4, seed=s)[0] - x[0])) for s in range(8)}
    assert len(signs) > 1  # the sign is drawn, not fixed


def test_noise_has_the_documented_std_and_no_offset():
    x = imu(20000)
    diff = run("noise", x, severity=2).astype(np.float64) - x
    scale = x.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(diff.std(axis=0), 0.4 * scale, rtol=0.05)
    assert np.all(np.abs(diff.mean(axis=0)) < 0.05 * scale)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def test_rotation_preserves_norms_and_turns_both_triads_by_the_same_angle():
    x = imu().astype(np.float64)
    out = run("rotation", x.astype(np.float32), severity=3).astype(np.float64)
    acc, gyro = slice(0, 3), slice(3, 6)
    for part in (acc, gyro):
        np.testing.assert_allclose(
            np.linalg.norm(out[:, part], axis=1), np.linalg.norm(x[:, part], axis=1), rtol=1e-5
        )
        turned = angle_deg(x[:, part], out[:, part])
        # No vector turns by more than the angle; one perpendicular to the axis turns by all of it.
        assert turned.max() <= 30.0 + 0.01 and turned.max() >= 29.0
    # One matrix for both triads: the one that maps the accelerometer maps the gyroscope too.
    matrix, *_ = np.linalg.lstsq(x[:, acc], out[:, acc], rcond=None)
    np.testing.assert_allclose(x[:, gyro] @ matrix, out[:, gyro], atol=1e-4)
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(3), atol=1e-5)


def test_rotation_finds_triads_by_name_and_leaves_other_channels():
    channels = ("temp", "acc_x", "acc_y", "acc_z", "gx")
    assert triads(channels) == [(1, 2, 3)]
    assert triads(CHANNELS) == [(0, 1, 2), (3, 4, 5)]
    x = imu()[:, :5]
    out = run("rotation", x, channels=channels)
    np.testing.assert_array_equal(out[:, [0, 4]], x[:, [0, 4]])
    assert not np.allclose(out[:, 1:4], x[:, 1:4])
    with pytest.raises(ValueError, match="triads"):
        run("rotation", x[:, :2], channels=("temp", "gx"))


def test_clipping_saturates_at_mean_plus_minus_k_scale():
    x = imu().astype(np.float64)
    out = run("clipping", x.astype(np.float32), severity=4).astype(np.float64)
    low, high = x.mean(axis=0) - 1.5 * x.std(axis=0), x.mean(axis=0) + 1.5 * x.std(axis=0)
    assert np.all(out >= low - 1e-5) and np.all(out <= high + 1e-5)
    inside = (x > low) & (x < high)
    np.testing.assert_allclose(out[inside], x[inside], rtol=1e-6)
    assert np.isclose(out.max(axis=0), high, rtol=1e-5).all()  # the rails are reached


def test_dropout_holds_the_last_read_value_for_about_the_documented_share():
    x = imu(50000)
    out = run("dropout", x, severity=4)
    held = np.any(out != x, axis=1)
    assert not held[0]
    np.testing.assert_array_equal(out[1:][held[1:]], out[:-1][held[1:]])  # sample-and-hold
    assert abs(held.mean() - 0.4) < 0.03
    starts = np.flatnonzero(held[1:] & ~held[:-1])
    assert 3.5 < held.sum() / len(starts) < 6.5  # in bursts of about 5 samples


def test_drift_ramps_from_nothing_to_the_full_level():
    x = imu(4001).astype(np.float64)
    out = run("drift", x.astype(np.float32), severity=4).astype(np.float64)
    scale = x.std(axis=0)
    np.testing.assert_allclose(out[0], x[0], rtol=1e-6)
    end = out[-1] - 1.8 * x[-1]
    np.testing.assert_allclose(np.abs(end), 2.0 * scale, rtol=1e-5)
    middle = out[2000] - 1.4 * x[2000]  # half way: half the gain and half the offset
    np.testing.assert_allclose(middle, end / 2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [name for name, shift in SHIFTS.items() if shift.resample is None])
def test_input_untouched_and_float32(name):
    """Every shift that keeps the timing, deployment shifts included (`rate` has its own test)."""
    x = imu(500)
    before = x.copy()
    out = run(name, x)
    np.testing.assert_array_equal(x, before)
    assert out.dtype == np.float32 and out.shape == x.shape and out is not x


@pytest.mark.parametrize("name", RANDOM)
def test_deterministic_for_a_seed(name):
    x = imu(2000)
    np.testing.assert_array_equal(run(name, x, seed=3), run(name, x, seed=3))
    assert not np.array_equal(run(name, x, seed=3), run(name, x, seed=4))


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "clean"])
def test_higher_severity_changes_the_signal_more(name):
    x = imu(20000)
    change = [np.abs(run(name, x, severity=s) - x).mean() for s in SEVERITIES]
    assert np.all(np.diff(change) > 0), change


def test_unknown_name_and_bad_severity_are_refused_clearly():
    x = imu(10)
    with pytest.raises(ValueError, match=r"unknown corruption 'fog'; choose one of clean, gain, bias"):
        run("fog", x)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
            run("gain", x, severity=severity)


def test_corrupt_log_keeps_everything_but_the_values():
    log = synthetic_log(devices=3, seconds=10)
    out = corrupt_log(log, "noise", 3, seed=0)
    for field in ("device_id", "t_ns", "label"):
        np.testing.assert_array_equal(getattr(out, field), getattr(log, field))
    assert (out.channels, out.sample_rate_hz, out.class_names) == (
        log.channels,
        log.sample_rate_hz,
        log.class_names,
    )
    assert not np.allclose(out.values, log.values)
    np.testing.assert_array_equal(corrupt_log(log, "noise", 3, seed=0).values, out.values)


def test_corrupt_log_works_per_device_in_time_order():
    log = synthetic_log(devices=3, seconds=10)
    reverse = np.arange(len(log))[::-1]
    shuffled_rows = RecordedLog(
        device_id=log.device_id[reverse],
        t_ns=log.t_ns[reverse],
        values=log.values[reverse],
        label=log.label[reverse],
        channels=log.channels,
        sample_rate_hz=log.sample_rate_hz,
        class_names=log.class_names,
    )
    out = corrupt_log(shuffled_rows, "drift", 5, seed=1)
    for device in log.devices():
        rows = np.flatnonzero(shuffled_rows.device_id == device)
        first = rows[np.argmin(shuffled_rows.t_ns[rows])]
        np.testing.assert_array_equal(out.values[first], shuffled_rows.values[first])  # drift starts at 0
    # A device's draws do not depend on which other devices the log holds (dropout: no scale involved).
    alone = log.select(log.device_id == "dev1")
    in_full_log = corrupt_log(log, "dropout", 3, seed=1).values[log.device_id == "dev1"]
    np.testing.assert_array_equal(in_full_log, corrupt_log(alone, "dropout", 3, seed=1).values)


def documented_table(section: str) -> dict[str, list[str]]:
    """name -> [parameter, level 1, ..., level 5] from the table of one section of docs/corruptions.md."""
    text = (ROOT / "docs" / "corruptions.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)`\s*\|(.*)\|\s*$", body, flags=re.M)
    return {name: [cell.strip() for cell in cells.split("|")] for name, cells in rows}


def level_text(cell: object) -> str:
    """A level as the table writes it, numbers normalized (2.0 and 2 are the same level)."""
    if cell is None or cell == "-":
        return "-"
    parts = [str(v) for v in np.atleast_1d(cell)] if not isinstance(cell, str) else cell.split(",")
    try:
        return ", ".join(f"{float(v):g}" for v in parts)
    except ValueError:  # a named level (a mounting)
        return str(cell)


@pytest.mark.parametrize(
    "section, registry",
    [("Corruptions and their levels", CORRUPTIONS), ("Deployment shifts", DEPLOYMENT_SHIFTS)],
)
def test_documented_table_matches_the_levels(section, registry):
    rows = documented_table(section)
    assert list(rows) == list(registry)
    for name, corruption in registry.items():
        parameter, *levels = rows[name]
        assert parameter == corruption.parameter, name
        assert [level_text(cell) for cell in levels] == [level_text(level) for level in corruption.levels], (
            name
        )


def test_corrupt_log_can_give_every_device_the_same_fault():
    from tests.conftest import synthetic_log

    log = synthetic_log(devices=3, seconds=4)
    shared = corrupt_log(log, "bias", 4, seed=0, same_for_all_devices=True)
    own = corrupt_log(log, "bias", 4, seed=0)
    offsets = [
        (out.values[out.device_id == d] - log.values[log.device_id == d])[0]
        for out in (shared, own)
        for d in log.devices()
    ]
    np.testing.assert_allclose(offsets[0], offsets[1], rtol=1e-5)
    np.testing.assert_allclose(offsets[0], offsets[2], rtol=1e-5)
    assert not np.allclose(offsets[3], offsets[4]) or not np.allclose(offsets[3], offsets[5])
