"""Classification metrics for replays with known labels (pure numpy)."""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    """Share of correct predictions among windows with a known label (>= 0); None if there are none."""
    known = y_true >= 0
    return float((y_true[known] == y_pred[known]).mean()) if known.any() else None


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> float | None:
    """Mean F1 over the classes that occur in the labels or the predictions of labeled windows.

    >>> macro_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    0.7333333333333334
    """
    known = y_true >= 0
    if not known.any():
        return None
    t, p = y_true[known], y_pred[known]
    scores = []
    for c in range(classes):
        tp = np.sum((t == c) & (p == c))
        support = np.sum(t == c) + np.sum(p == c)
        if support:
            scores.append(2 * tp / support)
    return float(np.mean(scores))
