"""The report's plots over time and channels, for the top of the ranking (the worst channel's
distribution is `distributions.py`); each returns the PNG as base64 text."""

from __future__ import annotations

import math

import matplotlib.ticker
import numpy as np

from edge_ttt.monitor.estimates import rolling
from edge_ttt.monitor.figures import finished, plt, png, small_multiples
from edge_ttt.monitor.health import DeviceHealth, drift_scores, psi_values
from edge_ttt.monitor.intervals import Intervals
from edge_ttt.monitor.text import shown_id

HEATMAP_DEVICES = 40  # rows of the heat map: the top of the ranking, numbers still legible
HEATMAP_CHANNELS = 40  # columns: the most drifted channels, when the devices have more


def heatmap(ranked: list[DeviceHealth], intervals: Intervals) -> str:
    """The judged interval per device (rows, ranked; `DeviceHealth.judged`: the latest that the psi
    rule judges) and channel (columns, the union over devices): the colour is how drifted
    (`drift_scores`: PSI over its calibrated limit), the number the PSI."""
    shown = ranked[:HEATMAP_DEVICES]
    latest = [intervals.rows(intervals.devices.index(h.device), last=h.judged)[0] for h in shown]
    # a null name (a broken payload) shows as "None"
    named = [[str(c) for c in last["channels"] or []] for last in latest]
    channels = sorted({c for names in named for c in names})
    at = {name: j for j, name in enumerate(channels)}
    psi, score = np.full((len(shown), len(channels)), np.nan), np.full((len(shown), len(channels)), np.nan)
    for i, last in enumerate(latest):
        columns = [at[name] for name in named[i]]
        values = psi_values(last).tolist()
        psi[i, columns[: len(values)]] = values[: len(columns)]
        score[i, columns[: len(values)]] = drift_scores(last)[: len(columns)]
    title = (
        "number: the PSI; colour: the PSI over its no-drift limit"  # an operator read 3.02 as 3x the limit
    )
    if len(channels) > HEATMAP_CHANNELS:  # one device's 20,000 channels took 210 s and 12 GB to draw
        worst = np.where(np.isnan(score), -np.inf, score).max(axis=0)  # per channel, over the devices
        keep = np.sort(np.argsort(-worst, kind="stable")[:HEATMAP_CHANNELS])
        title = f"the {HEATMAP_CHANNELS} most drifted of {len(channels)} channels; {title}"
        channels, psi, score = [channels[j] for j in keep], psi[:, keep], score[:, keep]
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * max(len(channels), 1), 1 + 0.35 * max(len(shown), 1)))
    top = max(2.0, float(np.nanmax(score))) if np.isfinite(score).any() else 2.0
    image = ax.imshow(score, aspect="auto", cmap="Reds", vmin=0, vmax=top)
    for (i, j), value in np.ndenumerate(psi):
        if not np.isnan(value):
            color = "white" if score[i, j] > 0.6 * top else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small", color=color)
    # a channel name is the payload's: a 3,000-character one made the image 3,000 characters tall
    long = any(len(c) > 8 for c in channels)
    ax.set_xticks(range(len(channels)), [shown_id(c) for c in channels], rotation=90 if long else 0)
    ax.set_yticks(range(len(shown)), [shown_id(h.device) for h in shown])
    fig.colorbar(image, ax=ax, label="PSI over its no-drift limit (above 1: drifted)")
    ax.set_title(title, fontsize="small")
    return png(fig)


def _ends(intervals: Intervals, at: slice) -> np.ndarray:
    return intervals.table.column("interval_end").slice(at.start, at.stop - at.start).to_numpy()


ACCURACY_DEVICES = 12  # small multiples of estimated accuracy over time: the top of the ranking


