"""Momentum-averaged normalization statistics that estimate the population, even at batch size 1.

A batch norm layer reports, per channel, the mean and (biased) variance of its input over one
batch of windows. With one window per batch that variance is the *within-window* variance, which
misses how much window means differ from each other. Averaging the first and second raw moments
instead, E[x] and E[x^2] = var_b + mean_b^2, and taking var = E[x^2] - E[x]^2 at the end, gives
the population variance (law of total variance). Pure numpy, float64 inside.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.flat import Layout

Stats = Mapping[str, tuple[np.ndarray, np.ndarray]]  # per layer: (mean, var)


class FlatStats(Mapping):
    """Per layer (mean, var) as float32 views of one vector: every layer's mean, then every
    layer's variance, in `names` order. A model whose statistics inputs are laid out alike
    (`OrtModel`) takes them in one copy instead of two per layer, and never asks for the views,
    so they are cut only when someone reads a layer."""

    def __init__(self, vector: np.ndarray, layout: Layout) -> None:
        self.vector = vector
        self.names = layout.names
        self._layout = layout
        self._layers: Stats | None = None

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if self._layers is None:
            size = self._layout.size
            means = self._layout.split(self.vector[:size])
            variances = self._layout.split(self.vector[size:])
            self._layers = {k: (means[k], variances[k]) for k in self.names}
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def fold_weights(rates: np.ndarray) -> tuple[float, np.ndarray]:
    """Folding values v_1..v_n one by one into a mean (s <- s + r_i (v_i - s)) in one step: the
    share the old mean keeps, and each value's weight, so that s_n = kept * s_0 + weights @ v.

    >>> kept, weights = fold_weights(np.array([0.5, 0.5]))
    >>> kept, weights.tolist()
    (0.25, [0.25, 0.5])
    """
    after = np.cumprod((1.0 - np.asarray(rates, np.float64))[::-1])[::-1]  # share kept from i on
    return float(after[0]), rates * np.append(after[1:], 1.0)


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

    def weight(self, windows: float) -> float:
        ema = 1.0 - (1.0 - self.momentum) ** windows
        if self.prior_windows is None:
            return ema
        return max(ema, windows / (self.prior_windows + self.seen + windows))

    def update(self, batch_mean: np.ndarray, batch_var: np.ndarray, windows: float) -> None:
        """Fold in one batch's moments; `windows` may be fractional (windows weighted down)."""
        batch_mean = np.asarray(batch_mean, np.float64)
        self.update_raw(batch_mean, np.asarray(batch_var, np.float64) + batch_mean**2, windows)

    def update_raw(self, first: np.ndarray, second: np.ndarray, windows: float) -> None:
        """Fold in one batch's raw moments E[x] and E[x^2], float64, as `update`."""
        a = self.weight(windows)
        self.seen += windows
        self.m1 = (1.0 - a) * self.m1 + a * first
        self.m2 = (1.0 - a) * self.m2 + a * second

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


