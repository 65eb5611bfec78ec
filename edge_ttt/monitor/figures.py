"""Figures for the self-contained report: matplotlib headless, each figure a base64 PNG to embed."""

from __future__ import annotations

import base64
import io
import math
import warnings
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and in CI
# Text in the figures is the fleet's (device ids are whatever a topic level holds): a '$' must stay
# a dollar sign, not start math that fails to parse and stops the whole report.
matplotlib.rcParams["text.parse_math"] = False
# An id in a script the font lacks is drawn as boxes (the tables show it in the browser's fonts),
# without a warning per glyph and figure.
warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
import matplotlib.pyplot as plt  # noqa: E402


def png(fig: plt.Figure) -> str:
    """The figure as base64 PNG text (closed afterwards: a report draws dozens)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def small_multiples(count: int, width: float, height: float, **options: Any) -> tuple[plt.Figure, Any]:
    """A grid of `count` panels, three to a row, each `width` x `height` inches; unused panels hidden.
    Returns the figure and the [rows, cols] axes."""
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **options)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def finished(fig: plt.Figure, axes: Any, ylabel: str, top: float) -> str:
    """The grid's PNG: the y label on the first panel, the first panel's legend above them all."""
    axes[0][0].set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.0), frameon=False
    )
    fig.tight_layout(rect=(0, 0, 1, top))
    return png(fig)
