"""Alert rules over the fleet dataset, evaluated per device on its latest intervals (the rules
and their keys are in configs/monitor.toml's [alerts] and docs/monitoring.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa

from edge_ttt.monitor.clocks import clock_problem, duration, seconds, stamp
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.estimates import COLUMNS as ESTIMATE_COLUMNS
from edge_ttt.monitor.estimates import Estimates, fleet_estimates
from edge_ttt.monitor.intervals import Intervals, ReferenceBins
from edge_ttt.monitor.text import visible

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
    "received",
    "noise_share",
    *(c for c in ESTIMATE_COLUMNS if c != "windows"),
]


@dataclass(frozen=True)
class Alert:
    rule: str  # psi, accuracy, resets, entropy, noise, silent, clock
    device: str
    value: float
    message: str


def evaluate(
    table: pa.Table, rules: AlertsSection, now: float | None = None, bins: ReferenceBins | None = None
) -> list[Alert]:
    """Every alert that holds now, ordered by device then rule. The table holds COLUMNS (or more),
    and `ref_share` unless `bins` are given (see Intervals.of)."""
    return evaluate_intervals(Intervals.of(table, rules, bins), rules, now)


def evaluate_intervals(
    intervals: Intervals,
    rules: AlertsSection,
    now: float | None = None,
    estimates: list[Estimates] | None = None,
) -> list[Alert]:
    """`estimates`: `fleet_estimates(intervals, rules.estimate_windows)` when already at hand."""
    now = time.time() if now is None else now
    estimates = fleet_estimates(intervals, rules.estimate_windows) if estimates is None else estimates
    alerts = []
    for i, device in enumerate(intervals.devices):
        alerts += _device_alerts(intervals, i, device, rules, now, estimates[i])
    return alerts


def accuracy_alert(device: str, e: Estimates, rules: AlertsSection) -> Alert | None:
    """The source model or the served predictions estimated more than `accuracy_loss` below the
    reference: the first is what the drift costs (even where adaptation makes up for it), the second
    what the device delivers."""
    if e.windows < rules.accuracy_min_windows:
        return None
    source, served = e.lost("source"), e.lost("served")
    worst = max((v for v in (source, served) if v is not None), default=None)
    if worst is None or worst <= rules.accuracy_loss:
        return None
    named = {"source model": e.source, "served predictions": e.served}
    said = ", ".join(f"{name} {100 * v:.1f} %" for name, v in named.items() if v is not None)
    which = "source model" if worst == source else "served predictions"
    return Alert(
        "accuracy",
        device,
        worst,
        f"estimated accuracy over the latest {e.windows} windows: {said}, against the reference "
        f"{100 * e.reference:.1f} % ({100 * worst:.1f} points lost by the {which})",
    )


def noisy_channels(shares: list | None, names: list | None, threshold: float) -> list[tuple[str, float]]:
    """(channel, share) of a summary's `noise_share` at or above `threshold`, in channel order."""
    shares, names = shares or [], names or []
    if len(names) != len(shares):
        names = [f"channel {i}" for i in range(len(shares))]
    return [(n, v) for n, v in zip(names, shares, strict=True) if v is not None and v >= threshold]


def said_noise(noisy: list[tuple[str, float]]) -> str:
    """`noisy_channels` in words: "ax 43 %, ay 90 %" (names shown escaped)."""
    return ", ".join(f"{visible(n)} {100 * v:.0f} %" for n, v in noisy)


def noise_alert(device: str, own: pa.Table, rules: AlertsSection) -> Alert | None:
    """The device's latest summary reports white noise beyond the training data's on a channel above
    `noise_share` of its variance: a sensor to look at, though input alignment smooths it meanwhile
    (a noisy source model loses accuracy the class-mix estimates do not see)."""
    if "noise_share" not in own.column_names:
        return None
    shares, names = (own.column(c)[-1].as_py() for c in ("noise_share", "channels"))
    noisy = noisy_channels(shares, names, rules.noise_share)
    if not noisy:
        return None
    said = said_noise(noisy)
    return Alert(
        "noise",
        device,
        max(v for _, v in noisy),
        f"white noise beyond the training data's, as a share of each channel's variance: {said} "
        "(a noisy sensor; input alignment smooths it before the model meanwhile)",
    )


def rows_windows(intervals: Intervals, at: int) -> int:
    """The window count of interval `at` (a position in the score arrays)."""
    return int(np.nan_to_num(intervals.array_of("windows", slice(at, at + 1)))[0])


def _device_alerts(
    intervals: Intervals, i: int, device: str, rules: AlertsSection, now: float, estimates: Estimates
) -> list[Alert]:
    out = []
    scores = intervals.scores(i)
    judged = intervals.sized(i, rules.psi_min_windows)[-rules.psi_intervals :]
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
    lost = accuracy_alert(device, estimates, rules)
    if lost is not None:
        out.append(lost)
    recent = slice(max(scores.start, scores.stop - max(rules.reset_intervals, 1)), scores.stop)
    windows = int(np.nansum(intervals.array_of("windows", recent)))  # broken counts (NaN) as none
    resets = int(sum(np.nansum(intervals.array_of(c, recent)) for c in ("resets", "rollbacks")))
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
    own = intervals.table.slice(scores.start, scores.stop - scores.start)
    noisy = noise_alert(device, own, rules)
    if noisy is not None:
        out.append(noisy)
    ends, received = seconds(own, "interval_end"), seconds(own, "received")
    clock = clock_problem(float(ends[-1]), float(received[-1]), now, rules.clock_skew_s)
    if clock is not None:
        out.append(Alert("clock", device, clock[0], clock[1]))
    # silence by the collector's clock where it stamped the summaries: the device's own can be off
    stamped = not np.isnan(received).all()
    heard = float(np.nanmax(received)) if stamped else float(ends[-1])
    silent = now - heard
    if silent > rules.silent_s:
        out.append(
            Alert(
                "silent",
                device,
                silent,
                f"no summary for {duration(silent)} (> {duration(rules.silent_s)}), "
                f"the last {'received' if stamped else 'dated'} {stamp(heard)}",
            )
        )
    return out
