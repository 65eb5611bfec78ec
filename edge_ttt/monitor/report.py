"""The fleet report: one self-contained HTML file (PNG plots embedded as base64, no scripts, no
external resources), so it can be mailed, archived or opened on a machine without network."""

from __future__ import annotations

import datetime as dt
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import matplotlib.ticker
import numpy as np
import pyarrow as pa

from edge_ttt.atomic import atomic_write
from edge_ttt.monitor import distributions
from edge_ttt.monitor.alerts import COLUMNS, Alert, evaluate_intervals
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.estimates import Estimates, fleet_estimates, rolling
from edge_ttt.monitor.figures import finished, plt, png, small_multiples
from edge_ttt.monitor.intervals import Intervals, ReferenceBins

REPORT_COLUMNS = [*COLUMNS, "interval_start", "fallbacks", "windows_on_source"]  # COLUMNS: estimates too
STAMP = "%Y-%m-%d %H:%M:%S UTC"
COUNTS = (
    "windows",
    "resets",
    "rollbacks",
    "skipped_unreliable",
    "skipped_no_drift",
    "fallbacks",
    "windows_on_source",
    "estimated_windows",
    "source_estimated_windows",
)
ESTIMATES = ("estimated_accuracy", "source_estimated_accuracy")
EXPLAINING_CHANNELS = 3  # the worst channels named next to a device in the ranking


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
    estimated_accuracy: float | None  # label-free, served predictions, latest intervals
    source_estimated_accuracy: float | None  # the same for the source model
    reference_accuracy: float | None  # what the device is compared with (see `health`)
    fallbacks: int
    windows_on_source: int
    worst_channels: tuple[tuple[str, str], ...]  # (channel, latest PSI), worst first: the explanation
    drifting_since: str | None  # start of the current run of drifted intervals; None: latest not drifted

    @property
    def accuracy_lost(self) -> float | None:
        """The ranking score: reference minus the lower of the two estimates, so a device whose
        drift costs the source model ranks by that cost even where adaptation makes up for it
        (a reset or a fallback hands it back to that model)."""
        known = [e for e in (self.estimated_accuracy, self.source_estimated_accuracy) if e is not None]
        if self.reference_accuracy is None or not known:
            return None
        return self.reference_accuracy - min(known)

    @property
    def gain(self) -> float | None:
        """Served minus source estimate on the same windows: what adaptation bought."""
        if self.estimated_accuracy is None or self.source_estimated_accuracy is None:
            return None
        return self.estimated_accuracy - self.source_estimated_accuracy


def _worst_channels(row: dict) -> tuple[tuple[str, str], ...]:
    """(channel, PSI as text) of the latest interval, worst first."""
    named = [
        (name, value)
        for name, value in zip(row["channels"] or [], row["psi"] or [], strict=False)
        if value is not None and not math.isnan(value)
    ]
    worst = sorted(named, key=lambda nv: -nv[1])[:EXPLAINING_CHANNELS]
    return tuple((name, f"{value:.2f}") for name, value in worst)


def drifting_since(intervals: Intervals, i: int, min_windows: int = 1) -> str | None:
    """The start of the first interval of the run of drifted intervals that reaches the latest one,
    judged as the psi rule judges: intervals of fewer than `min_windows` windows neither start nor
    break a run."""
    scores = intervals.scores(i)
    sized = np.flatnonzero(np.nan_to_num(intervals.array_of("windows", scores)) >= min_windows)
    drifted = intervals.drift_ratio[scores][sized] > 1
    if not sized.size or not drifted[-1]:
        return None
    calm = np.flatnonzero(~drifted)
    first = sized[calm[-1] + 1] if calm.size else sized[0]
    return intervals.table.column("interval_start")[scores.start + int(first)].as_py().strftime(STAMP)


