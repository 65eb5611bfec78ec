"""The fleet report: one self-contained HTML file (PNG plots embedded as base64, no scripts, no
external resources), so it can be mailed, archived or opened on a machine without network."""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and in CI
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa

from edge_ttt.atomic import atomic_write
from edge_ttt.monitor.alerts import COLUMNS, Alert, by_device, evaluate, max_psi, mean_entropy
from edge_ttt.monitor.config import AlertsSection

REPORT_COLUMNS = [*COLUMNS, "channels", "estimated_accuracy", "source_estimated_accuracy"]


@dataclass(frozen=True)
class DeviceHealth:
    device: str
    score: float  # max channel PSI of the latest interval
    last_seen: str
    intervals: int
    windows: int
    resets: int
    rollbacks: int
    skipped_share: float
    entropy_trend: float  # nats per interval, least-squares slope of the mean entropy
    estimated_accuracy: float | None  # label-free, served predictions, latest interval
    source_estimated_accuracy: float | None  # the same for the source model


def health(rows_by_device: dict[str, list[dict]]) -> list[DeviceHealth]:
    """Devices ranked by current drift score, worst first; devices without a score last."""
    out = []
    for device, rows in rows_by_device.items():
        windows = sum(r["windows"] or 0 for r in rows)
        skipped = sum((r["skipped_unreliable"] or 0) + (r["skipped_no_drift"] or 0) for r in rows)
        entropy = np.array([mean_entropy(r["entropy_edges"], r["entropy_counts"]) for r in rows])
        ok = ~np.isnan(entropy)
        trend = float(np.polyfit(np.flatnonzero(ok), entropy[ok], 1)[0]) if ok.sum() >= 2 else math.nan
        out.append(
            DeviceHealth(
                device,
                max_psi(rows[-1]["psi"]),
                rows[-1]["interval_end"].strftime("%Y-%m-%d %H:%M:%S UTC"),
                len(rows),
                windows,
                sum(r["resets"] or 0 for r in rows),
                sum(r["rollbacks"] or 0 for r in rows),
                skipped / windows if windows else math.nan,
                trend,
                rows[-1]["estimated_accuracy"],
                rows[-1]["source_estimated_accuracy"],
            )
        )
    return sorted(
        out, key=lambda h: (math.isnan(h.score), -h.score if not math.isnan(h.score) else 0, h.device)
    )


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def heatmap(ranked: list[DeviceHealth], rows_by_device: dict[str, list[dict]]) -> str:
    """Latest PSI per device (rows, ranked) and channel (columns, the union over devices)."""
    channels = sorted({c for rows in rows_by_device.values() for c in rows[-1]["channels"] or []})
    grid = np.full((len(ranked), len(channels)), np.nan)
    for i, h in enumerate(ranked):
        last = rows_by_device[h.device][-1]
        for name, value in zip(last["channels"] or [], last["psi"] or [], strict=False):
            grid[i, channels.index(name)] = np.nan if value is None else value
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * max(len(channels), 1), 1 + 0.4 * max(len(ranked), 1)))
    image = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0)
    ax.set_xticks(range(len(channels)), channels)
    ax.set_yticks(range(len(ranked)), [h.device for h in ranked])
    fig.colorbar(image, ax=ax, label="PSI (latest interval)")
    return _png(fig)


def timeline(ranked: list[DeviceHealth], rows_by_device: dict[str, list[dict]], threshold: float) -> str:
    fig, ax = plt.subplots(figsize=(9, 4))
    for h in ranked:
        rows = rows_by_device[h.device]
        ax.plot(
            [r["interval_end"] for r in rows], [max_psi(r["psi"]) for r in rows], marker=".", label=h.device
        )
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="alert threshold")
    ax.set_ylabel("max channel PSI")
    ax.legend(fontsize="small", ncol=2)
    fig.autofmt_xdate()
    return _png(fig)


TEMPLATE = jinja2.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge-ttt fleet drift report</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}
.alert{color:#a00}</style></head><body>
<h1>Fleet drift report</h1>
<p>{{ devices|length }} devices, {{ intervals }} summaries, generated {{ generated }}.</p>
<h2>Alerts</h2>
{% if alerts %}<ul>{% for a in alerts %}
<li class="alert"><b>{{ a.device }}</b> [{{ a.rule }}]: {{ a.message }}</li>
{% endfor %}</ul>{% else %}<p>None.</p>{% endif %}
<h2>Devices ranked by current drift</h2>
<table id="ranking"><tr><th>device</th><th>drift score (max PSI)</th><th>last summary</th>
<th>intervals</th></tr>
{% for h in devices %}<tr><td>{{ h.device }}</td><td>{{ fmt(h.score) }}</td><td>{{ h.last_seen }}</td>
<td>{{ h.intervals }}</td></tr>
{% endfor %}</table>
<h2>Per-channel drift (latest interval)</h2>
<img alt="per-channel PSI heat map" src="data:image/png;base64,{{ heatmap }}">
<h2>Drift over time</h2>
<img alt="drift over time per device" src="data:image/png;base64,{{ timeline }}">
<h2>Adaptation health</h2>
<table id="health"><tr><th>device</th><th>windows</th><th>resets</th><th>rollbacks</th><th>skipped share</th>
<th>entropy trend (nats/interval)</th><th>estimated accuracy (latest)</th>
<th>source estimated accuracy (latest)</th></tr>
{% for h in devices %}<tr><td>{{ h.device }}</td><td>{{ h.windows }}</td><td>{{ h.resets }}</td>
<td>{{ h.rollbacks }}</td><td>{{ fmt(h.skipped_share) }}</td><td>{{ fmt(h.entropy_trend) }}</td>
<td>{{ fmt(h.estimated_accuracy) }}</td><td>{{ fmt(h.source_estimated_accuracy) }}</td></tr>
{% endfor %}</table>
</body></html>
""",
    autoescape=True,
)


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def render(table: pa.Table, rules: AlertsSection, now: float | None = None) -> tuple[str, list[Alert]]:
    """The HTML and the alerts it shows."""
    rows_by_device = by_device(table)
    ranked = health(rows_by_device)
    alerts = evaluate(table, rules, now)
    stamp = (
        dt.datetime.now(dt.timezone.utc) if now is None else dt.datetime.fromtimestamp(now, dt.timezone.utc)
    )
    html = TEMPLATE.render(
        devices=ranked,
        intervals=len(table),
        generated=stamp.strftime("%Y-%m-%d %H:%M:%S UTC"),
        alerts=alerts,
        heatmap=heatmap(ranked, rows_by_device),
        timeline=timeline(ranked, rows_by_device, rules.psi_threshold),
        fmt=_fmt,
    )
    return html, alerts


def write_report(
    table: pa.Table, rules: AlertsSection, out: str | os.PathLike[str], now: float | None = None
) -> list[Alert]:
    html, alerts = render(table, rules, now)
    atomic_write(Path(out), lambda f: f.write(html.encode("utf-8")))
    return alerts
