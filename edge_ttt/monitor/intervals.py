"""Per-interval scores of the whole fleet dataset, computed column-wise: a day of one-minute
summaries from 500 devices is 720,000 rows, which row by row in Python takes minutes. The alert
rules and the report read these arrays, and turn into Python rows only the few they show."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge_ttt.monitor.config import AlertsSection


def chi2_quantile(p: float, dof: int) -> float:
    """The p quantile of chi-square with `dof` degrees of freedom (Wilson-Hilferty; against scipy at
    p = 0.999: 0.4 % off at 15 degrees of freedom, at most 1.8 % from 3 to 63; no scipy on the fleet
    side)."""
    z = NormalDist().inv_cdf(p)
    h = 2 / (9 * dof)
    return dof * max(1 - h + z * math.sqrt(h), 0.0) ** 3


def psi_limit(bins: np.ndarray | int, windows: np.ndarray | int, rules: AlertsSection) -> np.ndarray | float:
    """The sampling part of the PSI above which a channel of an interval counts as drifted: the larger
    of `psi_threshold` and PSI's (1 - psi_false_alarm) quantile without drift at this sample size (inf
    without bins or windows). `Intervals.of` raises it to the summary's own `psi_limit`, what
    in-distribution devices reach at this size (`edge_ttt.drift.calibration`), where it has one.

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


def _aligned(table: pa.Table, name: str, offsets: np.ndarray) -> np.ndarray:
    """A list column's values laid out as another one's (`offsets`): NaN where a row's list is null
    (an older summary) or of another length."""
    out = np.full(int(offsets[-1]), np.nan)
    if name not in table.column_names:
        return out
    values, own = _list(table, name)
    same = np.flatnonzero(np.diff(own) == np.diff(offsets))
    lengths = np.diff(offsets)[same]
    src = np.repeat(own[same], lengths) + _ramp(lengths)
    dst = np.repeat(offsets[same], lengths) + _ramp(lengths)
    out[dst] = values[src]
    return out


def _ramp(lengths: np.ndarray) -> np.ndarray:
    """0..k-1 for each k in `lengths`, concatenated."""
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum())) - starts


def _row_max(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The max per row of the finite values (NaN for a row without any)."""
    out = np.full(len(offsets) - 1, np.nan)
    nonempty = np.diff(offsets) > 0
    if values.size:
        top = np.maximum.reduceat(np.where(np.isnan(values), -np.inf, values), offsets[:-1][nonempty])
        out[nonempty] = np.where(np.isneginf(top), np.nan, top)
    return out


def sane(values: np.ndarray) -> np.ndarray:
    """Values a count, share or divergence can be; NaN for negative or non-finite ones (a broken
    or forged summary's, stored before the collector refused them: they read as "-210 frames" or
    "PSI is infx its limit")."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values) & (values >= 0), values, np.nan)


def numbers(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64, null and values no count or share can be (`sane`) as NaN."""
    return sane(table.column(name).to_numpy(zero_copy_only=False).astype(np.float64))


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


ReferenceBins = dict[str, list[int]]  # model_sha256 -> bins per channel of its reference
HEAVY = ("ref_share", "ref_limit_psi", "entropy_edges", "entropy_counts")  # scored, then left out of the rows


def _element_bins(table: pa.Table, offsets: np.ndarray, bins: ReferenceBins | None) -> np.ndarray:
    """The reference's bin count for each PSI value (0 where the reference has no such channel):
    from `bins` by the row's model, else from the rows' own `ref_share`."""
    row = np.repeat(np.arange(table.num_rows), np.diff(offsets))
    pos = np.arange(len(row)) - offsets[row]
    if bins is None:
        shares, so = _list(table, "ref_share")
        per_channel = np.diff(shares.offsets.to_numpy()) if len(shares) else np.zeros(1, np.int64)
        has = pos < np.diff(so)[row]
        return np.where(has, per_channel[np.minimum(so[row] + pos, len(per_channel) - 1)], 0)
    models = table.column("model_sha256").combine_chunks().dictionary_encode()
    width = max([len(b) for b in bins.values()] + [1])
    grid = np.zeros((len(models.dictionary) + 1, width + 1), np.int64)  # last row, column: none
    for m, model in enumerate(models.dictionary.to_pylist()):
        grid[m, : len(bins.get(model, []))] = bins.get(model, [])
    model = models.indices.to_numpy(zero_copy_only=False)
    return grid[model[row], np.minimum(pos, width)]


@dataclass(frozen=True)
class Intervals:
    """The dataset sorted by device, then interval end (without the HEAVY columns), and per
    interval its scores."""

    table: pa.Table
    devices: list[str]
    bounds: np.ndarray  # rows of device i: bounds[i]:bounds[i + 1]
    max_psi: np.ndarray  # the worst channel's PSI
    drift_ratio: np.ndarray  # the worst channel's PSI over its limit: above 1, drifted
    mean_entropy: np.ndarray  # nats
    bins: np.ndarray  # the most bins of a channel's reference

    @classmethod
    def of(cls, table: pa.Table, rules: AlertsSection, bins: ReferenceBins | None = None) -> Intervals:
        """`bins`: the references' bin counts per model (`dataset.reference_bins`), so that the
        table need not carry `ref_share`, the largest column by far; None: from `ref_share`."""
        order = pc.sort_indices(
            table, sort_keys=[("device_id", "ascending"), ("interval_end", "ascending")]
        ).to_numpy()
        psi, po = _list(table, "psi")
        psi = sane(psi)
        element_bins = _element_bins(table, po, bins)
        windows = np.nan_to_num(numbers(table, "windows"))[np.repeat(np.arange(table.num_rows), np.diff(po))]
        limit = np.fmax(psi_limit(element_bins, windows, rules), _aligned(table, "psi_limit", po))
        light = table.drop_columns([c for c in HEAVY if c in table.column_names]).take(order)
        ids = light.column("device_id").to_numpy(zero_copy_only=False)
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1 if len(ids) else np.array([], np.int64)
        bounds = np.concatenate([[0], change, [len(ids)]]).astype(np.int64)
        return cls(
            light,
            [str(d) for d in ids[bounds[:-1]]],
            bounds,
            _row_max(psi, po)[order],
            _row_max(psi / limit, po)[order],
            _mean_entropy(table)[order],
            np.nan_to_num(_row_max(element_bins.astype(np.float64), po))[order].astype(np.int64),
        )

    def rows(self, i: int, last: int | None = None) -> list[dict]:
        """Device i's intervals as Python rows, oldest first; only the `last` ones when given."""
        start, stop = self.bounds[i], self.bounds[i + 1]
        if last is not None:
            start = max(start, stop - last)
        return self.table.slice(start, stop - start).to_pylist()

    def array(self, name: str) -> np.ndarray:
        """A numeric column of all intervals, in this order (null -> NaN)."""
        return numbers(self.table, name)

    def array_of(self, name: str, at: slice) -> np.ndarray:
        """A numeric column of the intervals `at` (a device's `scores`), null -> NaN."""
        return numbers(self.table.slice(at.start, at.stop - at.start), name)

    def scores(self, i: int) -> slice:
        """Device i's part of the score arrays."""
        return slice(int(self.bounds[i]), int(self.bounds[i + 1]))

    def sized(self, i: int, min_windows: int) -> np.ndarray:
        """Positions within device i's intervals of those holding at least `min_windows` windows:
        the ones the psi rule judges (a stopping agent's last few windows say little of drift)."""
        return np.flatnonzero(np.nan_to_num(self.array_of("windows", self.scores(i))) >= min_windows)
