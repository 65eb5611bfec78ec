"""Figures for the self-contained report: matplotlib headless, each figure a base64 PNG to embed."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and in CI
import matplotlib.pyplot as plt


def png(fig: plt.Figure) -> str:
    """The figure as base64 PNG text (closed afterwards: a report draws dozens)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
