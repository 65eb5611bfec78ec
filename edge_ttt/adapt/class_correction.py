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
from edge_ttt.manifest import Manifest


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
    def for_manifest(cls, manifest: Manifest, layout: Layout, strength: float) -> ClassCorrection | None:
        """From the bundle's class moments, in the order of `layout` (the batch norms'); None when
        the bundle has none (exported before them) or `strength` is 0."""
        norms = manifest.reference.class_norms
        if norms is None or strength == 0.0 or not layout.names:
            return None
        source = {layer.name: layer for layer in manifest.batch_norms}
        first, second = [], []
        for name in layout.names:
            mean = np.asarray(norms[name].mean, np.float64)
            square = np.asarray(norms[name].var, np.float64) + mean**2
            s_mean = np.asarray(source[name].source_mean, np.float64)
            s_square = np.asarray(source[name].source_var, np.float64) + s_mean**2
            first.append(mean - s_mean)
            second.append(square - s_square)
        return cls(np.concatenate(first, axis=1), np.concatenate(second, axis=1), strength)

    def shift(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What to take off a batch's raw moments: the offsets of the batch's mean predicted class
        distribution (the batch moments average its windows)."""
        p = np.asarray(probs, np.float64).mean(axis=0)
        return p @ self.first, p @ self.second
