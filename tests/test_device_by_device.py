"""The device-by-device benchmark's pure parts: one stream per device, and what its report counts."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")  # the benchmarks' model cache trains with torch

from benchmarks.adaptation.cells import device_streams
from benchmarks.device_by_device import ORDERS, report, summary
from firmware_sim.corruptions import SHIFTS


def test_one_stream_per_device_in_the_order_asked():
    devices = np.array(["b", "a", "b", "a", "a"], dtype=object)
    t_end = np.array([20, 30, 10, 10, 20])
    labels = np.array([0, 0, 1, 2, 1])
    recorded = device_streams(devices, t_end, labels, "recorded")
    assert [devices[s].tolist() for s in recorded] == [["a"] * 3, ["b"] * 2]
    assert [t_end[s].tolist() for s in recorded] == [[10, 20, 30], [10, 20]]
    by_class = device_streams(devices, t_end, labels, "class-sorted")
    assert [labels[s].tolist() for s in by_class] == [[0, 1, 2], [0, 1]]


def _rows(changes: list[float], order: str = "recorded", shift: str = "gain") -> list[dict]:
    return [
        {"shift": shift, "order": order, "device": f"d{i}", "source": 50.0, "steady": 50.0 + c}
        | {"steady-no-fallback": 50.0, "steady-instance": 50.0 + 2 * c, "steady-instance-blend": 50.0 + 3 * c}
        for i, c in enumerate(changes)
    ]


def test_summary_counts_the_devices_made_worse():
    s = summary(_rows([+3.0, -0.5, -2.0, -7.5]), "steady")
    assert s == {"mean": -1.75, "worst": -7.5, "losing": 2, "losing_5": 1, "devices": 4}
    assert summary(_rows([+3.0, -0.5]), "steady-no-fallback")["losing"] == 0


def test_report_has_a_row_per_shift_and_a_total_per_order():
    rows = [r for order in ORDERS for shift in SHIFTS for r in _rows([+2.0, -3.0], order, shift)]
    lines = report(rows, {"command": "python -m benchmarks.device_by_device", "git_commit": "abc"}, "cnn-bn")
    assert sum(line.startswith("| gain |") for line in lines) == len(ORDERS)
    totals = [line for line in lines if line.startswith("| **all")]
    n = 2 * len(SHIFTS)
    assert totals == [
        f"| **all {n} device streams** | | -0.5 / -3.0 | {n // 2} (0 by more than 5) | "
        f"+0.0 / +0.0 | 0 (0 by more than 5) | -1.0 / -6.0 | {n // 2} ({n // 2} by more than 5) | "
        f"-1.5 / -9.0 | {n // 2} ({n // 2} by more than 5) |"
    ] * len(ORDERS)
    header = next(line for line in lines if line.startswith("| shift |"))
    rule = next(line for line in lines if line.startswith("|---"))
    assert "steady-instance-blend: mean / worst" in header and header.count("|") == rule.count("|") == 11
