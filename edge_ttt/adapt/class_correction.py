"""Label-shift correction of a window's batch-norm moments: what its predicted class adds to them.

On a stream of one activity for minutes, momentum statistics follow the activity, not the drift,
and the model loses the classes that are not in view. The export stores each class's batch-norm
input moments on source data (`reference.class_norms`); a window's raw moments, less `strength`
times the offset of its predicted class mix from the source statistics, are what the window
would show if it came from the source class mix. With `strength` 1 the statistics estimate the
drift alone (they ignore any change of class mix the model sees, and miss drift that makes
windows look like another class); below 1 they keep a share of the plain estimate. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.flat import Layout
from edge_ttt.adapt.statistics import Stats
from edge_ttt.manifest import ClassMoments


class ClassCorrection:
    """Per class, the offset of its raw moments (E[x], E[x^2]) from the source statistics', laid out
    as the statistics' flat vectors, times `strength`.

    >>> c = ClassCorrection(np.array([[1.0], [-1.0]]), np.array([[2.0], [0.0]]), strength=0.5)
    >>> [s.tolist() for s in c.shift(np.array([[1.0, 0.0], [1.0, 0.0]]))]
    [[0.5], [1.0]]
    """

    def __init__(self, first: np.ndarray, second: np.ndarray, strength: float) -> None:
        self.first = strength * np.asarray(first, np.float64)  # [classes, size]
        self.second = strength * np.asarray(second, np.float64)

    @classmethod
    def from_reference(
        cls, class_norms: dict[str, ClassMoments] | None, source: Stats, strength: float
    ) -> ClassCorrection | None:
        """From the bundle's class moments (`reference.class_norms`) and the batch norms' source
        statistics, laid out as `LayerMoments` lays out those; None when the bundle has no class
        moments (exported before them) or no batch norms, or `strength` is 0."""
        if class_norms is None or strength == 0.0 or not source:
            return None
        layout = Layout.of({name: mean for name, (mean, _) in source.items()})
        mean = np.concatenate([np.asarray(class_norms[n].mean, np.float64) for n in layout.names], axis=1)
        var = np.concatenate([np.asarray(class_norms[n].var, np.float64) for n in layout.names], axis=1)
        s_mean = layout.flatten({n: m for n, (m, _) in source.items()}, np.float64)
        s_var = layout.flatten({n: v for n, (_, v) in source.items()}, np.float64)
        return cls(mean - s_mean, var + mean**2 - (s_var + s_mean**2), strength)

    def shift(self, probs: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """What to take off a batch's raw moments: the offsets of the batch's mean predicted class
        distribution (the batch moments average its windows; one window's is its own, exactly),
        times `scale` on top of `strength` (a caller that keeps only part of the correction).

        >>> c = ClassCorrection(np.array([[1.0], [-1.0]]), np.array([[2.0], [0.0]]), strength=0.5)
        >>> [s.tolist() for s in c.shift(np.array([[1.0, 0.0]]), scale=0.5)]
        [[0.25], [0.5]]
        """
        probs = np.asarray(probs, np.float64)
        p = probs[0] if len(probs) == 1 else probs.mean(axis=0)
        return scale * (p @ self.first), scale * (p @ self.second)  # 1.0 * v is v, bit for bit
