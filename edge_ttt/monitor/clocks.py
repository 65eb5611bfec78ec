"""Whether a summary's time can be believed. An agent dates its intervals by its own clock, and a
device without a set clock (no network time yet, or a flat real-time-clock battery: many boards
boot in 1970) sends summaries dated years off. One such device squeezed every other device's
history into one vertical line of the fleet's drift plot. The collector stamps when it received
each summary (`received`), against which a device's clock is judged.

Pure: arrays and numbers in, masks and words out.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

STAMP = "%Y-%m-%d %H:%M:%S UTC"


def seconds(table: pa.Table, name: str) -> np.ndarray:
    """A timestamp column as Unix seconds; NaN where null, all NaN where the table lacks it
    (`received`: rows stored before collectors stamped it)."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    micros = table.column(name).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(micros, np.float64) / 1e6


def plottable(ends: np.ndarray, received: np.ndarray, now: float, skew_s: float, late_s: float) -> np.ndarray:
    """The rows whose time can share the fleet's time axis: not dated more than `skew_s` after
    `now`, nor more than `late_s` before they arrived (no agent keeps a summary that long), nor
    before 1970 (a clock reset says 1970; earlier is garbage, which the plots cannot even draw
    before the year 1)."""
    with np.errstate(invalid="ignore"):
        return (ends >= 0) & (ends <= now + skew_s) & ~(received - ends > late_s)


def duration(s: float) -> str:
    """Seconds in the unit a person reads: 45 s, 12 min, 5.2 h, 20,329 days.

    >>> duration(45.2), duration(720), duration(18_720), duration(1.756e9)
    ('45 s', '12 min', '5.2 h', '20,324 days')
    """
    if s < 120:
        return f"{s:.0f} s"
    if s < 7_200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3_600:.1f} h"
    return f"{s / 86_400:,.0f} days"


def stamp(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime(STAMP)


def clock_problem(end: float, received: float, now: float, skew_s: float) -> tuple[float, str] | None:
    """(seconds off, what it means) for a device's newest summary (its interval `end`, when it was
    `received`: NaN if unknown), or None when its clock looks right. Ahead of the time it arrived
    (or of `now`) cannot be an outage; behind can also be a summary kept through one, so the words
    say both."""
    known = not np.isnan(received)
    ahead, against = (end - received, "when it arrived") if known else (end - now, "now")
    if end - now > ahead:  # arrived long ago, dated after even today
        ahead, against = end - now, "now"
    if ahead > skew_s:
        return ahead, (
            f"its latest summary is dated {stamp(end)}, {duration(ahead)} ahead of {against}: the device's "
            "clock runs ahead. Fix: set its clock (NTP); summaries dated ahead are not drawn on the "
            "report's time plots"
        )
    behind = received - end
    if behind > skew_s:
        return behind, (
            f"its latest summary covers an interval that ended {stamp(end)} and arrived {duration(behind)} "
            "later: the device's clock is behind (many boards boot in 1970 until network time is set), or "
            "its agent is still sending summaries it kept through an outage. Fix: set its clock (NTP)"
        )
    return None
