"""The fleet report: one self-contained HTML file (PNG plots embedded as base64, no scripts, no
external resources), so it can be mailed, archived or opened on a machine without network."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jinja2
import numpy as np
import pyarrow as pa

from edge_ttt.atomic import atomic_write
from edge_ttt.monitor import clocks, distributions
from edge_ttt.monitor.alerts import COLUMNS, Alert, evaluate_intervals
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.estimates import fleet_estimates
from edge_ttt.monitor.health import fleet_summary, health
from edge_ttt.monitor.intervals import Intervals, ReferenceBins, numbers
from edge_ttt.monitor.plots import (
    ACCURACY_DEVICES,
    HEATMAP_DEVICES,
    TIMELINE_DEVICES,
    accuracy_over_time,
    heatmap,
    timeline,
)
from edge_ttt.monitor.text import shown_id, visible

REPORT_COLUMNS = [  # COLUMNS: estimates too
    *COLUMNS,
    "interval_start",
    "fallbacks",
    "windows_on_source",
    "spool_dropped",
    "frames_missing",
    "mounting",
]
OPEN_ALERTS = 20  # more alerts than this: listed folded, so that the ranking stays near the top
OPEN_ROWS = 25  # rows of the ranking and of the health table shown open; the rest folded below them


TEMPLATE = jinja2.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge-ttt fleet drift report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
img{max-width:100%;height:auto}.wide{overflow-x:auto}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child{text-align:left;white-space:nowrap}
.alert{color:#a00;overflow-wrap:anywhere}</style></head><body>
<h1>Fleet drift report</h1>
<p>{{ devices|length }} devices, {{ intervals }} summaries{% if since %} received since {{ since }} (and
the last ones of devices silent since){% endif %}, generated {{ generated }}.</p>
{%- macro folded(id, rows, head, row) %}<div class="wide"><table id="{{ id }}">{{ head() }}
{% for h in rows[:open_rows] %}{{ row(h) }}{% endfor %}</table></div>
{% if rows|length > open_rows %}<details id="{{ id }}-more"><summary>the other {{ rows|length - open_rows }}
devices, in the ranking's order</summary><div class="wide"><table id="{{ id }}-rest">{{ head() }}
{% for h in rows[open_rows:] %}{{ row(h) }}{% endfor %}</table></div></details>{% endif %}
{%- endmacro %}
<h2>Fleet summary</h2>
<ul id="summary">
<li><b>{{ summary.devices }}</b> devices</li>
<li id="silent"><b>{{ summary.silent }}</b> silent (no summary received for more than
{{ duration(rules.silent_s) }})</li>
<li id="clock"><b>{{ summary.clock_off }}</b> with their clock off (by more than
{{ duration(rules.clock_skew_s) }})</li>
<li><b>{{ summary.drifting }}</b> drifting (a drift alert holds)</li>
<li><b>{{ summary.losing }}</b> estimated to serve predictions more than {{ pts(rules.accuracy_loss) }}
% points less accurate than the reference</li>
<li><b>{{ summary.rescued }}</b> rescued by adaptation (the source model estimated to lose more than
that, the served predictions not)</li>
<li><b>{{ summary.helped }}</b> of {{ summary.compared }} with both estimates where adaptation helped
(served estimate above the source model's)</li>
<li id="lost"><b>{{ lost }}</b> drift summaries lost by the agents before they reached the fleet (an
agent's spool over its bound in a long outage, or a disk that refused them for long; each agent's
later summaries report its losses)</li>
<li id="missing"><b>{{ missing }}</b> sensor frames the agents gave up as missing</li>
</ul>
<p>Accuracy lost: the reference minus the lower of the label-free estimates of the served predictions
and of the source model, over each device's latest {{ rules.estimate_windows }} windows;
reference: {{ summary.reference }}.</p>
{% if undrawn %}<p id="undrawn">{{ undrawn }} summaries of {{ undrawn_devices }} devices are not drawn on
the plots over time: dated more than {{ duration(rules.clock_skew_s) }} ahead of when they arrived,
more than {{ duration(rules.max_late_s) }} before it, or before 1970; their device's clock was off (the
clock alerts name devices whose clock still is).</p>{% endif %}
<h2>Alerts</h2>
{% if alerts %}<p id="alert-counts">{% for rule, n in alert_counts %}<b>{{ n }}</b> {{ rule }}
{%- if not loop.last %}, {% endif %}{% endfor %} ({{ alerts|length }} in all; the rules:
docs/monitoring.md)</p>
<details{% if alerts|length <= open_alerts %} open{% endif %}><summary>every alert, by device</summary><ul>
{% for a in alerts %}<li class="alert"><b>{{ visible(a.device) }}</b> [{{ a.rule }}]: {{ a.message }}</li>
{% endfor %}</ul></details>{% else %}<p>None.</p>{% endif %}
<h2>Devices ranked by estimated accuracy lost</h2>
{%- macro ranking_head() %}<tr><th>device</th><th>accuracy lost, % points</th>
<th>estimated accuracy, %</th>
<th>source estimated, %</th><th>gain from adaptation, % points</th><th>drift (max PSI)</th>
<th>channels over their drift limit (PSI)</th><th>drifting since</th><th>last summary</th>
<th>intervals</th></tr>
{%- endmacro %}
{%- macro ranking_row(h) %}<tr><td>{{ shown(h.device) }}</td><td>{{ loss(h.accuracy_lost) }}</td>
<td>{{ pts(h.estimated_accuracy) }}</td><td>{{ pts(h.source_estimated_accuracy) }}</td>
<td>{{ pts(h.gain) }}</td><td>{{ fmt(h.score) }}</td>
<td>{% for name, psi in h.worst_channels %}{{ shown(name) }} {{ psi }}{% if not loop.last %}, {% endif %}
{%- else %}none{% endfor %}</td><td>{{ h.drifting_since or "-" }}</td>
<td>{{ h.last_seen }}</td><td>{{ h.intervals }}</td></tr>
{% endmacro %}
{{ folded("ranking", devices, ranking_head, ranking_row) }}
{% if accuracy %}<h2>Estimated accuracy over time{% if devices|length > accuracy_devices %} (the top
{{ accuracy_devices }} of the ranking){% endif %}</h2>
<img alt="estimated accuracy over time per device" src="data:image/png;base64,{{ accuracy }}">{% endif %}
<h2>Per-channel drift (latest judged interval){% if devices|length > heatmap_devices %}, the top
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
<p>Shares of windows that took no gradient step: the input looked like the source data (the drift
gate), or the prediction was too uncertain to learn from. The default policy's normalization
statistics adapt on every valid window either way.</p>
{%- macro health_head() %}<tr><th>device</th><th>windows</th><th>resets</th><th>rollbacks</th>
<th>no step: no drift, %</th><th>no step: unreliable, %</th>
<th>entropy trend (nats/interval)</th><th>fallbacks</th><th>windows on source</th>
<th>estimated accuracy (recent), %</th><th>source estimated accuracy (recent), %</th>
<th>mounting found</th><th>white noise found, % of variance</th></tr>
{%- endmacro %}
{%- macro health_row(h) %}<tr><td>{{ shown(h.device) }}</td><td>{{ h.windows }}</td><td>{{ h.resets }}</td>
<td>{{ h.rollbacks }}</td><td>{{ pts(h.no_drift_share) }}</td><td>{{ pts(h.unreliable_share) }}</td>
<td>{{ fmt(h.entropy_trend) }}</td>
<td>{{ h.fallbacks }}</td><td>{{ h.windows_on_source }}</td><td>{{ pts(h.estimated_accuracy) }}</td>
<td>{{ pts(h.source_estimated_accuracy) }}</td><td>{{ visible(h.mounting) if h.mounting else "-" }}</td>
<td>{{ h.noise or "-" }}</td></tr>
{% endmacro %}
{{ folded("health", devices, health_head, health_row) }}
</body></html>
""",
    autoescape=True,
)


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def _pts(value: float | None) -> str:
    """A share as percent (a difference of shares: percentage points), one decimal."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{100 * value:.1f}"
    return "0.0" if text == "-0.0" else text


def _lost(value: float | None) -> str:
    """Accuracy lost in percentage points; an estimate above the reference is no loss, and says by
    how much (a "-16.9 points lost" read as a loss).

    >>> _lost(0.123), _lost(-0.118), _lost(None)
    ('12.3', '0.0 (11.8 above the reference)', 'n/a')
    """
    if value is not None and value < 0 and _pts(-value) != "0.0":
        return f"0.0 ({_pts(-value)} above the reference)"
    return _pts(value)


Histograms = Callable[[list[str]], pa.Table]  # devices -> their rows with distributions.COLUMNS


def render(
    table: pa.Table,
    rules: AlertsSection,
    now: float | None = None,
    reference_accuracy: float | None = None,
    bins: ReferenceBins | None = None,
    histograms: Histograms | None = None,
    since: float | None = None,
    reference_model: str | None = None,
) -> tuple[str, list[Alert]]:
    """The HTML and the alerts it shows; `reference_accuracy`: the bundle's validation accuracy, for
    the devices whose latest summary names `reference_model` (all when None);
    `histograms`: reads the rows of a few devices with their histograms, where `table` lacks them
    (a fleet's histograms are most of its bytes: the command reads them for the plotted devices only);
    `since`: the table holds the summaries received since then (`dataset.read_since`), as the page says."""
    intervals = Intervals.of(table, rules, bins)
    estimates = fleet_estimates(intervals, rules.estimate_windows)
    ranked = health(intervals, rules, reference_accuracy, estimates, reference_model)
    top = [h.device for h in ranked[: distributions.DEVICES]]
    held = set(distributions.COLUMNS) <= set(table.column_names)
    rows = table if held else (histograms(top) if histograms is not None else None)
    now = time.time() if now is None else now
    alerts = evaluate_intervals(intervals, rules, now, estimates)
    ends, received = (clocks.seconds(intervals.table, c) for c in ("interval_end", "received"))
    drawn = clocks.plottable(ends, received, now, rules.clock_skew_s, rules.max_late_s)
    html = TEMPLATE.render(
        devices=ranked,
        intervals=len(table),
        generated=clocks.stamp(now),
        since=None if since is None else clocks.stamp(since),
        alerts=alerts,
        rules=rules,
        summary=fleet_summary(
            ranked, alerts, rules, None if reference_accuracy is None else sum(h.on_bundle for h in ranked)
        ),
        lost=_total(table, "spool_dropped"),
        missing=_total(table, "frames_missing"),
        heatmap=heatmap(ranked, intervals),
        timeline=timeline(ranked, intervals, drawn),
        undrawn=int((~drawn).sum()),
        undrawn_devices=len({intervals.devices[i] for i in _devices_of(intervals, ~drawn)}),
        fmt=_fmt,
        pts=_pts,
        loss=_lost,
        shown=shown_id,
        visible=visible,
        open_rows=OPEN_ROWS,
        duration=clocks.duration,
        timeline_devices=TIMELINE_DEVICES,
        heatmap_devices=HEATMAP_DEVICES,
        accuracy_devices=ACCURACY_DEVICES,
        accuracy=accuracy_over_time(ranked, intervals, rules.estimate_windows, drawn),
        distribution=None if rows is None else distributions.plot(top, distributions.latest_rows(rows, top)),
        distribution_devices=len(top),
        alert_counts=sorted(Counter(a.rule for a in alerts).items()),
        open_alerts=OPEN_ALERTS,
    )
    return html, alerts


def _devices_of(intervals: Intervals, rows: np.ndarray) -> np.ndarray:
    """The device index of each selected row of the score arrays."""
    return np.searchsorted(intervals.bounds, np.flatnonzero(rows), side="right") - 1


def _total(table: pa.Table, column: str) -> int:
    """A count column's sum over the rows; 0 where the summaries predate it (null) or it is absent.
    Negative counts (a broken summary's) are left out, and the sum is not int64's: two counts of
    2**62 wrapped round to "9223372036854775658 drift summaries lost"."""
    if column not in table.column_names:
        return 0
    return int(np.nansum(numbers(table, column), dtype=np.float64))


def write_report(
    table: pa.Table,
    rules: AlertsSection,
    out: str | os.PathLike[str],
    now: float | None = None,
    reference_accuracy: float | None = None,
    bins: ReferenceBins | None = None,
    histograms: Histograms | None = None,
    since: float | None = None,
    reference_model: str | None = None,
) -> list[Alert]:
    """`bins`: see Intervals.of (without them the table must hold `ref_share`); `histograms`, `since`,
    `reference_model`: see render."""
    html, alerts = render(table, rules, now, reference_accuracy, bins, histograms, since, reference_model)
    atomic_write(Path(out), lambda f: f.write(html.encode("utf-8")))
    return alerts
