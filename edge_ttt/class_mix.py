"""The class-mix bound on accuracy, from predicted-class counts alone: shared by the engine's
label-free estimates (`edge_ttt.adapt.estimates`) and the fleet side's (`edge_ttt.monitor.estimates`).
Pure numpy."""

from __future__ import annotations

import numpy as np


def class_mix_cap(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The highest accuracy that predictions with these class counts can have on a stream whose
    classes come in the `prior` proportions: sum over classes of min(predicted share, prior).
    `counts` [..., K]; NaN where there are none. A model stuck on one class cannot be right more often
    than that class's share, however confident it is.

    >>> class_mix_cap(np.array([[0, 0, 4], [1, 1, 2], [0, 0, 0]]), np.array([0.25, 0.25, 0.5])).tolist()
    [0.5, 1.0, nan]
    """
    counts = np.asarray(counts, np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / total
    return np.where(total[..., 0] > 0, np.minimum(share, np.asarray(prior, np.float64)).sum(axis=-1), np.nan)