def mixture_moments(
    means: np.ndarray, variances: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, var) of a mixture of parts [k, ...] with these means and (biased) variances,
    in `weights` shares (None: equal): the law of total variance, float64.

    >>> [float(v) for v in mixture_moments(np.array([0.0, 2.0]), np.array([1.0, 1.0]))]
    [1.0, 2.0]
    """
    means, variances = np.asarray(means, np.float64), np.asarray(variances, np.float64)
    if weights is None:
        mean = means.mean(axis=0)
        return mean, variances.mean(axis=0) + ((means - mean) ** 2).mean(axis=0)
    w = np.asarray(weights, np.float64).reshape(-1, *([1] * (means.ndim - 1)))
    mean = (w * means).sum(axis=0)
    return mean, (w * variances).sum(axis=0) + (w * (means - mean) ** 2).sum(axis=0)


class ClassBalance:
    """Recent share of each predicted class (an EMA of their histogram, `momentum` per window) and
    per window the weight 1 / (C * share of its class), at most 1: a class that dominates the recent
    stream (one long activity) counts as if the classes were balanced, so it cannot drag the
    statistics towards itself.

    >>> balance = ClassBalance(classes=2, momentum=0.5)
    >>> balance.observe(np.array([0]))
    >>> balance.share.tolist(), balance.weights(np.array([0, 1])).tolist()
    ([0.75, 0.25], [0.6666666666666666, 1.0])
    """

    def __init__(self, classes: int, momentum: float) -> None:
        self.momentum = momentum
        self.share = np.full(classes, 1.0 / classes)

    @property
    def share(self) -> np.ndarray:
        return self._share

    @share.setter
    def share(self, share: np.ndarray) -> None:
        self._share = share
        self._class_weights: np.ndarray | None = None  # per class, worked out when first asked

    def weights(self, classes: np.ndarray) -> np.ndarray:
        # Per class once per change of the shares (a policy asks two or three times in between):
        # the same element-wise arithmetic, picked per window.
        if self._class_weights is None:
            share = self._share
            self._class_weights = np.minimum(1.0, 1.0 / (len(share) * np.maximum(share, 1e-12)))
        return self._class_weights[classes]

    def observe(self, classes: np.ndarray) -> None:
        a = 1.0 - (1.0 - self.momentum) ** len(classes)
        if len(classes) == 1:  # one window, as at batch size 1 on every window: the same floats
            share = (1.0 - a) * self.share  # (a * 1 / 1 is a, and adding 0.0 keeps a share)
            share[classes[0]] += a
            self.share = share
            return
        counts = np.bincount(classes, minlength=len(self.share))
        self.share = (1.0 - a) * self.share + a * counts / len(classes)


class LayerMoments:
    """The `MomentEMA` of every batch norm, as one over all their channels: every layer folds in
    the same batch with the same weight, so one update over the concatenation gives each layer's
    floats bit for bit, in a few numpy calls instead of a few per layer. `stats` gives per-layer
    float32 views to normalize with (kept until the next fold); `state` one array per layer."""

    def __init__(self, source: Stats, momentum: float, prior_windows: float | None = None) -> None:
        self.layout = Layout.of({k: m for k, (m, _) in source.items()})
        self.ema = MomentEMA.from_stats(
            self.layout.flatten({k: m for k, (m, _) in source.items()}, np.float64),
            self.layout.flatten({k: v for k, (_, v) in source.items()}, np.float64),
            momentum,
            prior_windows,
        )
        self._stats: FlatStats | None = None

    def __bool__(self) -> bool:
        return bool(self.layout.names)

    def means(self) -> dict[str, np.ndarray]:
        return self.layout.split(self.ema.mean)

    def stats(self) -> FlatStats:
        if self._stats is None:  # the same float32 rounding as `astype`, in one array
            vector = np.concatenate((self.ema.mean, self.ema.var), dtype=np.float32)
            self._stats = FlatStats(vector, self.layout)
        return self._stats

    def fold(
        self, batch_moments: Stats, windows: float, shift: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        """Fold in one batch's moments (per layer: mean, var) weighing `windows` windows; `shift`
        (flat, as the layout) is taken off its raw moments E[x] and E[x^2] first."""
        if self:
            names, size = self.layout.names, self.layout.size
            both = np.concatenate(
                [batch_moments[k][0] for k in names] + [batch_moments[k][1] for k in names], dtype=np.float64
            )
            first = both[:size]
            second = both[size:] + first**2
            if shift is not None:
                first, second = first - shift[0], second - shift[1]
            self.ema.update_raw(first, second, windows)
            self._stats = None

    def state(self) -> dict[str, np.ndarray]:
        m1, m2 = self.layout.split(self.ema.m1), self.layout.split(self.ema.m2)
        seen = np.asarray(self.ema.seen)
        flat = {}
        for k in self.layout.names:
            flat[f"{k}/m1"], flat[f"{k}/m2"], flat[f"{k}/seen"] = m1[k], m2[k], seen
        return flat

    def load_state(self, flat: dict[str, np.ndarray]) -> None:
        """Restore what `state` returned; every layer must have seen the same windows."""
        seen = {float(flat[f"{k}/seen"]) for k in self.layout.names}
        if len(seen) > 1:
            raise ValueError(f"the batch norms' moment averages saw different numbers of windows: {seen}")
        self.ema.m1 = self.layout.flatten({k: flat[f"{k}/m1"] for k in self.layout.names}, np.float64)
        self.ema.m2 = self.layout.flatten({k: flat[f"{k}/m2"] for k in self.layout.names}, np.float64)
        self.ema.seen = seen.pop() if seen else 0.0
        self._stats = None


def fold_moments(
    moments: LayerMoments,
    batch_moments: Stats,
    classes: np.ndarray,
    balance: ClassBalance | None = None,
    shift: tuple[np.ndarray, np.ndarray] | None = None,
    balance_power: float = 1.0,
) -> None:
    """Fold one batch's per-layer moments, less `shift` (`LayerMoments.fold`), into the averages.
    The batch weighs its number of windows, or with `balance` the sum of its windows' class-balance
    weights raised to `balance_power` (1: as they are, 0: each window counts one), after which the
    class shares take the batch's predicted `classes` in."""
    if balance is None:
        windows = len(classes)
    else:
        windows = float(np.add.reduce(balance.weights(classes) ** balance_power))
    moments.fold(batch_moments, windows, shift)
    if balance is not None:
        balance.observe(classes)
