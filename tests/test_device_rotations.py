"""The per-device rotation benchmark's stream: one device, both triads turned together."""

from __future__ import annotations

import numpy as np

from benchmarks.device_rotations import turned
from firmware_sim.deployment_shifts import MOUNTINGS
from tests.conftest import synthetic_log


def test_turned_keeps_one_device_and_turns_both_triads_alike():
    log = synthetic_log(devices=2)
    rotation = MOUNTINGS["90° z"]
    out = turned(log, "dev1", rotation)
    keep = log.device_id == "dev1"
    assert set(out.device_id) == {"dev1"} and len(out.t_ns) == int(keep.sum())
    assert np.array_equal(out.label, log.label[keep])
    for first in (0, 3):
        expected = log.values[keep][:, first : first + 3].astype(np.float64) @ rotation.T
        assert np.allclose(out.values[:, first : first + 3], expected, atol=1e-6)
