"""White sensor noise: found from the stream itself, without labels, and smoothed away before the
model.

Human motion sampled at tens of hertz is smooth: over two samples it behaves like a first-order
autoregression, whose autocovariances about the window mean satisfy `g1**2 = g0 * g2`. White noise
(a noisy sensor, electrical interference, a coarse converter) adds to the lag-0 autocovariance only,
so `g0 - g1**2 / g2` is the white-noise variance, with no class to know. On the smartwatch
recordings it is at most 2 % of any activity's variance when clean, and up to 80 % of it under the
benchmark's noise corruption (docs/adaptation.md, "White noise"). A model trained on noisy or
broadband signals expects its noise: export stores the source windows' own noise share per channel
(`source_share`, `reference.class_channels.noise_share`), and only the noise above that share of
the stream's variance counts.

The noise is the sensor's, not the activity's, so its variance is a momentum mean over the stream
(per raw channel, from the means of the three autocovariances: mixing activities can only make the
estimate smaller). Each window is then smoothed per channel by a centred moving average whose length
follows the window's own noise share (noise variance over the window's variance): none below
`SHARES[0]`, `LENGTHS[1]` samples below `SHARES[1]`, `LENGTHS[2]` above. A calm activity, whose
variance the same noise dominates, is smoothed more than a vigorous one. The thresholds are the
accuracy of the source model on noisy streams (measured: docs/adaptation.md), not a minimum-error
fit: a model trained on unsmoothed windows loses more to a long average than the error says.
Pure numpy.
"""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.channel_references import autocovariances
from edge_ttt.adapt.statistics import fold_weights

Arrays = dict[str, np.ndarray]
SHARES = (0.2, 0.5)  # noise shares from which windows are smoothed over LENGTHS[1], LENGTHS[2] samples
LENGTHS = (1, 3, 5)
LAGS = (0, 1, 2)  # the autocovariances the noise variance is read from
MOMENTUM = 0.01  # weight of one window once warm; before, a running mean


def noise_variance(g: np.ndarray) -> np.ndarray:
    """The white-noise variance `g0 - g1**2 / g2` of autocovariances [3, ...], within [0, g0]. Where
    the lag-1 or lag-2 autocovariance is not positive (no smooth part to fit), the lag-1 one bounds
    the signal's variance instead, so a rough signal is not all noise.

    >>> noise_variance(np.array([[2.0, 1.0], [1.0, 0.5], [1.0, 0.0]])).tolist()
    [1.0, 0.5]
    """
    g0, g1, g2 = np.asarray(g, np.float64)
    smooth = (g1 > 0) & (g2 > 0)
    signal = np.where(smooth, g1**2 / np.where(smooth, g2, 1.0), np.maximum(g1, 0.0))
    return np.clip(g0 - signal, 0.0, np.maximum(g0, 0.0))


