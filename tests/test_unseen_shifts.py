"""The held-out sensor shifts of `benchmarks.unseen_shifts`: each does what its name says, per device,
and the benchmark's run reports every policy on them through `edge-ttt replay`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from benchmarks.held_out_shifts import SHIFTS, shifted, triads
from benchmarks.unseen_shifts import NO_FALLBACK, POLICIES, markdown, run
from tests.conftest import synthetic_log

LOG = synthetic_log(devices=2, seconds=12.0)
LOUD = replace(LOG, values=LOG.values * 4)  # beyond the +-2 g that one shift clips at


def test_triads_refuse_channels_that_are_not_axes() -> None:
    with pytest.raises(ValueError, match="does not name a sensor axis"):
        triads(("ax", "ay", "temp"))
    with pytest.raises(ValueError, match="not whole x, y, z triads"):
        triads(("ax", "ay"))


@pytest.mark.parametrize("name", list(SHIFTS))
def test_every_shift_changes_the_samples_and_keeps_the_rest(name: str) -> None:
    out = shifted(LOUD, name)
    assert out.values.shape == LOG.values.shape and out.values.dtype == np.float32
    assert np.isfinite(out.values).all()
    assert not np.array_equal(out.values, LOUD.values)
    np.testing.assert_array_equal(out.t_ns, LOG.t_ns)
    np.testing.assert_array_equal(out.label, LOG.label)
    np.testing.assert_array_equal(out.device_id, LOG.device_id)


def test_shifts_do_what_their_names_say() -> None:
    v = LOG.values
    np.testing.assert_allclose(shifted(LOG, "attenuated x0.5").values, 0.5 * v, rtol=1e-6)
    swapped = shifted(LOG, "sensors swapped").values
    np.testing.assert_array_equal(swapped[:, :3], v[:, 3:])
    np.testing.assert_array_equal(swapped[:, 3:], v[:, :3])
    turned = shifted(LOG, "turned 90 deg about z").values  # (x, y, z) -> (-y, x, z), both sensors
    for a in (0, 3):
        np.testing.assert_array_equal(turned[:, a], -v[:, a + 1])
        np.testing.assert_array_equal(turned[:, a + 1], v[:, a])
        np.testing.assert_array_equal(turned[:, a + 2], v[:, a + 2])
    dead = shifted(LOG, "dead gyroscope z").values
    assert (dead[:, 5] == 0).all()
    np.testing.assert_array_equal(dead[:, :5], v[:, :5])
    unit = shifted(LOG, "accelerometer in m/s2").values
    np.testing.assert_allclose(unit[:, :3], 9.81 * v[:, :3], rtol=1e-6)
    np.testing.assert_array_equal(unit[:, 3:], v[:, 3:])
    upside = shifted(LOG, "upside down").values  # 180 deg about x: y and z negated, both sensors
    np.testing.assert_array_equal(upside, v * np.array([1, -1, -1, 1, -1, -1], dtype=np.float32))
    late = shifted(LOG, "gyroscope 10 samples late").values
    for device in LOG.devices():
        rows = np.flatnonzero(LOG.device_id == device)
        np.testing.assert_array_equal(late[rows][10:, 3:], v[rows][:-10, 3:])
        np.testing.assert_array_equal(late[rows][:, :3], v[rows][:, :3])
    z = shifted(LOG, "accelerometer z offset 2 std").values - v
    assert np.allclose(z[:, [0, 1, 3, 4, 5]], 0) and np.ptp(z[:, 2]) < 1e-5 and z[0, 2] > 0
    negated = shifted(LOG, "accelerometer y negated").values
    np.testing.assert_array_equal(negated, v * np.array([1, -1, 1, 1, 1, 1], dtype=np.float32))
    crossed = shifted(LOG, "x axes of the sensors crossed").values
    np.testing.assert_array_equal(crossed[:, [3, 1, 2, 0, 4, 5]], v)
    assert (shifted(LOG, "gyroscope dead").values[:, 3:] == 0).all()
    stuck = shifted(LOG, "accelerometer stuck").values
    for device in LOG.devices():
        rows = np.flatnonzero(LOG.device_id == device)
        assert (stuck[rows][:, :3] == v[rows][0, :3]).all()  # each device holds its own first reading
    assert np.abs(shifted(LOUD, "accelerometer clipped at 2 g").values[:, :3]).max() <= 2.0
    clipped = shifted(LOG, "accelerometer saturated").values
    assert (np.ptp(clipped[:, :3], axis=0) < np.ptp(v[:, :3], axis=0)).all()
    np.testing.assert_array_equal(clipped[:, 3:], v[:, 3:])


def test_sample_and_hold_repeats_within_each_device_only() -> None:
    out = shifted(LOG, "sample-and-hold 3")
    for device in LOG.devices():
        rows = np.flatnonzero(LOG.device_id == device)
        held, raw = out.values[rows], LOG.values[rows]
        np.testing.assert_array_equal(held[0::3], raw[0::3])  # each device's hold starts on its own sample
        np.testing.assert_array_equal(held[1::3], raw[0::3][: len(held[1::3])])


def test_run_reports_every_policy_and_the_fallback(bundle_dir) -> None:
    rows = run(bundle_dir, LOG, ["attenuated x0.5", "dead gyroscope z"])
    assert [r["shift"] for r in rows] == ["attenuated x0.5", "dead gyroscope z"]
    columns = (*POLICIES, NO_FALLBACK)
    for row in rows:
        assert set(row) == {"shift", *columns, *(f"{c} devices" for c in columns)} | {
            f"{c} below" for c in columns[1:]
        }
        assert all(0.0 <= row[c] <= 1.0 for c in columns)
        source = row["source devices"]
        assert set(source) == {str(d) for d in LOG.devices()}
        for c in columns[1:]:  # the devices more than 1 point below source, recounted
            worse = {d for d, acc in row[f"{c} devices"].items() if acc < source[d] - 0.01}
            assert {b["device"] for b in row[f"{c} below"]} == worse
    text = markdown(rows, {"command": "python -m benchmarks.unseen_shifts", "git_commit": "x"}, "cnn-bn")
    assert "| attenuated x0.5 |" in text and "Worst `steady` against `source`" in text
    counts = [len(rows[0][f"{c} below"]) for c in columns[1:]]
    assert (
        text.split("| attenuated x0.5 |")[1]
        .split("\n")[0]
        .endswith(" | ".join(str(n) for n in counts) + " |")
    )
