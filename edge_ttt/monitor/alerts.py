"""Alert rules over the fleet dataset, evaluated per device on its latest intervals (the rules
and their keys are in configs/monitor.toml's [alerts] and docs/monitoring.md)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import groupby, pairwise
from statistics import NormalDist

import numpy as np
import pyarrow as pa

from edge_ttt.monitor.config import AlertsSection

COLUMNS = [
    "device_id",
    "interval_end",
    "psi",
    "windows",
    "resets",
    "rollbacks",
    "skipped_unreliable",
    "skipped_no_drift",
    "entropy_edges",
    "entropy_counts",
    "channels",
    "ref_share",
]


@dataclass(frozen=True)
class Alert:
    rule: str  # psi, resets, entropy, silent
    device: str
    value: float
    message: str


def max_psi(psi: list[float] | None) -> float:
    """An interval's drift score: its worst channel (NaN without data)."""
    values = [p for p in psi or [] if p is not None and not math.isnan(p)]
    return max(values) if values else math.nan


def chi2_quantile(p: float, dof: int) -> float:
    """The p quantile of chi-square with `dof` degrees of freedom (Wilson-Hilferty: within 1 % of the
    exact value for dof >= 3 at the tails used here; no scipy on the fleet side)."""
    z = NormalDist().inv_cdf(p)
    h = 2 / (9 * dof)
    return dof * max(1 - h + z * math.sqrt(h), 0.0) ** 3


def psi_limit(bins: int, windows: int, rules: AlertsSection) -> float:
    """The PSI above which a channel of an interval counts as drifted: the larger of `psi_threshold`
    and PSI's (1 - psi_false_alarm) quantile without drift at this sample size.

    Without drift, n x PSI is close to chi-square with bins - 1 degrees of freedom (PSI is the
    symmetrised KL divergence, Pearson's chi-square / n for small differences; the reference's own
    sample is large enough to ignore). n counts windows, not samples: the samples of one window
    (and of overlapping windows) move together, so counting them would call sampling noise drift."""
    if bins < 2 or windows < 1:
        return math.inf
    return max(rules.psi_threshold, chi2_quantile(1 - rules.psi_false_alarm, bins - 1) / windows)


def drift_ratio(row: dict, rules: AlertsSection) -> float:
    """An interval's drift: the largest channel PSI over its own limit (above 1: drifted; NaN without
    data)."""
    ratios = [
        psi / psi_limit(len(share or []), row["windows"] or 0, rules)
        for psi, share in zip(row["psi"] or [], row["ref_share"] or [], strict=False)
        if psi is not None and not math.isnan(psi)
    ]
    return max(ratios) if ratios else math.nan


def mean_entropy(edges: list[float] | None, counts: list[int] | None) -> float:
    """Mean prediction entropy from the histogram, each bin at its middle (NaN without data)."""
    if not edges or not counts or sum(counts) == 0:
        return math.nan
    e = np.asarray(edges, np.float64)
    width = e[1] - e[0] if len(e) > 1 else e[0]
    bounds = np.concatenate([[max(e[0] - width, 0.0)], e, [e[-1] + width]])
    mids = (bounds[:-1] + bounds[1:]) / 2
    return float(np.average(mids, weights=np.asarray(counts, np.float64)))


def by_device(table: pa.Table) -> dict[str, list[dict]]:
    """Rows per device, oldest interval first (read only the columns needed, e.g. COLUMNS)."""
    rows = sorted(table.to_pylist(), key=lambda r: (r["device_id"], r["interval_end"]))
    return {device: list(group) for device, group in groupby(rows, key=lambda r: r["device_id"])}


def evaluate(table: pa.Table, rules: AlertsSection, now: float | None = None) -> list[Alert]:
    """Every alert that holds now, ordered by device then rule."""
    now = time.time() if now is None else now
    alerts = []
    for device, rows in by_device(table).items():
        alerts += _device_alerts(device, rows, rules, now)
    return alerts


def _device_alerts(device: str, rows: list[dict], rules: AlertsSection, now: float) -> list[Alert]:
    out = []
    recent = rows[-rules.psi_intervals :]
    if len(recent) == rules.psi_intervals and all(drift_ratio(r, rules) > 1 for r in recent):
        last = recent[-1]
        bins = max(len(share or []) for share in last["ref_share"] or [[]])
        latest = max_psi(last["psi"])
        out.append(
            Alert(
                "psi",
                device,
                latest,
                f"channel PSI above its no-drift limit for the last {rules.psi_intervals} intervals "
                f"(latest {latest:.3f}, limit {psi_limit(bins, last['windows'] or 0, rules):.3f} "
                f"at {last['windows']} windows)",
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
    entropy = [
        mean_entropy(r["entropy_edges"], r["entropy_counts"]) for r in rows[-rules.entropy_intervals :]
    ]
    if len(entropy) == rules.entropy_intervals and not any(math.isnan(h) for h in entropy):
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
