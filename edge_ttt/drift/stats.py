"""Mergeable streaming statistics and drift scores: pure numpy, no I/O.

Every statistic folds data in with `update(...) -> self` and combines with another one of the same
shape by `merge` (or `+=`), so that summaries of consecutive intervals, or of several devices,
add up exactly to the summary of all their data: counts and histograms add, moments combine by
the parallel formula (Chan et al.), minima and maxima by min and max, means weighted by their counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PSI_EPS = 1e-4  # shares below this are raised to it, so an empty bin gives a large but finite PSI


@dataclass
class Moments:
    """Per channel: finite count, non-finite (NaN/Inf) count, mean, M2 (sum of squared deviations),
    min and max. Non-finite values are counted and otherwise ignored.

    >>> a = Moments.empty(1).update(np.array([[1.0], [np.nan], [3.0]]))
    >>> b = Moments.empty(1).update(np.array([[5.0], [np.inf]]))
    >>> m = a + b
    >>> m.count.tolist(), m.nonfinite.tolist(), m.mean.tolist(), m.var.tolist()
    ([3], [2], [3.0], [2.6666666666666665])
    """

    count: np.ndarray  # int64 [C]
    nonfinite: np.ndarray  # int64 [C]
    mean: np.ndarray  # float64 [C]
    m2: np.ndarray  # float64 [C]
    min: np.ndarray  # float64 [C], +inf while empty
    max: np.ndarray  # float64 [C], -inf while empty

    @classmethod
    def empty(cls, channels: int) -> Moments:
        zeros = np.zeros(channels)
        return cls(
            np.zeros(channels, np.int64),
            np.zeros(channels, np.int64),
            zeros.copy(),
            zeros.copy(),
            np.full(channels, np.inf),
            np.full(channels, -np.inf),
        )

    @property
    def var(self) -> np.ndarray:
        """Population variance (ddof 0); NaN for a channel without finite values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / self.count, np.nan)

    def update(self, values: np.ndarray) -> Moments:
        """Fold in samples `[n, C]`."""
        v = np.asarray(values, np.float64)
        finite = np.isfinite(v)
        n = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, np.where(finite, v, 0.0).sum(axis=0) / np.maximum(n, 1), 0.0)
        m2 = (np.where(finite, v - mean, 0.0) ** 2).sum(axis=0)
        batch = Moments(
            n.astype(np.int64),
            (~finite).sum(axis=0).astype(np.int64),
            mean,
            m2,
            np.where(finite, v, np.inf).min(axis=0, initial=np.inf),
            np.where(finite, v, -np.inf).max(axis=0, initial=-np.inf),
        )
        self.__iadd__(batch)
        return self

    def merge(self, other: Moments) -> Moments:
        n = self.count + other.count
        safe = np.maximum(n, 1)
        delta = other.mean - self.mean
        return Moments(
            n,
            self.nonfinite + other.nonfinite,
            np.where(n > 0, self.mean + delta * (other.count / safe), 0.0),
            self.m2 + other.m2 + delta**2 * (self.count * other.count / safe),
            np.minimum(self.min, other.min),
            np.maximum(self.max, other.max),
        )

    def __add__(self, other: Moments) -> Moments:
        return self.merge(other)

    def __iadd__(self, other: Moments) -> Moments:
        merged = self.merge(other)
        self.count, self.nonfinite, self.mean, self.m2 = (
            merged.count,
            merged.nonfinite,
            merged.mean,
            merged.m2,
        )
        self.min, self.max = merged.min, merged.max
        return self


@dataclass
class Histogram:
    """Counts over fixed inner edges; the outer bins are open-ended (bin k holds [e(k-1), e(k)),
    as in the manifest's reference). Non-finite values are not counted.

    >>> Histogram.over([0.0, 1.0]).update(np.array([-5.0, 0.0, 0.5, 1.0, np.nan])).counts.tolist()
    [1, 2, 1]
    """

    edges: np.ndarray  # float64 [B - 1], strictly increasing
    counts: np.ndarray  # int64 [B]

    @classmethod
    def over(cls, edges) -> Histogram:
        edges = np.asarray(edges, np.float64)
        return cls(edges, np.zeros(len(edges) + 1, np.int64))

    def update(self, values: np.ndarray) -> Histogram:
        v = np.asarray(values, np.float64).ravel()
        v = v[np.isfinite(v)]
        bins = np.searchsorted(self.edges, v, side="right")
        self.counts = self.counts + np.bincount(bins, minlength=len(self.counts))
        return self

    def merge(self, other: Histogram) -> Histogram:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("histograms over different edges cannot merge")
        return Histogram(self.edges, self.counts + other.counts)

    def __add__(self, other: Histogram) -> Histogram:
        return self.merge(other)

    def quantile(self, q: float) -> float | None:
        """Upper edge of the bin that holds quantile q (the last inner edge for the open top bin);
        None when empty. Coarse by design: the resolution is the bin width.

        >>> Histogram.over([1.0, 2.0, 4.0]).update(np.array([0.5, 1.5, 1.5, 3.0])).quantile(0.5)
        2.0
        """
        total = int(self.counts.sum())
        if total == 0:
            return None
        k = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return float(self.edges[min(k, len(self.edges) - 1)])


@dataclass
class Mean:
    """The mean of the finite values folded in, and how many there were (NaN values are not
    counted). Merges weigh each side by its count, so merged intervals give the mean of all values.

    >>> (Mean().update(np.array([1.0, 0.0, np.nan])) + Mean().update(np.array([1.0]))).get()
    0.6666666666666666
    >>> Mean().update(np.array([np.nan])).get() is None
    True
    """

    mean: float = 0.0
    count: int = 0

    def update(self, values: np.ndarray) -> Mean:
        v = np.asarray(values, np.float64).ravel()
        v = v[np.isfinite(v)]
        merged = self.merge(Mean(float(v.mean()), len(v)) if len(v) else Mean())
        self.mean, self.count = merged.mean, merged.count
        return self

    def merge(self, other: Mean) -> Mean:
        if not other.count or not self.count:  # exact when one side is empty
            return Mean(self.mean, self.count) if self.count else Mean(other.mean, other.count)
        n = self.count + other.count
        return Mean((self.mean * self.count + other.mean * other.count) / n, n)

    def __add__(self, other: Mean) -> Mean:
        return self.merge(other)

    def get(self) -> float | None:
        """The mean; None when no finite value was folded in."""
        return self.mean if self.count else None


def psi(counts: np.ndarray, share: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index of observed bin counts against reference shares:
    sum over bins of (p - q) ln(p / q), with both shares floored at `eps`. NaN without data.

    >>> round(psi(np.array([25, 25, 25, 25]), np.full(4, 0.25)), 12)
    0.0
    """
    total = counts.sum()
    if total == 0:
        return float("nan")
    p = np.maximum(counts / total, eps)
    q = np.maximum(np.asarray(share, np.float64), eps)
    return float(((p - q) * np.log(p / q)).sum())


def mean_shift(mean: np.ndarray, ref_mean: np.ndarray, ref_var: np.ndarray) -> np.ndarray:
    """Standardized mean shift (mean - reference mean) / reference std, per channel.

    >>> mean_shift(np.array([3.0]), np.array([1.0]), np.array([4.0])).tolist()
    [1.0]
    """
    return (np.asarray(mean, np.float64) - ref_mean) / np.sqrt(np.maximum(ref_var, 1e-12))