def band(share: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Percent, a share's sampling band: +- 3 standard errors over its windows, as NannyML draws its
    chunks' (too narrow where windows move together: a floor on the uncertainty, not its size)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = 3 * np.sqrt(share * (1 - share) / np.maximum(windows, 1))
    return 100 * np.clip(share - spread, 0, 1), 100 * np.clip(share + spread, 0, 1)


def accuracy_over_time(
    ranked: list[DeviceHealth], intervals: Intervals, span: int, drawn: np.ndarray
) -> str | None:
    """Per top-ranked device, the served and source estimates at each interval (each over the latest
    `span` windows up to it) and the reference; None when no device has an estimate. `drawn`: per
    interval, whether its time can be believed (`clocks.plottable`); the others are left out."""
    shown = [h for h in ranked if h.estimated_accuracy is not None][:ACCURACY_DEVICES]
    if not shown:
        return None
    fig, axes = small_multiples(len(shown), 4, 2.4, sharey=True)
    for ax, h in zip(axes.flat, shown, strict=False):
        i = intervals.devices.index(h.device)
        at, estimates = intervals.scores(i), rolling(intervals, i, span)
        keep = drawn[at]
        if not keep.any():
            ax.text(0.5, 0.5, "not drawn: its clock is off\n(see its clock alert)", ha="center",
                    va="center", transform=ax.transAxes, color="grey")  # fmt: skip
        ends = _ends(intervals, at)[keep]
        for values, label in (
            (estimates.served[keep], "served (estimate)"),
            (estimates.source[keep], "source model (estimate)"),
        ):
            (line,) = ax.plot(ends, 100 * values, marker=".", label=label)
            ax.fill_between(
                ends, *band(values, estimates.windows[keep]), color=line.get_color(), alpha=0.15, linewidth=0
            )
        if h.reference_accuracy is not None:
            ax.axhline(
                100 * h.reference_accuracy, color="grey", linestyle="--", linewidth=1, label="reference"
            )
        ax.set_title(shown_id(h.device), fontsize="medium")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    return finished(fig, axes, "accuracy, %", 0.94)


TIMELINE_DEVICES = 12  # lines in the drift-over-time plot: the top of the ranking, readable
# a colour and a line style per device: ten colours, then the same colours dashed, so that no two
# of the lines look alike (the 11th and 12th device repeated the 1st's and 2nd's colour)
COLOURS = [f"C{k}" for k in range(10)]
STYLES = ("-", "--", ":", "-.")
TICKS = (0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


def ticks(top: float) -> list[float]:
    """The y ticks of the symlog drift axis up to `top` (a tick past it closes the axis): symlog's
    own are 0, 1, 10, ..., so a fleet between 0 and 3 had two ticks.

    >>> ticks(2.4), ticks(0.3)
    ([0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3], [0, 0.25, 0.5, 0.75, 1, 1.5, 2])
    >>> ticks(3e4)
    [0, 0.5, 1, 10, 100, 1000, 10000, 100000]
    """
    top = max(top, 2.0)  # the drift limit, 1, with room above it
    if top > 50:  # decades only, or the labels overlap
        return [0, 0.5, *(10**k for k in range(math.ceil(math.log10(top)) + 1))]
    return [*(t for t in TICKS if t < top), next(t for t in TICKS if t >= top)]


def timeline(ranked: list[DeviceHealth], intervals: Intervals, drawn: np.ndarray) -> str:
    """Drift per interval of the top-ranked devices, as the worst channel's PSI over its
    sample-size-aware limit: above 1 the interval counts as drifted. `drawn`: as in
    `accuracy_over_time`; one device dated 1970 would squeeze every other one into a line."""
    fig, ax = plt.subplots(figsize=(10, 4))
    top = 0.0
    for k, h in enumerate(ranked[:TIMELINE_DEVICES]):
        at = intervals.scores(intervals.devices.index(h.device))
        keep = drawn[at]
        if not keep.any():  # no line and no legend entry: the report says why above the plots
            continue
        ratio = intervals.drift_ratio[at][keep]
        top = max([top, *ratio[np.isfinite(ratio)].tolist()])
        ax.plot(
            _ends(intervals, at)[keep],
            ratio,
            marker=".",
            color=COLOURS[k % len(COLOURS)],
            linestyle=STYLES[k // len(COLOURS) % len(STYLES)],
            label=shown_id(h.device),
        )
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="drift limit")
    ax.set_yscale("symlog", linthresh=1.0)
    marks = ticks(top)
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(marks))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(0, marks[-1])
    ax.set_ylabel("max channel PSI / its limit")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.autofmt_xdate()
    return png(fig)