def health(
    intervals: Intervals,
    rules: AlertsSection | None = None,
    reference_accuracy: float | None = None,
    estimates: list[Estimates] | None = None,
) -> list[DeviceHealth]:
    """Devices ranked by estimated accuracy lost, worst first, then by drift score; devices without an
    estimate last. Estimates are over the latest intervals holding `estimate_windows` windows
    (`edge_ttt.monitor.estimates`). The reference is the bundle's validation accuracy when given,
    else the one the summaries carry (since version 4; before, no loss is known)."""
    rules = rules or AlertsSection()
    fleet = fleet_estimates(intervals, rules.estimate_windows) if estimates is None else estimates
    col = {
        name: np.nan_to_num(intervals.array(name)) if name in COUNTS else intervals.array(name)
        for name in (*COUNTS, *ESTIMATES)
    }
    out = []
    for i, device in enumerate(intervals.devices):
        at = intervals.scores(i)
        windows = int(col["windows"][at].sum())
        skipped = col["skipped_unreliable"][at].sum() + col["skipped_no_drift"][at].sum()
        entropy = intervals.mean_entropy[at]
        ok = ~np.isnan(entropy)
        trend = float(np.polyfit(np.flatnonzero(ok), entropy[ok], 1)[0]) if ok.sum() >= 2 else math.nan
        estimates = fleet[i]
        reference = reference_accuracy if reference_accuracy is not None else estimates.reference
        (last,) = intervals.rows(i, last=1)
        out.append(
            DeviceHealth(
                device,
                float(intervals.max_psi[at][-1]),
                last["interval_end"].strftime(STAMP),
                at.stop - at.start,
                windows,
                int(col["resets"][at].sum()),
                int(col["rollbacks"][at].sum()),
                skipped / windows if windows else math.nan,
                trend,
                estimates.served,
                estimates.source,
                reference,
                int(col["fallbacks"][at].sum()),
                int(col["windows_on_source"][at].sum()),
                _worst_channels(last),
                drifting_since(intervals, i, rules.psi_min_windows),
            )
        )

    def rank(h: DeviceHealth) -> tuple:
        lost, score = h.accuracy_lost, h.score
        return (
            lost is None,
            -(lost or 0.0),
            math.isnan(score),
            -(0.0 if math.isnan(score) else score),
            h.device,
        )

    return sorted(out, key=rank)


@dataclass(frozen=True)
class FleetSummary:
    devices: int
    drifting: int  # a psi alert holds
    losing: int  # served predictions estimated to lose more than the rule's accuracy_loss
    rescued: int  # the source model estimated to lose more than that, the served predictions not
    helped: int  # served estimate above the source estimate
    compared: int  # devices with both estimates
    reference: str  # where the reference accuracy comes from, in words


def fleet_summary(
    ranked: list[DeviceHealth], alerts: list[Alert], rules: AlertsSection, reference_given: bool
) -> FleetSummary:
    gains = [h.gain for h in ranked if h.gain is not None]
    limit = rules.accuracy_loss

    def lost(h: DeviceHealth, estimate: float | None) -> bool:
        return None not in (h.reference_accuracy, estimate) and h.reference_accuracy - estimate > limit

    return FleetSummary(
        devices=len(ranked),
        drifting=len({a.device for a in alerts if a.rule == "psi"}),
        losing=sum(1 for h in ranked if lost(h, h.estimated_accuracy)),
        rescued=sum(
            1
            for h in ranked
            if lost(h, h.source_estimated_accuracy)
            and h.estimated_accuracy is not None
            and not lost(h, h.estimated_accuracy)
        ),
        helped=sum(1 for g in gains if g > 0),
        compared=len(gains),
        reference=(
            "the bundle's validation accuracy"
            if reference_given
            else "the source model's validation accuracy, as the summaries carry it (summaries before "
            "version 4 do not: pass --bundle)"
        ),
    )


HEATMAP_DEVICES = 40  # rows of the heat map: the top of the ranking, numbers still legible


