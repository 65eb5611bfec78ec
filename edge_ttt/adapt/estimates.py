"""Label-free accuracy estimates: how often a model is right on a stream, without labels.

Average Thresholded Confidence with the negative-entropy score (ATC-NE; Garg et al., "Leveraging
unlabeled data to predict out-of-distribution performance", ICLR 2022): on held-out source
windows, find the entropy threshold below which the share of windows equals the source
accuracy; on a stream, the estimated accuracy is the share of windows below it. Raw confidence
does not work here (an adapted model is less confident where it is more accurate); a share above
one threshold fitted where the accuracy is known is far less sensitive to that. The threshold
comes from the manifest's held-out entropy quantiles and validation accuracy, so every bundle
has one. Pure numpy; docs/adaptation.md says why this estimator and what it misses.

A model that predicts one class on a stream that holds every class cannot be right more often
than that class's share, however confident it is (a sensor in the wrong unit); `class_mix_cap`
bounds an estimate over a span long enough to hold the classes in their source proportions.
A model that confuses classes without changing that mix keeps the bound; it also changes its mind
from one window to the next more often than on the data it was trained for, while the activity
stays the same: `steadiness` scales the bound by how often its class stays from window to window,
against how often the source model's stayed on held-out source windows (`edge_ttt.steadiness`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_ttt.class_mix import class_mix_cap as mix_cap
from edge_ttt.manifest import Manifest
from edge_ttt.steadiness import StayCounter


def entropy_threshold(manifest: Manifest) -> float:
    """The ATC-NE threshold: the held-out source entropy quantile at the source accuracy."""
    ref = manifest.reference
    return float(np.interp(ref.val_accuracy, ref.entropy.q, ref.entropy.value))


def class_prior(manifest: Manifest) -> np.ndarray:
    """The source class shares from the manifest; equal shares for a bundle that lacks them."""
    prior = manifest.reference.class_prior
    k = len(manifest.model.classes)
    return np.full(k, 1.0 / k) if prior is None else np.asarray(prior, np.float64)


def likely_right(entropy: np.ndarray, threshold: float) -> np.ndarray:
    """Per window, 1.0 where the prediction counts as right (entropy below the threshold), else 0.0.

    >>> likely_right(np.array([0.2, 1.5, 0.9]), 1.0).tolist()
    [1.0, 0.0, 1.0]
    """
    return (np.asarray(entropy, np.float64) < threshold).astype(np.float64)


def class_mix_cap(classes: np.ndarray, prior: np.ndarray) -> float:
    """The class-mix bound (`edge_ttt.drift.stats.class_mix_cap`) of predicted classes; 1.0 for none.

    >>> class_mix_cap(np.array([2, 2, 2, 2]), np.array([0.25, 0.25, 0.5]))
    0.5
    >>> class_mix_cap(np.array([0, 1, 2, 2]), np.array([0.25, 0.25, 0.5]))
    1.0
    """
    if len(classes) == 0:
        return 1.0
    return float(mix_cap(np.bincount(np.asarray(classes, np.int64), minlength=len(prior)), prior))


def steadiness(classes: np.ndarray, reference: list[float] | None) -> float:
    """`Stays.factor` of one device's classes in the order the model saw them (class -1: it did
    not run), against the source model's held-out stay rates; 1.0 without a reference or pairs.

    >>> steadiness(np.array([0, 0, 0, 1, 1, 1]), [1.0])  # 4 of 5 pairs stay
    0.8
    >>> steadiness(np.array([0, -1, 1, -1, 1]), [0.9, 0.5])  # two pairs at gap 2: 1 kept, 1.0 expected
    1.0
    """
    return StayCounter(reference).count(classes).factor()


def device_estimates(
    classes: np.ndarray, devices: np.ndarray, prior: np.ndarray, stay: list[float] | None = None
) -> dict[Any, tuple[int, float | None]]:
    """Per device over a whole stream (each device's windows in the order the model saw them):
    (windows the model predicted, `class_mix_cap` of their classes times their `steadiness`
    against `stay`, the manifest's `reference.stay`); None where the model predicted none (class
    -1: it did not run).

    Over a device's whole stream the classes come close to the source proportions, and there the
    bound is a better estimate than the windows' `likely_right` share, which reads a less
    confident adapted model as a worse one (docs/adaptation.md has the comparison).

    >>> stuck = device_estimates(np.zeros(4, np.int64), np.array(["a"] * 4), np.full(2, 0.5))
    >>> stuck["a"]
    (4, 0.5)
    >>> flip = device_estimates(np.array([0, 1] * 4), np.array(["a"] * 8), np.full(2, 0.5), [0.9])
    >>> flip["a"]  # the mix is the prior's, but the class never stays
    (8, 0.0)
    """
    out = {}
    for d in np.unique(devices):
        mine = classes[devices == d]
        own = mine[mine >= 0]
        estimate = class_mix_cap(own, prior) * steadiness(mine, stay) if len(own) else None
        out[d] = (len(own), estimate)
    return out


def stream_estimate(estimates: dict[Any, tuple[int, float | None]]) -> float | None:
    """The devices' estimates weighted by their windows; None when no device has one."""
    known = [(n, e) for n, e in estimates.values() if e is not None and n > 0]
    total = sum(n for n, _ in known)
    return sum(n * e for n, e in known) / total if total else None
