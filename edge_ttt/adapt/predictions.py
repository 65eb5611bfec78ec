"""What the engine hands out per batch (`Predictions`), put together from each model's view of
the batch (`Scored`): the served model's, and the source model's where it ran."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_ttt.adapt.estimates import likely_right
from edge_ttt.adapt.softmax import softmax_entropy


@dataclass(frozen=True, eq=False)
class Predictions:
    classes: np.ndarray  # int64 [n]
    probs: np.ndarray  # float32 [n, K]
    entropy: np.ndarray  # float32 [n], nats
    valid: np.ndarray  # bool [n]; False: the window failed the input guard and adapted nothing
    estimated_correct: np.ndarray  # float32 [n], 1.0: the served prediction is likely right
    source_estimated_correct: np.ndarray  # float32 [n], the same for the source model; NaN: not run
    on_source: np.ndarray  # bool [n]; True: the source model served this window (fallback)
    source_classes: np.ndarray  # int64 [n], the source model's, on windows sampled for its estimate; else -1

    def __len__(self) -> int:
        return len(self.classes)


class Scored(NamedTuple):
    """One model's view of a batch; the estimate NaN on the windows the model did not run on
    (`probs` None: on none of them)."""

    probs: np.ndarray | None  # float64 [n, K]
    estimate: np.ndarray  # [n], `likely_right`
    entropy: np.ndarray | None  # float64 [n]


def not_run(n: int) -> Scored:
    """The view of a model that ran on none of the batch's `n` windows."""
    return Scored(None, np.full(n, np.nan), None)


def blended(a: np.ndarray, b: np.ndarray, threshold: float) -> Scored:
    """Two models' probabilities [n, K] averaged and scored as one model's view (its entropy and
    `likely_right` at the ATC-NE `threshold`); a class both give 0 (logits far apart) stays 0.

    >>> view = blended(np.array([[1.0, 0.0, 0.0]]), np.array([[0.5, 0.5, 0.0]]), threshold=0.6)
    >>> view.probs.round(2).tolist(), view.entropy.round(3).tolist(), view.estimate.tolist()
    ([[0.75, 0.25, 0.0]], [0.562], [1.0])
    """
    probs, entropy = softmax_entropy(np.log(np.maximum(0.5 * (a + b), np.finfo(np.float64).tiny)))
    return Scored(probs, likely_right(entropy, threshold), entropy)


def handed_out(valid: np.ndarray, served: Scored, source: Scored, on_source: bool) -> Predictions:
    """What a batch hands out: the served model's predictions and estimate, the source model's
    classes and estimate (-1 and NaN where it did not run)."""
    n = len(served.estimate)
    return Predictions(
        served.probs.argmax(axis=1),
        served.probs.astype(np.float32),
        served.entropy.astype(np.float32),
        valid,
        served.estimate.astype(np.float32),
        source.estimate.astype(np.float32),
        (np.ones if on_source else np.zeros)(n, bool),
        ran_classes(source),
    )


def ran_classes(view: Scored) -> np.ndarray:
    """A model's class per window of its view, -1 where it did not run."""
    if view.probs is None:
        return np.full(len(view.estimate), -1)
    return np.where(np.isnan(view.estimate), -1, view.probs.argmax(axis=1))