def heatmap(ranked: list[DeviceHealth], intervals: Intervals) -> str:
    """Latest PSI per device (rows, ranked) and channel (columns, the union over devices), the value
    written in each cell."""
    shown = ranked[:HEATMAP_DEVICES]
    latest = [intervals.rows(intervals.devices.index(h.device), last=1)[0] for h in shown]
    channels = sorted({c for last in latest for c in last["channels"] or []})
    grid = np.full((len(shown), len(channels)), np.nan)
    for i, last in enumerate(latest):
        for name, value in zip(last["channels"] or [], last["psi"] or [], strict=False):
            grid[i, channels.index(name)] = np.nan if value is None else value
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * max(len(channels), 1), 1 + 0.35 * max(len(shown), 1)))
    image = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0)
    top = np.nanmax(grid) if np.isfinite(grid).any() else 1.0
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            color = "white" if value > 0.6 * top else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small", color=color)
    ax.set_xticks(range(len(channels)), channels)
    ax.set_yticks(range(len(shown)), [h.device for h in shown])
    fig.colorbar(image, ax=ax, label="PSI (latest interval)")
    return png(fig)


def _ends(intervals: Intervals, at: slice) -> np.ndarray:
    return intervals.table.column("interval_end").slice(at.start, at.stop - at.start).to_numpy()


OPEN_ALERTS = 20  # more alerts than this: listed folded, so that the ranking stays near the top
ACCURACY_DEVICES = 12  # small multiples of estimated accuracy over time: the top of the ranking


def band(share: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Percent, a share's sampling band: +- 3 standard errors over its windows, as NannyML draws its
    chunks' (too narrow where windows move together: a floor on the uncertainty, not its size)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = 3 * np.sqrt(share * (1 - share) / np.maximum(windows, 1))
    return 100 * np.clip(share - spread, 0, 1), 100 * np.clip(share + spread, 0, 1)


def accuracy_over_time(ranked: list[DeviceHealth], intervals: Intervals, span: int) -> str | None:
    """Per top-ranked device, the served and source estimates at each interval (each over the latest
    `span` windows up to it) and the reference; None when no device has an estimate."""
    shown = [h for h in ranked if h.estimated_accuracy is not None][:ACCURACY_DEVICES]
    if not shown:
        return None
    fig, axes = small_multiples(len(shown), 4, 2.4, sharey=True)
    for ax, h in zip(axes.flat, shown, strict=False):
        i = intervals.devices.index(h.device)
        ends, estimates = _ends(intervals, intervals.scores(i)), rolling(intervals, i, span)
        for values, label in (
            (estimates.served, "served (estimate)"),
            (estimates.source, "source model (estimate)"),
        ):
            (line,) = ax.plot(ends, 100 * values, marker=".", label=label)
            ax.fill_between(
                ends, *band(values, estimates.windows), color=line.get_color(), alpha=0.15, linewidth=0
            )
        if h.reference_accuracy is not None:
            ax.axhline(
                100 * h.reference_accuracy, color="grey", linestyle="--", linewidth=1, label="reference"
            )
        ax.set_title(h.device, fontsize="medium")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    return finished(fig, axes, "accuracy, %", 0.94)


TIMELINE_DEVICES = 12  # lines in the drift-over-time plot: the top of the ranking, readable


def timeline(ranked: list[DeviceHealth], intervals: Intervals) -> str:
    """Drift per interval of the top-ranked devices, as the worst channel's PSI over its
    sample-size-aware limit: above 1 the interval counts as drifted."""
    fig, ax = plt.subplots(figsize=(10, 4))
    for h in ranked[:TIMELINE_DEVICES]:
        at = intervals.scores(intervals.devices.index(h.device))
        ax.plot(
            _ends(intervals, at),
            intervals.drift_ratio[at],
            marker=".",
            label=h.device,
        )
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="drift limit")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylim(bottom=0)
    ax.set_ylabel("max channel PSI / its limit")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.autofmt_xdate()
    return png(fig)


