"""The report's "reference against current" plot: for the top of the ranking, the worst channel's
share per reference bin in the device's latest interval beside the source's share, so an operator
sees how the input moved (shifted, spread, stuck) and not only that it did."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge_ttt.monitor.figures import finished, small_multiples
from edge_ttt.monitor.health import drift_scores, psi_values
from edge_ttt.monitor.text import shown_id

COLUMNS = [
    "device_id",
    "interval_end",
    "channels",
    "psi",
    "psi_limit",
    "channel_hist_edges",
    "channel_hist_counts",
    "ref_share",
]
DEVICES = 6  # small multiples: the top of the ranking


def latest_rows(table: pa.Table, devices: list[str]) -> dict[str, dict]:
    """Each device's latest row among `table`'s (which holds COLUMNS)."""
    mine = table.filter(pc.is_in(table.column("device_id"), pa.array(devices, pa.string())))
    out: dict[str, dict] = {}
    for row in mine.select(COLUMNS).to_pylist():
        if row["device_id"] not in out or row["interval_end"] > out[row["device_id"]]["interval_end"]:
            out[row["device_id"]] = row
    return out


def worst_channel(row: dict) -> int | None:
    """The channel whose PSI is furthest above its limit (the largest PSI without limits)."""
    scores = drift_scores(row)
    return int(np.nanargmax(scores)) if np.isfinite(scores).any() else None


def _bins(row: dict, c: int) -> tuple[np.ndarray, np.ndarray, list[float]] | None:
    """(reference share, current share, inner edges) of channel c; None where the row's lists do
    not fit together (a summary whose channels outrun its reference, as a forged one may: it made
    the whole report fail)."""
    lists = [row[k] or [] for k in ("ref_share", "channel_hist_counts", "channel_hist_edges")]
    if any(c >= len(values) for values in lists) or not lists[0][c]:
        return None
    reference = np.asarray(lists[0][c], np.float64)
    counts = np.asarray(lists[1][c] or np.zeros(len(reference)), np.float64)
    edges = lists[2][c] or []
    if len(counts) != len(reference) or len(edges) not in (0, len(reference) - 1):
        return None
    current = counts / counts.sum() if counts.sum() else np.zeros(len(reference))
    return reference, current, edges


def plot(devices: list[str], rows: dict[str, dict]) -> str | None:
    """Small multiples of reference against current share per bin; None without any histogram."""
    shown = [(d, rows[d], c) for d in devices if d in rows and (c := worst_channel(rows[d])) is not None]
    shown = [(d, r, c, bins) for d, r, c in shown if (bins := _bins(r, c)) is not None]
    if not shown:
        return None
    fig, axes = small_multiples(len(shown), 4, 2.6)
    for ax, (device, row, c, (reference, current, edges)) in zip(axes.flat, shown, strict=False):
        at = np.arange(len(reference))
        ax.bar(at - 0.2, 100 * reference, width=0.4, label="reference (source)", color="#999")
        ax.bar(at + 0.2, 100 * current, width=0.4, label="latest interval", color="#c33")
        if edges:
            ax.set_xticks(at[1:] - 0.5, [f"{e:.2g}" for e in edges], fontsize="x-small", rotation=90)
        names = row["channels"] or []
        name, psi = str(names[c]) if c < len(names) else f"channel {c}", psi_values(row)[c]
        ax.set_title(f"{shown_id(device)}: {shown_id(name)} (PSI {psi:.2f})", fontsize="medium")
    return finished(fig, axes, "share of samples, %", 0.92)
