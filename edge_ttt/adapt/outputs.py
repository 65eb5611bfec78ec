"""What one pass of a bundle's graph returns: logits, every norm layer's batch moments, the loss
of a training pass; and the probabilities and entropies a policy and the engine read from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.softmax import softmax_entropy
from edge_ttt.adapt.statistics import Stats


@dataclass(frozen=True)
class Outputs:
    logits: np.ndarray
    moments: Stats
    loss: float | None = None

    @property
    def softmax(self) -> tuple[np.ndarray, np.ndarray]:
        """Per window, the predicted distribution and its entropy in nats, float64 (computed once:
        a policy weighs and watches windows by them, the engine reports them). Kept by hand, as
        `functools.cached_property` does, without the lock it takes on Python 3.11."""
        kept = self.__dict__.get("_softmax")
        if kept is None:
            kept = self.__dict__["_softmax"] = softmax_entropy(self.logits.astype(np.float64))
        return kept

    @property
    def entropy(self) -> np.ndarray:
        return self.softmax[1]
