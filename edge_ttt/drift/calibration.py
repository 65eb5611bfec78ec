"""What "no drift" looks like at a given interval size: the PSI that in-distribution devices reach.

A summary's PSI compares one interval of one device with the pooled source. Even without any
sensor fault it is far from zero: a minute of one wearer holds one or two activities and one
person's way of moving, and consecutive windows move together. A limit from sampling theory
alone (chi-square over the window count) calls every new wearer drifted. So the export measures
it: each source device in turn is held out, its stream cut into intervals of n consecutive windows,
and each interval's PSI taken against the shares of the other devices, as a summary on a device
would score it. The limit at n is a high quantile of those PSIs per channel, stored in the
manifest (`reference.drift_limits`); the agent ships it in every summary at the interval's size.

Pure numpy: the export computes it, the agent and the monitor only read it.
"""

from __future__ import annotations

import numpy as np

from edge_ttt.drift.stats import psi

GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # interval sizes in windows
QUANTILE = 0.99
MIN_CHUNKS = 20  # intervals of one size needed to state a quantile for it


def window_counts(x: np.ndarray, edges: list[np.ndarray]) -> list[np.ndarray]:
    """Per channel, each window's sample counts over the channel's bins: [n_windows, bins].
    Non-finite samples are not counted, as in the summaries' histograms."""
    out = []
    for c, e in enumerate(edges):
        values = x[:, c, :]
        bins = np.searchsorted(e, np.where(np.isfinite(values), values, np.nan), side="right")
        bins = np.where(np.isfinite(values), bins, len(e) + 1)  # a bin past the last, dropped
        rows = np.repeat(np.arange(len(x)), values.shape[1])
        counts = np.zeros((len(x), len(e) + 2), np.int64)
        np.add.at(counts, (rows, bins.ravel()), 1)
        out.append(counts[:, :-1])
    return out


def held_out_psi(counts: np.ndarray, devices: np.ndarray, n: int) -> np.ndarray:
    """Every interval of n consecutive windows of each device (stride n/4), its PSI against the
    other devices' pooled shares, for one channel. `counts` [windows, bins] in each device's time
    order; empty when no device has n windows or there is only one device."""
    out = []
    names = np.unique(devices)
    if len(names) < 2:
        return np.array([])
    for d in names:
        own = devices == d
        rest = counts[~own].sum(axis=0)
        if own.sum() < n or rest.sum() == 0:
            continue
        share = rest / rest.sum()
        cum = np.vstack([np.zeros((1, counts.shape[1]), np.int64), np.cumsum(counts[own], axis=0)])
        out += [psi(cum[s + n] - cum[s], share) for s in range(0, int(own.sum()) - n + 1, max(1, n // 4))]
    return np.array(out)


def drift_limits(
    x: np.ndarray,
    devices: np.ndarray,
    edges: list[np.ndarray],
    grid: tuple[int, ...] = GRID,
    quantile: float = QUANTILE,
) -> dict | None:
    """The manifest's `reference.drift_limits`: per interval size of the grid that enough held-out
    intervals reach, the `quantile` of their PSI per channel, made non-increasing in the size (a
    longer interval averages more). `x` [windows, channels, length], windows of each device in time
    order. None with fewer than two devices (nothing to hold out).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((400, 1, 16))
    >>> limits = drift_limits(x, np.repeat(["a", "b", "c", "d"], 100), [np.array([-1.0, 0.0, 1.0])])
    >>> limits["windows"][:3], limits["devices"]
    ([1, 2, 4], 4)
    >>> psi_1, psi_16 = limits["psi"][0][0], limits["psi"][4][0]
    >>> psi_1 > psi_16 > 0
    True
    """
    if len(np.unique(devices)) < 2:
        return None
    counts = window_counts(x, edges)
    windows, table, chunks = [], [], []
    for n in grid:
        per_channel = [held_out_psi(c, devices, n) for c in counts]
        if len(per_channel[0]) < MIN_CHUNKS:
            break
        windows.append(n)
        chunks.append(len(per_channel[0]))
        table.append([float(np.quantile(v, quantile)) for v in per_channel])
    if not windows:
        return None
    table = np.minimum.accumulate(np.array(table), axis=0)  # non-increasing in n
    return {
        "windows": windows,
        "quantile": quantile,
        "psi": table.tolist(),
        "intervals": chunks,
        "devices": len(np.unique(devices)),
    }


def limit_at(windows: float, grid: tuple[int, ...], table: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """The per-channel limit at an interval of `windows` windows: interpolated in log size between
    grid points, the first grid point's below it, the last one's beyond it (NaN for no windows).

    >>> limit_at(4, (2, 8), ((1.0,), (0.5,))).tolist()
    [0.75]
    >>> limit_at(100, (2, 8), ((1.0,), (0.5,))).tolist()
    [0.5]
    """
    table_ = np.asarray(table, np.float64)
    if windows < 1 or table_.size == 0:
        return np.full(table_.shape[1] if table_.ndim == 2 else 0, np.nan)
    at = np.log(np.asarray(grid, np.float64))
    return np.array([np.interp(np.log(windows), at, table_[:, c]) for c in range(table_.shape[1])])