TEMPLATE = jinja2.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge-ttt fleet drift report</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td{white-space:nowrap}
td:first-child{text-align:left}
.alert{color:#a00}</style></head><body>
<h1>Fleet drift report</h1>
<p>{{ devices|length }} devices, {{ intervals }} summaries, generated {{ generated }}.</p>
<h2>Fleet summary</h2>
<ul id="summary">
<li><b>{{ summary.devices }}</b> devices</li>
<li><b>{{ summary.drifting }}</b> drifting (a drift alert holds)</li>
<li><b>{{ summary.losing }}</b> estimated to serve predictions more than {{ pts(rules.accuracy_loss) }}
points less accurate than the reference</li>
<li><b>{{ summary.rescued }}</b> rescued by adaptation (the source model estimated to lose more than
that, the served predictions not)</li>
<li><b>{{ summary.helped }}</b> of {{ summary.compared }} with both estimates where adaptation helped
(served estimate above the source model's)</li>
</ul>
<p>Accuracy lost: the reference minus the lower of the label-free estimates of the served predictions
and of the source model, over each device's latest {{ rules.estimate_windows }} windows;
reference: {{ summary.reference }}.</p>
<h2>Alerts</h2>
{% if alerts %}<p id="alert-counts">{% for rule, n in alert_counts %}<b>{{ n }}</b> {{ rule }}
{%- if not loop.last %}, {% endif %}{% endfor %} ({{ alerts|length }} in all; the rules:
docs/monitoring.md)</p>
<details{% if alerts|length <= open_alerts %} open{% endif %}><summary>every alert, by device</summary><ul>
{% for a in alerts %}<li class="alert"><b>{{ a.device }}</b> [{{ a.rule }}]: {{ a.message }}</li>
{% endfor %}</ul></details>{% else %}<p>None.</p>{% endif %}
<h2>Devices ranked by estimated accuracy lost</h2>
<table id="ranking"><tr><th>device</th><th>accuracy lost, pts</th><th>estimated accuracy %</th>
<th>source estimated %</th><th>gain from adaptation, pts</th><th>drift (max PSI)</th>
<th>worst channels (PSI)</th><th>drifting since</th><th>last summary</th><th>intervals</th></tr>
{% for h in devices %}<tr><td>{{ h.device }}</td><td>{{ pts(h.accuracy_lost) }}</td>
<td>{{ pts(h.estimated_accuracy) }}</td><td>{{ pts(h.source_estimated_accuracy) }}</td>
<td>{{ pts(h.gain) }}</td><td>{{ fmt(h.score) }}</td>
<td>{{ h.worst_channels|map("join", " ")|join(", ") }}</td><td>{{ h.drifting_since or "-" }}</td>
<td>{{ h.last_seen }}</td><td>{{ h.intervals }}</td></tr>
{% endfor %}</table>
{% if accuracy %}<h2>Estimated accuracy over time{% if devices|length > accuracy_devices %} (the top
{{ accuracy_devices }} of the ranking){% endif %}</h2>
<img alt="estimated accuracy over time per device" src="data:image/png;base64,{{ accuracy }}">{% endif %}
<h2>Per-channel drift (latest interval){% if devices|length > heatmap_devices %}, the top
{{ heatmap_devices }} of the ranking{% endif %}</h2>
<img alt="per-channel PSI heat map" src="data:image/png;base64,{{ heatmap }}">
<h2>Reference against current: the worst channel of the top {{ distribution_devices }}</h2>
{% if distribution %}<img alt="worst channel, reference against latest interval"
src="data:image/png;base64,{{ distribution }}">{% else %}<p>Not shown: the summaries' histograms
were not read (run <code>edge-ttt monitor report</code> on the dataset).</p>{% endif %}
<h2>Drift over time{% if devices|length > timeline_devices %} (the top {{ timeline_devices }} of the
ranking){% endif %}</h2>
<img alt="drift over time per device" src="data:image/png;base64,{{ timeline }}">
<h2>Adaptation health</h2>
<table id="health"><tr><th>device</th><th>windows</th><th>resets</th><th>rollbacks</th><th>skipped share</th>
<th>entropy trend (nats/interval)</th><th>fallbacks</th><th>windows on source</th>
<th>estimated accuracy (recent)</th><th>source estimated accuracy (recent)</th></tr>
{% for h in devices %}<tr><td>{{ h.device }}</td><td>{{ h.windows }}</td><td>{{ h.resets }}</td>
<td>{{ h.rollbacks }}</td><td>{{ fmt(h.skipped_share) }}</td><td>{{ fmt(h.entropy_trend) }}</td>
<td>{{ h.fallbacks }}</td><td>{{ h.windows_on_source }}</td><td>{{ fmt(h.estimated_accuracy) }}</td>
<td>{{ fmt(h.source_estimated_accuracy) }}</td></tr>
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


def _pts(value: float | None) -> str:
    """A share as percentage points, one decimal."""
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{100 * value:.1f}"
    return "0.0" if text == "-0.0" else text


Histograms = Callable[[list[str]], pa.Table]  # devices -> their rows with distributions.COLUMNS


def render(
    table: pa.Table,
    rules: AlertsSection,
    now: float | None = None,
    reference_accuracy: float | None = None,
    bins: ReferenceBins | None = None,
    histograms: Histograms | None = None,
) -> tuple[str, list[Alert]]:
    """The HTML and the alerts it shows; `reference_accuracy`: the bundle's validation accuracy;
    `histograms`: reads the rows of a few devices with their histograms, where `table` lacks them
    (a fleet's histograms are most of its bytes: the command reads them for the plotted devices only)."""
    intervals = Intervals.of(table, rules, bins)
    estimates = fleet_estimates(intervals, rules.estimate_windows)
    ranked = health(intervals, rules, reference_accuracy, estimates)
    top = [h.device for h in ranked[: distributions.DEVICES]]
    held = set(distributions.COLUMNS) <= set(table.column_names)
    rows = table if held else (histograms(top) if histograms is not None else None)
    alerts = evaluate_intervals(intervals, rules, now, estimates)
    stamp = (
        dt.datetime.now(dt.timezone.utc) if now is None else dt.datetime.fromtimestamp(now, dt.timezone.utc)
    )
    html = TEMPLATE.render(
        devices=ranked,
        intervals=len(table),
        generated=stamp.strftime(STAMP),
        alerts=alerts,
        rules=rules,
        summary=fleet_summary(ranked, alerts, rules, reference_accuracy is not None),
        heatmap=heatmap(ranked, intervals),
        timeline=timeline(ranked, intervals),
        fmt=_fmt,
        pts=_pts,
        timeline_devices=TIMELINE_DEVICES,
        heatmap_devices=HEATMAP_DEVICES,
        accuracy_devices=ACCURACY_DEVICES,
        accuracy=accuracy_over_time(ranked, intervals, rules.estimate_windows),
        distribution=None if rows is None else distributions.plot(top, distributions.latest_rows(rows, top)),
        distribution_devices=len(top),
        alert_counts=sorted(Counter(a.rule for a in alerts).items()),
        open_alerts=OPEN_ALERTS,
    )
    return html, alerts


def write_report(
    table: pa.Table,
    rules: AlertsSection,
    out: str | os.PathLike[str],
    now: float | None = None,
    reference_accuracy: float | None = None,
    bins: ReferenceBins | None = None,
    histograms: Histograms | None = None,
) -> list[Alert]:
    """`bins`: see Intervals.of (without them the table must hold `ref_share`); `histograms`: see render."""
    html, alerts = render(table, rules, now, reference_accuracy, bins, histograms)
    atomic_write(Path(out), lambda f: f.write(html.encode("utf-8")))
    return alerts
