"""Per-interval scores of the whole fleet dataset, computed column-wise: a day of one-minute
summaries from 500 devices is 720,000 rows, which row by row in Python takes minutes. The alert
rules and the report read these arrays, and turn into Python rows only the few they show."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pyarrow as pa

from edge_ttt.monitor.config import AlertsSection


def chi2_quantile(p: float, dof: int) -> float:
    """The p quantile of chi-square with `dof` degrees of freedom (Wilson-Hilferty; against scipy at
    p = 0.999: 0.4 % off at 15 degrees of freedom, at most 1.8 % from 3 to 63; no scipy on the fleet
    side)."""
    z = NormalDist().inv_cdf(p)
    h = 2 / (9 * dof)
    return dof * max(1 - h + z * math.sqrt(h), 0.0) ** 3


def psi_limit(bins: np.ndarray | int, windows: np.ndarray | int, rules: AlertsSection) -> np.ndarray | float:
    """The PSI above which a channel of an interval counts as drifted: the larger of `psi_threshold`
    and PSI's (1 - psi_false_alarm) quantile without drift at this sample size (inf without bins or
    windows).

    Without drift, n x PSI is close to chi-square with bins - 1 degrees of freedom (PSI is the
    symmetrised KL divergence, Pearson's chi-square / n for small differences; the reference's own
    sample is large enough to ignore). n counts windows, not samples: the samples of one window
    (and of overlapping windows) move together, so counting them would call sampling noise drift."""
    bins, windows = np.asarray(bins), np.asarray(windows, np.float64)
    quantile = np.full(bins.shape, np.inf)
    for b in np.unique(bins[bins >= 2]):
        quantile[bins == b] = chi2_quantile(1 - rules.psi_false_alarm, int(b) - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.where(windows >= 1, np.maximum(rules.psi_threshold, quantile / windows), np.inf)
    return float(limit) if limit.ndim == 0 else limit


def _list(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets from 0) of a list column; a null list is empty, a null value NaN."""
    column = table.column(name).combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values
    if not pa.types.is_list(values.type):
        values = values.to_numpy(zero_copy_only=False).astype(np.float64)
    values = values[offsets[0] : offsets[-1]]
    return values, offsets - offsets[0]


def _row_max(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The max per row of the finite values (NaN for a row without any)."""
    out = np.full(len(offsets) - 1, np.nan)
    nonempty = np.diff(offsets) > 0
    if values.size:
        top = np.maximum.reduceat(np.where(np.isnan(values), -np.inf, values), offsets[:-1][nonempty])
        out[nonempty] = np.where(np.isneginf(top), np.nan, top)
    return out


def _numbers(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.float64)  # null -> NaN


def _mean_entropy(table: pa.Table) -> np.ndarray:
    """Mean prediction entropy per interval from its histogram, each bin at its middle: the outer
    bins run one bin width beyond the outer edges, floored at 0 (NaN without data)."""
    edges, eo = _list(table, "entropy_edges")
    counts, co = _list(table, "entropy_counts")
    n_edges, n_counts = np.diff(eo), np.diff(co)
    out = np.full(len(n_edges), np.nan)
    ok = (n_edges >= 1) & (n_counts == n_edges + 1)
    if not ok.any():
        return out
    rows = np.flatnonzero(ok)
    first, last = edges[eo[rows]], edges[eo[rows + 1] - 1]
    second = np.where(n_edges[rows] > 1, edges[np.minimum(eo[rows] + 1, len(edges) - 1)], 2 * first)
    width = second - first  # one edge only: its own value, as the first bin
    kept = np.flatnonzero(np.repeat(ok, n_edges))
    inner = edges[kept]
    lengths = n_edges[rows]
    starts = np.concatenate([[0], np.cumsum(lengths + 2)[:-1]])
    bounds = np.empty(int((lengths + 2).sum()))
    bounds[starts] = np.maximum(first - width, 0.0)
    bounds[starts + lengths + 1] = last + width
    inner_at = np.ones(len(bounds), bool)
    inner_at[starts] = False
    inner_at[starts + lengths + 1] = False
    bounds[inner_at] = inner
    mids = (bounds[:-1] + bounds[1:]) / 2
    mids = np.delete(mids, (starts + lengths + 1)[:-1])  # pairs across two rows
    weights = counts[np.flatnonzero(np.repeat(ok, n_counts))]
    mid_offsets = np.concatenate([[0], np.cumsum(lengths + 1)])
    total = np.add.reduceat(weights, mid_offsets[:-1])
    weighted = np.add.reduceat(weights * mids, mid_offsets[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        out[rows] = np.where(total > 0, weighted / total, np.nan)
    return out


@dataclass(frozen=True)
class Intervals:
    """The dataset sorted by device, then interval end, and per interval its scores."""

    table: pa.Table
    devices: list[str]
    bounds: np.ndarray  # rows of device i: bounds[i]:bounds[i + 1]
    max_psi: np.ndarray  # the worst channel's PSI
    drift_ratio: np.ndarray  # the worst channel's PSI over its limit: above 1, drifted
    mean_entropy: np.ndarray  # nats

    @classmethod
    def of(cls, table: pa.Table, rules: AlertsSection) -> Intervals:
        table = table.sort_by([("device_id", "ascending"), ("interval_end", "ascending")])
        ids = table.column("device_id").to_numpy(zero_copy_only=False)
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1 if len(ids) else np.array([], np.int64)
        bounds = np.concatenate([[0], change, [len(ids)]]).astype(np.int64)
        psi, po = _list(table, "psi")
        shares, so = _list(table, "ref_share")
        bins_all = np.diff(shares.offsets.to_numpy()) if len(shares) else np.array([], np.int64)
        row = np.repeat(np.arange(table.num_rows), np.diff(po))
        pos = np.arange(len(psi)) - po[row]
        has_ref = pos < np.diff(so)[row]
        bins = np.where(has_ref, bins_all[np.minimum(so[row] + pos, max(len(bins_all) - 1, 0))], 0)
        windows = np.nan_to_num(_numbers(table, "windows"))[row]
        limit = psi_limit(bins, windows, rules)
        return cls(
            table,
            [str(d) for d in ids[bounds[:-1]]],
            bounds,
            _row_max(psi, po),
            _row_max(psi / limit, po),
            _mean_entropy(table),
        )

    def rows(self, i: int, last: int | None = None) -> list[dict]:
        """Device i's intervals as Python rows, oldest first; only the `last` ones when given."""
        start, stop = self.bounds[i], self.bounds[i + 1]
        if last is not None:
            start = max(start, stop - last)
        return self.table.slice(start, stop - start).to_pylist()

    def array(self, name: str) -> np.ndarray:
        """A numeric column of all intervals, in this order (null -> NaN)."""
        return _numbers(self.table, name)

    def scores(self, i: int) -> slice:
        """Device i's part of the score arrays."""
        return slice(int(self.bounds[i]), int(self.bounds[i + 1]))
