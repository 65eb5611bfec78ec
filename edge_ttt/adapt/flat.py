"""Named arrays kept as one flat vector: one numpy call over every layer instead of one per layer.

The adapted tensors (the norm affines, the batch norms' moments) are a few hundred floats in a
handful of small arrays, where each numpy call costs more than its arithmetic. Element-wise work
on their concatenation gives the same floats bit for bit; a `Layout` remembers names and shapes,
so saved states still hold one array per name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np


class Layout:
    """Where each named array lies in a flat vector, in order.

    >>> layout = Layout(["a", "b"], [(2,), (1,)])
    >>> v = layout.flatten({"b": np.array([3.0]), "a": np.array([1.0, 2.0])}, np.float64)
    >>> v.tolist(), layout.split(v)["b"].tolist()
    ([1.0, 2.0, 3.0], [3.0])
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> None:
        self.names = tuple(names)
        self.shapes = tuple(tuple(s) for s in shapes)
        ends = [int(e) for e in np.cumsum([int(np.prod(s)) for s in self.shapes])]
        self.bounds = list(pairwise([0, *ends]))
        self.size = ends[-1] if ends else 0

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> Layout:
        return cls(list(arrays), [np.shape(a) for a in arrays.values()])

    def flatten(self, arrays: Mapping[str, np.ndarray], dtype: type) -> np.ndarray:
        """One new vector of `dtype` from the named arrays: KeyError for a missing name, ValueError
        when the sizes do not add up (a saved state of another model)."""
        if not self.names:
            return np.zeros(0, dtype)
        vector = np.concatenate([np.asarray(arrays[n]).reshape(-1) for n in self.names], dtype=dtype)
        if vector.size != self.size:
            raise ValueError(f"{vector.size} values for a layout of {self.size}")
        return vector

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Per name, a view into `vector` (callers never change these vectors in place)."""
        parts = zip(self.names, self.bounds, self.shapes, strict=True)
        return {n: vector[a:b].reshape(s) for n, (a, b), s in parts}


def prefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays renamed `prefix/name`: how a saved state keeps its parts apart.

    >>> prefixed("adam", {"t": 1})
    {'adam/t': 1}
    """
    return {f"{prefix}/{k}": v for k, v in arrays.items()}


def unprefixed(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays saved under `prefix/`, with their own names back.

    >>> unprefixed("adam", {"adam/t": 1, "fast/w": 2})
    {'t': 1}
    """
    head = prefix + "/"
    n = len(head)
    return {k[n:]: v for k, v in arrays.items() if k.startswith(head)}
