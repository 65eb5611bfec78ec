"""Category-balanced sampling with timeliness and uncertainty (CSTU, RoTTA: Yuan et al., CVPR 2023).

RoTTA's memory of windows for its teacher-student update. Like NOTE's reservoir (`pbrs`) it stays
balanced over the predicted classes, so that a long run of one activity cannot fill it; unlike it,
it prefers windows that are recent and that the teacher was sure of. Each kept window scores

    lambda_t * 1 / (1 + exp(-age / capacity)) + lambda_u * entropy / log(classes)

(higher is worse; its age counts the windows offered since it joined). A newcomer scores as a
window of age 0. While its class holds fewer than capacity / classes windows it takes a free slot,
or, in a full memory, the slot of the worst-scoring window of a largest class; once its class
holds its share, it can only replace the worst-scoring window of its own class. Either way only
if the window it would replace scores higher than it does.

No randomness: the state is the arrays, and it restores bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from edge_ttt.adapt.optim import Arrays

EMPTY = -1  # the label of a free slot


def timeliness(ages: np.ndarray, capacity: int) -> np.ndarray:
    """RoTTA's weight of a memory window in the student's loss: 1/2 when new, falling with age.

    >>> timeliness(np.array([0, 64, 640]), 64).round(3).tolist()
    [0.5, 0.269, 0.0]
    """
    a = np.asarray(ages, np.float64) / capacity
    return np.exp(-a) / (1.0 + np.exp(-a))


class CategoryBalancedMemory:
    """`capacity` windows of shape `window_shape` with their predicted class, uncertainty and age.

    >>> m = CategoryBalancedMemory(4, 2, (1,))
    >>> [m.add(np.array([float(i)]), 0, 0.0) for i in range(2)]  # class 0 fills its share
    [True, True]
    >>> m.add(np.array([2.0]), 0, 0.69)  # an unsure newcomer does not displace them
    False
    >>> m.add(np.array([3.0]), 0, 0.0)  # a sure one replaces the oldest
    True
    >>> m.add(np.array([4.0]), 1, 0.69), m.contents()[0].ravel().tolist()  # a free slot
    (True, [3.0, 1.0, 4.0])
    """

    def __init__(
        self,
        capacity: int,
        classes: int,
        window_shape: tuple[int, ...],
        lambda_t: float = 1.0,
        lambda_u: float = 1.0,
    ) -> None:
        self.capacity, self.classes = capacity, classes
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.per_class = capacity / classes
        self.windows = np.zeros((capacity, *window_shape), np.float32)
        self.labels = np.full(capacity, EMPTY, np.int64)
        self.uncertainty = np.zeros(capacity, np.float64)  # entropy / log(classes)
        self.ages = np.zeros(capacity, np.int64)

    def __len__(self) -> int:
        return int(np.count_nonzero(self.labels != EMPTY))

    def occupancy(self) -> np.ndarray:
        """Windows kept per class."""
        return np.bincount(self.labels[self.labels != EMPTY], minlength=self.classes)

    def score(self, ages: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
        """How much a window deserves its slot less: old and uncertain score high."""
        age_term = 1.0 / (1.0 + np.exp(-np.asarray(ages, np.float64) / self.capacity))
        return self.lambda_t * age_term + self.lambda_u * np.asarray(uncertainty, np.float64)

    def contents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The windows kept, their predicted classes and ages, in slot order."""
        kept = self.labels != EMPTY
        return self.windows[kept], self.labels[kept], self.ages[kept]

    def add(self, window: np.ndarray, label: int, entropy: float) -> bool:
        """Offer one window ([channels, length]) that the teacher predicted as `label` with this
        prediction entropy (nats); whether it was kept. Every kept window ages by one, the
        newcomer included."""
        uncertainty = float(entropy) / math.log(self.classes)
        slot = self._slot(label, uncertainty)
        if slot is not None:
            self.windows[slot] = window
            self.labels[slot] = label
            self.uncertainty[slot] = uncertainty
            self.ages[slot] = 0
        self.ages[self.labels != EMPTY] += 1
        return slot is not None

    def _slot(self, label: int, uncertainty: float) -> int | None:
        """Where a newcomer of `label` goes, or None when it does not earn a slot."""
        occupancy = self.occupancy()
        if occupancy[label] < self.per_class:
            free = np.flatnonzero(self.labels == EMPTY)
            if len(free):
                return int(free[0])
            rivals = np.flatnonzero(occupancy == occupancy.max())
        else:
            rivals = np.asarray([label])
        slots = np.flatnonzero(np.isin(self.labels, rivals))
        scores = self.score(self.ages[slots], self.uncertainty[slots])
        worst = int(np.argmax(scores))
        return int(slots[worst]) if scores[worst] > self.score(0, uncertainty) else None

    def state(self) -> Arrays:
        return {
            "windows": self.windows.copy(),
            "labels": self.labels.copy(),
            "uncertainty": self.uncertainty.copy(),
            "ages": self.ages.copy(),
        }

    def load_state(self, flat: Arrays) -> None:
        self.windows = np.array(flat["windows"], np.float32)
        self.labels = np.array(flat["labels"], np.int64)
        self.uncertainty = np.array(flat["uncertainty"], np.float64)
        self.ages = np.array(flat["ages"], np.int64)
