"""Instance-aware batch norm statistics (NOTE, Gong et al., NeurIPS 2022), in numpy.

A batch norm normalizes with base statistics (the running ones when predicting, the memory
batch's when learning), corrected towards one window's own only where that window's moments lie
beyond `alpha` standard errors of the base: within that band the difference is what sampling
alone would give, beyond it the window is genuinely different and normalizes partly by itself.
With L samples per channel, the standard errors of the window's mean and (unbiased) variance
under the base distribution are sqrt(var_b / L) and var_b * sqrt(2 / (L - 1)), and the
correction is the soft shrinkage of the difference by alpha times those.

Our graphs report biased moments (over the batch and time axis); the paper's are unbiased, so
`unbiased` converts them first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_ttt.adapt.statistics import mixture_moments


def unbiased(var: np.ndarray, samples: int) -> np.ndarray:
    """A biased variance over `samples` values as the unbiased one (unchanged for one sample)."""
    var = np.asarray(var, np.float64)
    return var if samples <= 1 else var * (samples / (samples - 1))


def soft_shrink(d: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """sign(d) * max(|d| - threshold, 0).

    >>> soft_shrink(np.array([-3.0, 0.5, 2.0]), np.array(1.0)).tolist()
    [-2.0, 0.0, 1.0]
    """
    return np.sign(d) * np.maximum(np.abs(d) - threshold, 0.0)


def instance_aware(
    base: tuple[np.ndarray, np.ndarray],
    own: tuple[np.ndarray, np.ndarray],
    length: int,
    alpha: float,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, var) to normalize one window with: `base` (mean, unbiased var) corrected
    towards the window's `own` (mean, unbiased var over its `length` samples) beyond alpha
    standard errors. A length of 1 carries no instance statistics: the base as it is."""
    mean_b, var_b = (np.asarray(a, np.float64) for a in base)
    if length <= 1:
        return mean_b, var_b
    mean, var = (np.asarray(a, np.float64) for a in own)
    se_var = (var_b + eps) * np.sqrt(2.0 / (length - 1))
    adjusted_mean = class_free_mean((mean_b, var_b), mean, 0.0, length, alpha, eps)  # no classes
    adjusted_var = np.maximum(var_b + soft_shrink(var - var_b, alpha * se_var), 0.0)
    return adjusted_mean, adjusted_var


def pooled(moments: Sequence[tuple[np.ndarray, np.ndarray]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, unbiased var) over several windows' samples together, from each window's
    (mean, biased var) over its `length` samples (law of total variance)."""
    mean, var = mixture_moments(np.array([m for m, _ in moments]), np.array([v for _, v in moments]))
    return mean, unbiased(var, length * len(moments))


def class_free_mean(
    base: tuple[np.ndarray, np.ndarray],
    own_mean: np.ndarray,
    class_offset: np.ndarray | float,
    samples: int,
    alpha: float,
    eps: float,
) -> np.ndarray:
    """The mean to normalize a batch norm with: the `base` (mean, var) mean moved by the part of
    the batch's own mean that neither its predicted classes (`class_offset`: their mean's expected
    offset from source) nor sampling (`alpha` standard errors over `samples` values) explain.

    A window's own mean differs from the statistics' for two reasons that IABN alone cannot tell
    apart: its activity (information the model needs) and a fault that moved it since the
    statistics last did (an offset creeping with temperature). Only the second is taken off.

    >>> base = (np.zeros(2), np.ones(2))
    >>> class_free_mean(base, np.array([3.0, 3.0]), np.array([0.0, 3.0]), 4, 2.0, 0.0).tolist()
    [2.0, 0.0]
    """
    mean_b, var_b = (np.asarray(a, np.float64) for a in base)
    residual = np.asarray(own_mean, np.float64) - np.asarray(class_offset, np.float64) - mean_b
    return mean_b + soft_shrink(residual, alpha * np.sqrt((var_b + eps) / samples))
