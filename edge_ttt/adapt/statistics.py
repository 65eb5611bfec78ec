"""Momentum-averaged normalization statistics that estimate the population, even at batch size 1.

A batch norm layer reports, per channel, the mean and (biased) variance of its input over one
batch of windows. With one window per batch that variance is the *within-window* variance, which
misses how much window means differ from each other. Averaging the first and second raw moments
instead, E[x] and E[x^2] = var_b + mean_b^2, and taking var = E[x^2] - E[x]^2 at the end, gives
the population variance (law of total variance). Pure numpy, float64 inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MomentEMA:
    """EMA of one layer's first and second raw moments, started from the source statistics.

    `momentum` is the weight of one window; a batch of n windows weighs 1 - (1 - momentum)^n, so
    the averaging horizon is the same in windows whatever the batch size. With `prior_windows`
    the source statistics count as that many windows and the first windows are averaged
    cumulatively (weight n / (prior + seen + n)) until the EMA weight is larger: far from source
    the estimate moves in a few windows, close to source it is not made noisier than an EMA.

    >>> ema = MomentEMA.from_stats(np.zeros(1), np.ones(1), momentum=0.5)
    >>> ema.update(np.array([2.0]), np.array([1.0]), windows=1)
    >>> ema.mean.tolist(), ema.var.tolist()
    ([1.0], [2.0])
    """

    m1: np.ndarray
    m2: np.ndarray
    momentum: float
    prior_windows: float | None = None
    seen: float = 0.0

    @classmethod
    def from_stats(
        cls, mean: np.ndarray, var: np.ndarray, momentum: float, prior_windows: float | None = None
    ) -> MomentEMA:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if prior_windows is not None and prior_windows <= 0:
            raise ValueError(f"prior_windows must be positive, got {prior_windows}")
        mean = np.asarray(mean, np.float64)
        m2 = np.asarray(var, np.float64) + mean**2
        return cls(m1=mean.copy(), m2=m2, momentum=momentum, prior_windows=prior_windows)

    def weight(self, windows: int) -> float:
        ema = 1.0 - (1.0 - self.momentum) ** windows
        if self.prior_windows is None:
            return ema
        return max(ema, windows / (self.prior_windows + self.seen + windows))

    def update(self, batch_mean: np.ndarray, batch_var: np.ndarray, windows: int) -> None:
        a = self.weight(windows)
        self.seen += windows
        batch_mean = np.asarray(batch_mean, np.float64)
        self.m1 = (1.0 - a) * self.m1 + a * batch_mean
        self.m2 = (1.0 - a) * self.m2 + a * (np.asarray(batch_var, np.float64) + batch_mean**2)

    @property
    def mean(self) -> np.ndarray:
        return self.m1

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.m2 - self.m1**2, 0.0)

    def state(self) -> dict[str, np.ndarray]:
        return {"m1": self.m1, "m2": self.m2, "seen": np.asarray(self.seen)}

    def load_state(self, flat: dict[str, np.ndarray]) -> None:
        self.m1, self.m2 = np.array(flat["m1"], np.float64), np.array(flat["m2"], np.float64)
        self.seen = float(flat["seen"])


@dataclass
class BalancedMoments:
    """Moment EMAs kept per pseudo-class and averaged with equal class weights.

    On a label-correlated stream (one activity for minutes) a single EMA follows the current
    class's statistics and the normalization swings with the activity. Keeping one EMA per
    predicted class and averaging them estimates the statistics of a class-balanced population
    instead (the idea of RoTTA's category-balanced memory, applied to moments). Every class
    starts at the source statistics, so a class never seen pulls toward source.

    >>> bm = BalancedMoments.from_stats(np.zeros(1), np.ones(1), classes=2, momentum=1.0, prior_windows=None)
    >>> bm.update(np.array([2.0]), np.array([1.0]), counts=np.array([0, 1]))
    >>> bm.mean.tolist(), bm.var.tolist()
    ([1.0], [2.0])
    """

    per_class: list[MomentEMA]

    @classmethod
    def from_stats(
        cls, mean: np.ndarray, var: np.ndarray, classes: int, momentum: float, prior_windows: float | None
    ) -> BalancedMoments:
        return cls([MomentEMA.from_stats(mean, var, momentum, prior_windows) for _ in range(classes)])

    def update(self, batch_mean: np.ndarray, batch_var: np.ndarray, counts: np.ndarray) -> None:
        """Fold one batch's moments into each class in proportion to its windows in the batch.

        With a batch of one window this is exact; for larger batches the graph reports moments
        over the whole batch, so each predicted class takes the batch moments with the weight of
        its own window count (an approximation that is exact for single-class batches).
        """
        for ema, n in zip(self.per_class, counts, strict=True):
            if n:
                ema.update(batch_mean, batch_var, windows=int(n))

    @property
    def mean(self) -> np.ndarray:
        return np.mean([e.m1 for e in self.per_class], axis=0)

    @property
    def var(self) -> np.ndarray:
        m2 = np.mean([e.m2 for e in self.per_class], axis=0)
        return np.maximum(m2 - self.mean**2, 0.0)

    def state(self) -> dict[str, np.ndarray]:
        return {k: np.stack([e.state()[k] for e in self.per_class]) for k in ("m1", "m2", "seen")}

    def load_state(self, flat: dict[str, np.ndarray]) -> None:
        for i, ema in enumerate(self.per_class):
            ema.load_state({k: flat[k][i] for k in ("m1", "m2", "seen")})