def noise_share(noise: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """`noise` over `variance`, 0 to 1; 0 where there is no variance (or nothing finite to divide).

    >>> noise_share(np.array([1.0, 1.0, 0.0]), np.array([4.0, 0.0, 0.0])).tolist()
    [0.25, 0.0, 0.0]
    """
    share = np.divide(noise, variance, out=np.zeros(np.shape(noise)), where=np.asarray(variance) > 0)
    return np.nan_to_num(share, nan=0.0, posinf=0.0).clip(0.0, 1.0)  # a summary holds no NaN


def source_share(x: np.ndarray) -> np.ndarray:
    """Per channel, the white-noise share of the variance of windows [n, channels, length] (the
    source's, at export): `noise_variance` of their mean autocovariances over their mean variance.

    >>> rng = np.random.default_rng(0)
    >>> source_share(rng.normal(size=(50, 1, 128))).round(1).tolist()  # white noise: all of it
    [1.0]
    """
    g = autocovariances(np.nan_to_num(np.asarray(x, np.float64)), LAGS).mean(axis=1)
    return noise_share(noise_variance(g), g[0])


def moving_average(x: np.ndarray, length: int) -> np.ndarray:
    """A centred moving average over `length` samples (odd) along the last axis, the edges repeated.

    >>> moving_average(np.array([[[0.0, 3.0, 0.0, 3.0]]]), 3).round(6).tolist()
    [[[1.0, 1.0, 2.0, 2.0]]]
    """
    x = np.asarray(x, np.float64)
    half, n = length // 2, x.shape[-1]
    edges = (np.repeat(x[..., :1], half, axis=-1), x, np.repeat(x[..., -1:], half, axis=-1))
    padded = np.concatenate(edges, axis=-1)
    total = padded[..., :n].copy()
    for i in range(1, length):  # a few shifted adds: cheaper than a cumulative sum on short windows
        total += padded[..., i : i + n]
    return total / length


class WhiteNoise:
    """The white-noise variance of one device stream's raw channels beyond what the source's
    windows held (`baseline`: their noise share per channel); `update`, then `apply`.

    A smooth channel with noise of variance 1 added is found and smoothed:

    >>> rng = np.random.default_rng(0)
    >>> t = np.arange(128)
    >>> x = np.sin(2 * np.pi * t / 64)[None, None, :] + rng.normal(0, 1.0, (40, 1, 128))
    >>> stage = WhiteNoise(baseline=np.zeros(1))
    >>> stage.update(x)
    >>> round(float(stage.variance[0]), 1), stage.lengths(x[:1]).tolist()
    (1.0, [[5]])
    >>> clean = np.sin(2 * np.pi * t / 64)[None, None, :]
    >>> quiet = WhiteNoise(baseline=np.zeros(1))
    >>> quiet.update(clean)
    >>> float(quiet.variance[0]) < 1e-3, quiet.apply(clean) is clean
    (True, True)

    A model trained on noise (the source's share 1) expects it: nothing is smoothed.

    >>> WhiteNoise(baseline=np.ones(1)).update(x) or WhiteNoise(baseline=np.ones(1)).apply(x) is x
    True
    """

    def __init__(self, baseline: np.ndarray, momentum: float = MOMENTUM) -> None:
        self.baseline = np.clip(np.asarray(baseline, np.float64), 0.0, 1.0)
        self.channels = len(self.baseline)
        self.momentum = momentum
        self.reset()

    def reset(self) -> None:
        """No noise known."""
        self.moments = np.zeros((3, self.channels))  # momentum means of the three autocovariances
        self.windows = 0
        self.variance = np.zeros(self.channels)  # the white-noise variance beyond the source's share

    def update(self, x: np.ndarray) -> None:
        """Fold in finite raw windows [n, channels, length], in order (one vectorised step with the
        weights that folding them one by one gives them)."""
        g = autocovariances(x, LAGS)
        if not g.shape[1]:
            return
        counts = self.windows + 1 + np.arange(g.shape[1])
        kept, share = fold_weights(np.maximum(self.momentum, 1.0 / counts))
        self.moments = kept * self.moments + np.einsum("i,lic->lc", share, g)
        self.windows += g.shape[1]
        self.variance = self._excess()

    def share(self) -> np.ndarray:
        """Per channel, the white noise beyond the source's as a share of the stream's variance (a
        momentum mean): what the operator should hear of, whatever the activity."""
        return noise_share(self.variance, self.moments[0])

    def lengths(self, x: np.ndarray) -> np.ndarray:
        """The moving average's length for each window and channel [n, channels] (1: none)."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            share = self.variance / np.asarray(x).var(axis=2, dtype=np.float64)
            above = np.less_equal(SHARES, share[..., None])
        # a flat or non-finite window gets no smoothing (its checks are the guard's business)
        return 1 + 2 * above.sum(axis=-1, where=np.isfinite(share)[..., None])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The windows with each channel smoothed as `lengths` says, float32; `x` itself where no
        window needs it."""
        if not self.variance.any():
            return x
        lengths = self.lengths(x)
        if not (lengths > 1).any():
            return x
        out = np.array(x, np.float32, copy=True)
        for length in LENGTHS[1:]:
            rows, channels = np.nonzero(lengths == length)
            if len(rows):
                with np.errstate(invalid="ignore", over="ignore"):  # not finite: the guard's business
                    out[rows, channels] = moving_average(out[rows, channels], length)
        return out

    def state(self) -> Arrays:
        return {"moments": self.moments.copy(), "windows": np.asarray(self.windows)}

    def load_state(self, flat: Arrays) -> None:
        """Restore what `state` returned; refused for another number of channels."""
        moments = np.asarray(flat["moments"], np.float64)
        if moments.shape != (3, self.channels):
            raise ValueError(
                f"white noise moments have shape {list(moments.shape)}, expected [3, {self.channels}]"
            )
        self.moments = moments.copy()
        self.windows = int(flat["windows"])
        self.variance = self._excess()

    def _excess(self) -> np.ndarray:
        """The stream's noise variance less the source's share of the stream's variance."""
        return np.maximum(noise_variance(self.moments) - self.baseline * self.moments[0], 0.0)
