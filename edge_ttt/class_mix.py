"""Class mixes: the bound they put on accuracy, from predicted-class counts alone, and their
effective number of classes; shared by the engine (`edge_ttt.adapt`) and the fleet side's estimates
(`edge_ttt.monitor.estimates`). Pure numpy."""

from __future__ import annotations

import math

import numpy as np


def class_mix_cap(counts: np.ndarray | list[int], prior: np.ndarray | list[float]) -> np.ndarray | float:
    """The highest accuracy that predictions with these class counts can have on a stream whose
    classes come in the `prior` proportions: sum over classes of min(predicted share, prior).
    `counts` [..., K]; NaN where there are none. A model stuck on one class cannot be right more often
    than that class's share, however confident it is.

    >>> class_mix_cap(np.array([[0, 0, 4], [1, 1, 2], [0, 0, 0]]), np.array([0.25, 0.25, 0.5])).tolist()
    [0.5, 1.0, nan]
    >>> class_mix_cap([1, 1, 2], [0.25, 0.25, 0.5])  # one mix as lists: a Python float
    1.0
    """
    if isinstance(counts, list):  # one mix, as the engine's fallback asks on every window: no numpy calls
        total = sum(counts)
        return math.nan if total == 0 else sum(min(c / total, p) for c, p in zip(counts, prior, strict=True))
    counts = np.asarray(counts, np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / total
    return np.where(total[..., 0] > 0, np.minimum(share, np.asarray(prior, np.float64)).sum(axis=-1), np.nan)


def effective_classes(share: np.ndarray | list[float]) -> np.ndarray | float:
    """The effective number of classes of a class mix (over the last axis), 1 / sum(share^2): 1 for
    one class, C for C classes in equal shares.

    >>> effective_classes(np.array([0.5, 0.5, 0.0]))
    2.0
    >>> effective_classes(np.array([[1.0, 0.0], [0.5, 0.5]])).tolist()
    [1.0, 2.0]
    """
    if isinstance(share, list):  # one mix as a list, as the engine's fallback asks on every window
        total = sum(s * s for s in share)
        return math.inf if total == 0.0 else 1.0 / total
    share = np.asarray(share, np.float64)
    if share.ndim == 1:  # one mix, as the engine asks on every window: Python floats, no errstate
        total = float(np.add.reduce(share * share))
        return math.inf if total == 0.0 else 1.0 / total
    with np.errstate(divide="ignore"):  # no classes at all: inf, more than any mix holds
        return 1.0 / np.add.reduce(np.square(share), axis=-1)
