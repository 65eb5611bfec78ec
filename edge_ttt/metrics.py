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


def device_accuracy(y_true: np.ndarray, y_pred: np.ndarray, devices: np.ndarray) -> dict[str, float | None]:
    """`accuracy` per device (keys: the ids as text, sorted), as an operator reads a fleet.

    >>> device_accuracy(np.array([0, 1, 1, -1]), np.array([0, 0, 1, 1]), np.array(["b", "b", "a", "a"]))
    {'a': 1.0, 'b': 0.5}
    """
    return {str(d): accuracy(y_true[devices == d], y_pred[devices == d]) for d in np.unique(devices)}


def devices_below(
    reference: dict[str, float | None], other: dict[str, float | None], margin: float
) -> list[dict[str, float | str]]:
    """The devices where `other` is more than `margin` below `reference` (both `device_accuracy`),
    worst first, each with the difference in percentage points; devices without a label skipped.

    >>> devices_below({"a": 0.8, "b": 0.8, "c": None}, {"a": 0.7, "b": 0.795, "c": 0.1}, 0.01)
    [{'device': 'a', 'points': -10.0}]
    """
    below = [
        {"device": d, "points": round(100 * (other[d] - ref), 6)}
        for d, ref in reference.items()
        if ref is not None and other.get(d) is not None and other[d] < ref - margin
    ]
    return sorted(below, key=lambda b: b["points"])
