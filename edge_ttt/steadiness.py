"""How steady a model's predicted classes are from one window to the next, against how steady the
source model's were on held-out windows: what the label-free estimates scale the class-mix bound by
(docs/adaptation.md, "Label-free estimates and the fallback"). A model that confuses classes
without changing their mix changes its mind more often while the activity stays the same.

Pure numpy, in the formats layer so that the engine's estimates, the drift summaries and the
monitor count alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STAY_LAGS = 8  # the lags, in windows, of the reference's stay rates (a source pass every 4th: lag 4)


def stay_rates(classes: np.ndarray, devices: np.ndarray, lags: int = STAY_LAGS) -> list[float]:
    """Per lag 1 to `lags`: the share of pairs of one device's windows that many apart (in the
    order given: time order) whose classes are the same. Export stores the source model's on the
    held-out windows (`reference.stay`); a lag without pairs reads 1.0.

    >>> stay_rates(np.array([0, 0, 1, 1]), np.array(["a"] * 4), lags=2)
    [0.6666666666666666, 0.0]
    """
    classes, devices = np.asarray(classes), np.asarray(devices)
    kept, pairs = np.zeros(lags), np.zeros(lags)
    for d in np.unique(devices):
        own = classes[devices == d]
        for lag in range(1, min(lags, len(own) - 1) + 1):
            kept[lag - 1] += np.count_nonzero(own[lag:] == own[:-lag])
            pairs[lag - 1] += len(own) - lag
    return np.where(pairs > 0, kept / np.maximum(pairs, 1), 1.0).tolist()


def stay_factor(kept: np.ndarray | float, expected: np.ndarray | float) -> np.ndarray | float:
    """Kept against expected stays, at most 1 (a model steadier than the source's is not more
    right); 1 where none was expected. Elementwise, for a span's sums or many spans' at once.

    >>> stay_factor(np.array([3.0, 5.0, 0.0]), np.array([4.0, 4.0, 0.0])).tolist()
    [0.75, 1.0, 1.0]
    """
    if isinstance(kept, int | float) and isinstance(expected, int | float):  # one span: Python floats
        return 1.0 if expected <= 0 else min(1.0, kept / expected)
    kept, expected = np.asarray(kept, np.float64), np.asarray(expected, np.float64)
    some = expected > 0
    return np.where(some, np.minimum(1.0, kept / np.where(some, expected, 1.0)), 1.0)


@dataclass(frozen=True)
class Stays:
    """Of the pairs of consecutive windows a model ran on, those whose class stayed (`kept`), and
    how many of them the source model kept on held-out windows at the same gaps (`expected`). They
    add over batches, intervals and devices.

    >>> (Stays(3, 4.0) + Stays(1, 1.0)).factor()
    0.8
    >>> Stays().factor()  # no pair: nothing to say
    1.0
    """

    kept: int = 0
    expected: float = 0.0

    def __add__(self, other: Stays) -> Stays:
        return Stays(self.kept + other.kept, self.expected + other.expected)

    def factor(self) -> float:
        """`stay_factor` of these counts."""
        return float(stay_factor(self.kept, self.expected))


class StayCounter:
    """Counts `Stays` over one model's classes in stream order, batch by batch (class -1: it did
    not run on that window). The last class it ran on carries over to the next batch; a pair
    further apart than the reference's lags counts not at all, and without a reference nothing does.

    >>> counter = StayCounter([0.9, 0.5])
    >>> counter.count(np.array([0, 0, -1]))  # one pair at gap 1, kept
    Stays(kept=1, expected=0.9)
    >>> counter.count(np.array([1, 1]))  # 0 -> 1 at gap 2, then 1 -> 1
    Stays(kept=1, expected=1.4)
    """

    def __init__(self, reference: Sequence[float] | None) -> None:
        # Python numbers: `closes` runs on every window of the engine's fallback (`RollingEstimate`).
        self.reference = None if not reference else [float(r) for r in reference]
        self._last = -1  # the last class the model ran on; -1: none yet
        self._gap = 0  # windows since then

    def closes(self, c: int) -> tuple[int, bool]:
        """One window's class (-1: not run): the gap of the counted pair it closes with the last
        window the model ran on, 0 for none (it did not run, nothing before it, too far apart, or
        no reference), and whether the class stayed over that pair (False for none).

        >>> counter = StayCounter([0.9])
        >>> [counter.closes(c) for c in (2, 2, -1, 2)]  # the last pair is 2 apart: beyond the lags
        [(0, False), (1, True), (0, False), (0, False)]
        """
        self._gap += 1
        if c < 0:
            return 0, False
        counted = self._last >= 0 and self.reference and self._gap <= len(self.reference)
        pair = (self._gap, c == self._last) if counted else (0, False)
        self._last, self._gap = c, 0
        return pair

    @property
    def last(self) -> int:
        """The last class the model ran on; -1: none yet."""
        return self._last

    @property
    def gap(self) -> int:
        """Windows since the model last ran."""
        return self._gap

    def resume(self, last: int, gap: int) -> None:
        """Carry on from a saved `last` and `gap`."""
        self._last, self._gap = last, gap

    def count(self, classes: np.ndarray) -> Stays:
        kept, expected = 0, 0.0
        for c in np.asarray(classes, np.int64).ravel().tolist():
            gap, stayed = self.closes(c)
            if gap:
                kept += stayed
                expected += self.reference[gap - 1]
        return Stays(kept, expected)
