"""Prediction-balanced reservoir sampling (PBRS, NOTE: Gong et al., NeurIPS 2022).

A memory of windows for adaptation that stays balanced over predicted classes and, within a
class, uniform over time, so that a long run of one activity (temporally correlated stream)
cannot fill it. A window of pseudo-class c joins a full memory by evicting a random window of a
largest class when c is not one; when c is among the largest it replaces a random window of
its own class with probability (windows of c kept) / (windows of c seen), as reservoir sampling.

The randomness is drawn from a generator seeded by (seed, windows seen), so the memory's whole
state is its arrays: it restores bit for bit and replays identically.
"""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.optim import Arrays

EMPTY = -1  # the label of a free slot


class PredictionBalancedReservoir:
    """`capacity` windows of shape `window_shape` with their pseudo-labels over `classes`."""

    def __init__(self, capacity: int, classes: int, window_shape: tuple[int, ...], seed: int = 0) -> None:
        self.capacity, self.classes, self.seed = capacity, classes, seed
        self.windows = np.zeros((capacity, *window_shape), np.float32)
        self.labels = np.full(capacity, EMPTY, np.int64)
        self.seen = np.zeros(classes, np.int64)  # windows offered, per pseudo-class

    def __len__(self) -> int:
        return int(np.count_nonzero(self.labels != EMPTY))

    def occupancy(self) -> np.ndarray:
        """Windows kept per class."""
        kept = self.labels[self.labels != EMPTY]
        return np.bincount(kept, minlength=self.classes)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """The windows kept and their pseudo-labels, in slot order."""
        kept = self.labels != EMPTY
        return self.windows[kept], self.labels[kept]

    def add(self, window: np.ndarray, label: int) -> bool:
        """Offer one window ([channels, length]) of pseudo-class `label`; whether it was kept."""
        self.seen[label] += 1
        free = np.flatnonzero(self.labels == EMPTY)
        if len(free):
            return self._put(int(free[0]), window, label)
        rng = np.random.default_rng((self.seed, int(self.seen.sum())))
        occupancy = self.occupancy()
        largest = np.flatnonzero(occupancy == occupancy.max())
        if label not in largest:
            victim = int(rng.choice(largest))
        elif rng.uniform() <= occupancy[label] / self.seen[label]:
            victim = label
        else:
            return False
        return self._put(int(rng.choice(np.flatnonzero(self.labels == victim))), window, label)

    def _put(self, slot: int, window: np.ndarray, label: int) -> bool:
        self.windows[slot] = window
        self.labels[slot] = label
        return True

    def state(self) -> Arrays:
        return {"windows": self.windows.copy(), "labels": self.labels.copy(), "seen": self.seen.copy()}

    def load_state(self, flat: Arrays) -> None:
        self.windows = np.array(flat["windows"], np.float32)
        self.labels = np.array(flat["labels"], np.int64)
        self.seen = np.array(flat["seen"], np.int64)
