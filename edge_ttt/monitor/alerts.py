"""Alert rules over the fleet dataset, evaluated per device on its latest intervals (the rules
and their keys are in configs/monitor.toml's [alerts] and docs/monitoring.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa

from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.intervals import Intervals, ReferenceBins

COLUMNS = [
    "device_id",
    "interval_end",
    "psi",
    "psi_limit",
    "windows",
    "resets",
    "rollbacks",
    "skipped_unreliable",
    "skipped_no_drift",
    "entropy_edges",
    "entropy_counts",
    "channels",
    "model_sha256",
]


@dataclass(frozen=True)
class Alert:
    rule: str  # psi, resets, entropy, silent
    device: str
    value: float
    message: str


def evaluate(
    table: pa.Table, rules: AlertsSection, now: float | None = None, bins: ReferenceBins | None = None
) -> list[Alert]:
    """Every alert that holds now, ordered by device then rule. The table holds COLUMNS (or more),
    and `ref_share` unless `bins` are given (see Intervals.of)."""
    return evaluate_intervals(Intervals.of(table, rules, bins), rules, now)


def evaluate_intervals(intervals: Intervals, rules: AlertsSection, now: float | None = None) -> list[Alert]:
    now = time.time() if now is None else now
    alerts = []
    for i, device in enumerate(intervals.devices):
        alerts += _device_alerts(intervals, i, device, rules, now)
    return alerts


def rows_windows(intervals: Intervals, at: int) -> int:
    """The window count of interval `at` (a position in the score arrays)."""
    return int(np.nan_to_num(intervals.array_of("windows", slice(at, at + 1)))[0])


def _device_alerts(
    intervals: Intervals, i: int, device: str, rules: AlertsSection, now: float
) -> list[Alert]:
    out = []
    scores = intervals.scores(i)
    rows = intervals.rows(i, last=max(rules.reset_intervals, 1))
    sized = np.flatnonzero(np.nan_to_num(intervals.array_of("windows", scores)) >= rules.psi_min_windows)
    judged = sized[-rules.psi_intervals :]
    ratio = intervals.drift_ratio[scores][judged]
    if len(ratio) == rules.psi_intervals and bool(np.all(ratio > 1)):
        at = scores.start + int(judged[-1])
        latest = f"max PSI {float(intervals.max_psi[at]):.3f} at {rows_windows(intervals, at)} windows"
        out.append(
            Alert(
                "psi",
                device,
                float(intervals.max_psi[at]),
                f"input drift in the last {rules.psi_intervals} intervals of {rules.psi_min_windows}+ "
                f"windows: the most drifted channel's PSI is {float(ratio[-1]):.1f}x its no-drift limit "
                f"(latest: {latest})",
            )
        )
    window = rows[-rules.reset_intervals :]
    windows = sum(r["windows"] or 0 for r in window)
    resets = sum((r["resets"] or 0) + (r["rollbacks"] or 0) for r in window)
    if windows and resets / windows > rules.reset_rate:
        out.append(
            Alert(
                "resets",
                device,
                resets / windows,
                f"{resets} resets and rollbacks in {windows} windows "
                f"(rate {resets / windows:.3f} > {rules.reset_rate})",
            )
        )
    entropy = intervals.mean_entropy[scores][-rules.entropy_intervals :].tolist()
    if len(entropy) == rules.entropy_intervals and not np.isnan(entropy).any():
        rise = entropy[-1] - entropy[0]
        if all(b > a for a, b in pairwise(entropy)) and rise > rules.entropy_rise:
            out.append(
                Alert(
                    "entropy",
                    device,
                    rise,
                    f"mean prediction entropy rose {rise:.3f} nats over the last "
                    f"{rules.entropy_intervals} intervals",
                )
            )
    silent = now - rows[-1]["interval_end"].timestamp()
    if silent > rules.silent_s:
        out.append(
            Alert("silent", device, silent, f"no summary for {silent:.0f} s (> {rules.silent_s:.0f} s)")
        )
    return out
