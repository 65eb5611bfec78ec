"""Source reference statistics shipped in the manifest: what "no drift" looks like.

Pure numpy, so that the same numbers can be checked without torch.
"""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.channel_references import class_references, device_spread
from edge_ttt.adapt.denoise import source_share
from edge_ttt.adapt.softmax import softmax_entropy
from edge_ttt.drift.calibration import drift_limits
from edge_ttt.stream.window import WindowBatch

HIST_BINS = 16
ENTROPY_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def channel_reference(values: np.ndarray, channels: list[str], bins: int = HIST_BINS) -> list[dict]:
    """Per channel: mean, variance, equal-share bin edges from the source quantiles, and the shares.

    Equal-share bins make the population stability index sensitive in every part of the source
    range; the outer bins are open-ended so every finite value lands in one. Ties (quantised or
    clipped sensors) merge edges, leaving fewer bins rather than empty ones.
    """
    out = []
    for i, name in enumerate(channels):
        col = values[:, i].astype(np.float64)
        col = col[np.isfinite(col)]
        if col.size == 0:
            raise ValueError(f"channel {name} has no finite source samples")
        edges = np.unique(np.quantile(col, np.arange(1, bins) / bins))
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=edges.size + 1)
        out.append(
            {
                "name": name,
                "mean": float(col.mean()),
                "var": float(col.var()),
                "hist_edges": edges.tolist(),
                "hist_share": (counts / counts.sum()).tolist(),
            }
        )
    return out


def entropy_quantiles(logits: np.ndarray, q: tuple[float, ...] = ENTROPY_QUANTILES) -> dict:
    return {"q": list(q), "value": np.quantile(softmax_entropy(logits)[1], q).tolist()}


def class_channels(x: np.ndarray, labels: np.ndarray, classes: int, devices: np.ndarray) -> dict:
    """The input alignment's source references (`reference.class_channels` in the manifest): the
    class references, and how far apart the source devices already are (its dead bands)."""
    mean, autocov = class_references(x, labels, classes)
    offset, log_gain = device_spread(x, labels, devices, (mean, autocov))
    return {
        "mean": mean.tolist(),
        "autocov": autocov.tolist(),
        "offset_spread": offset.tolist(),
        "log_gain_spread": log_gain.tolist(),
        "noise_share": source_share(x).tolist(),
    }


def held_out_limits(windows: WindowBatch, devices: np.ndarray, channels: list[dict]) -> dict | None:
    """`reference.drift_limits` from every window of the source log (labeled or not), each device's
    in time order, over the reference's bins (`channels`, from `channel_reference`)."""
    order = np.lexsort((windows.t_end_ns, devices))
    edges = [np.asarray(c["hist_edges"], np.float64) for c in channels]
    return drift_limits(windows.x[order], devices[order], edges)
