"""Input alignment: undo a per-channel gain and offset before the model sees a window.

Works for every architecture (batch, group or layer norm alike), because it changes the input,
not the model. Each sensor channel is assumed to read `gain * true + offset`; the stage keeps
momentum estimates of both and feeds the model `(x - offset) / gain`.

Why these features, measured on the smartwatch data (docs/adaptation.md):
- the gain comes from the lag-1 autocovariance within a window, not the variance: white noise
  adds variance but no lag-1 covariance, so noise is not mistaken for a gain (with the variance,
  the noise shift fell from 58.7 % to 23.8 % on cnn-gn);
- both are compared with the source *class-conditional* references (stored in the manifest at
  export), weighted by the predicted class probabilities: a long run of one activity then moves
  the reference with it instead of the estimate (a class-free reference follows the activity).

A window's pull is bounded (its autocovariance counts at most `MAX_STEP` times the estimate, its
offset residual at most `RANGE_SIGMAS` source stds), so one broken reading cannot throw the
estimates far, while a real unit error (x57.3) is still learnt within tens of windows.

Past the warm-up, windows are learnt in blocks of `learn_every` (one vectorised fold of the
momentum means, and of the mounting's scores): folded one by one, at batch size 1, they cost more
than the model's forward pass. The bounds of a block are taken from the estimates at its start;
in the warm-up, where those move fastest (a unit error), each call is folded on its own.

Protections: only confident windows (entropy below a source quantile) update, as in the default
policy; and a dead band leaves a channel alone while its estimated shift is within the spread
already seen between the source devices (stored at export): the model was trained across that
spread, so undoing it gains nothing and, on the smartwatch data, cost up to 4.2 points on clean
streams. Beyond the band the shift is undone, nearly whole when far beyond it (`_shrink`). Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.channel_references import window_features
from edge_ttt.adapt.denoise import WhiteNoise
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.mounting import Mounting
from edge_ttt.adapt.statistics import ClassBalance, fold_weights

Arrays = dict[str, np.ndarray]
MAX_STEP = 100.0  # a window's autocovariance counts at most this many times the current estimate
RANGE_SIGMAS = 50.0  # a window's offset residual counts at most this many source stds (x gain)


@dataclass(frozen=True)
class InputOptions:
    """`momentum`: weight of one window once warm (a horizon of 1/momentum windows); the first
    windows count as a running mean over `warmup_windows` more; `reliable_quantile`: update only on
    windows below this source entropy quantile; `prior_momentum`: of class-balance weights that
    count windows of a dominant pseudo-class less (0: off; on, it halved the gain on a sensor bias);
    `dead_band`: a multiple of the spread between source devices left alone, and for offsets at
    least `offset_floor` source stds (the spread of a few devices understates a population's, and
    the offset estimate has its own error: a 0.28-std offset read into a noisy stream cost 1.7
    points); `mounting`: also
    find and undo a quarter-turn mounting first (`edge_ttt.adapt.mounting`), where the bundle
    has the postures for it; `denoise`: smooth white sensor noise away first
    (`edge_ttt.adapt.denoise`)."""

    momentum: float = 0.003
    warmup_windows: float = 20.0
    reliable_quantile: float = 0.5
    prior_momentum: float = 0.0
    dead_band: float = 1.0
    offset_floor: float = 0.4
    mounting: bool = True
    learn_every: int = 16
    denoise: bool = True

    def __post_init__(self) -> None:
        if self.learn_every < 1:
            raise ValueError(f"input alignment learn_every must be 1 or more, got {self.learn_every}")
        if not 0.0 < self.momentum <= 1.0:
            raise ValueError(f"input alignment momentum must be in (0, 1], got {self.momentum}")
        if self.warmup_windows < 0 or self.dead_band < 0 or self.offset_floor < 0:
            raise ValueError("input alignment warmup_windows, dead_band and offset_floor must be >= 0")
        if not 0.0 < self.reliable_quantile <= 1.0:
            raise ValueError(
                f"input alignment reliable_quantile must be in (0, 1], not {self.reliable_quantile:g}"
            )
        if not 0.0 <= self.prior_momentum < 1.0:
            raise ValueError(f"input alignment prior_momentum must be in [0, 1), got {self.prior_momentum}")


def _shrink(value: np.ndarray, band: np.ndarray | float) -> np.ndarray:
    """Garrote shrinkage: 0 inside the band, `value * (1 - (band / value)**2)` outside. Continuous
    at the band's edge, like a soft threshold, but a shift far beyond it is undone almost whole
    (a soft threshold would leave the whole band: a gyroscope in degrees stayed x1.8 off).

    >>> _shrink(np.array([0.5, 2.0, -10.0]), 1.0).tolist()
    [0.0, 1.5, -9.9]
    """
    outside = np.abs(value) > band
    ratio = np.divide(band, value, out=np.zeros_like(value), where=outside)
    kept = value * (1.0 - ratio**2)
    return np.where(outside, kept, 0.0)


def _undone(v: np.ndarray, offset: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """`(v - offset) / gain` per channel (axis 1 of `v`), in float64, as float32: `apply` on windows
    and `aligned_bounds` on their extremes must round alike."""
    at = (slice(None),) + (None,) * (np.ndim(v) - 2)  # the channel axis, then any more
    return ((np.asarray(v, np.float64) - offset[at]) / gain[at]).astype(np.float32)


class InputAlignment:
    """The per-channel gain and offset estimates of one device stream; `apply`, then `update`.

    A source window `s` (one class, one channel) seen through gain 2 and offset 5 is undone:

    >>> s = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    >>> bare = InputOptions(
    ...     momentum=1.0, warmup_windows=0.0, reliable_quantile=1.0, offset_floor=0.0, learn_every=1
    ... )
    >>> stage = InputAlignment(bare, window_features(s), channel_std=np.ones(1))
    >>> stage.update(2 * s + 5, probs=np.ones((1, 1)), entropy=np.zeros(1))  # learnt, no turn
    False
    >>> stage.apply(2 * s + 5).round(6).tolist()
    [[[1.0, 2.0, 3.0, 4.0]]]
    """

    def __init__(
        self,
        options: InputOptions,
        references: tuple[np.ndarray, np.ndarray],
        channel_std: np.ndarray,
        spread: tuple[np.ndarray, np.ndarray] | None = None,
        reliable_entropy: float = np.inf,
        mounting: Mounting | None = None,
        noise_share: np.ndarray | None = None,
    ) -> None:
        self.options = options
        self.ref_mean, self.ref_autocov = (np.asarray(r, np.float64) for r in references)
        self.std = np.asarray(channel_std, np.float64)
        offset_spread, log_gain_spread = spread or (np.zeros(len(self.std)), np.zeros(len(self.std)))
        self.offset_spread = np.asarray(offset_spread, np.float64)
        self.gain_band = options.dead_band * np.asarray(log_gain_spread, np.float64)
        self.reliable_entropy = reliable_entropy
        self.mounting = mounting
        # without the source's noise share (a bundle exported before it) no smoothing: the model
        # may have been trained on what would read as noise
        self.noise = WhiteNoise(noise_share) if options.denoise and noise_share is not None else None
        self.smoothed = False  # whether the last `apply` smoothed a window (`aligned_bounds`)
        self.reset()

    def reset(self) -> None:
        """Back to no correction (and the factory mounting)."""
        if self.mounting is not None:
            self.mounting.reset()
        if self.noise is not None:
            self.noise.reset()
        self._reset_channels()

    def _reset_channels(self) -> None:
        """The gain and offset estimates afresh, from the source's class-averaged autocovariance."""
        start = self.ref_autocov.mean(axis=0)
        self.offset = np.zeros(self.ref_mean.shape[1])
        self.autocov = start.copy()  # momentum mean of what the stream shows
        self.expected = start.copy()  # the same of what the source shows for the predicted classes
        self.windows = 0
        self.balance = ClassBalance(len(self.ref_mean), self.options.prior_momentum)
        # per offset floor, when asked: (offset, gain, whether they change nothing)
        self._corrections: dict[float, tuple[np.ndarray, np.ndarray, bool]] = {}
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # windows not learnt yet
        self._gathered = 0  # the windows in them

    @property
    def log_gain(self) -> np.ndarray:
        """The estimated log gain per channel (0: none); a non-positive autocovariance gives 0."""
        ok = (self.autocov > 0) & (self.expected > 0)
        ratio = np.where(ok, self.autocov, 1.0) / np.where(ok, self.expected, 1.0)
        return 0.5 * np.log(ratio)

    def correction(self, offset_floor: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(offset, gain) applied now: the estimates beyond their dead bands (kept until they move).
        The offset's dead band is the spread between source devices times `dead_band`, and at least
        `offset_floor` source stds (None: the options' floor)."""
        return self._corrected(offset_floor)[:2]

    def _corrected(self, offset_floor: float | None) -> tuple[np.ndarray, np.ndarray, bool]:
        """`correction`, and whether it changes nothing (nothing beyond the dead bands)."""
        floor = self.options.offset_floor if offset_floor is None else offset_floor
        if floor not in self._corrections:
            band = np.maximum(self.options.dead_band * self.offset_spread, floor * self.std)
            offset, gain = _shrink(self.offset, band), np.exp(_shrink(self.log_gain, self.gain_band))
            self._corrections[floor] = (offset, gain, not offset.any() and bool((gain == 1.0).all()))
        return self._corrections[floor]

    def apply(self, x: np.ndarray, offset_floor: float | None = None) -> np.ndarray:
        """The windows [n, channels, length] smoothed where white noise dominates (`denoise`), turned
        back (mounting) and with the per-channel correction undone, float32; the array itself where
        that changes nothing (float32 in, nothing smoothed, no turn, nothing beyond the dead bands),
        which the engine relies on to skip a second guard pass.
        `offset_floor` (source stds) replaces the options' floor of the offset dead band for this
        call (the label runs' narrower one); the estimates are the same."""
        if self.noise is not None:
            smooth = self.noise.apply(x)
            self.smoothed, x = smooth is not x, smooth
        if self.mounting is not None:
            x = self.mounting.apply(x)
        offset, gain, unchanged = self._corrected(offset_floor)
        if unchanged:  # nothing beyond the dead bands: as it came
            return np.asarray(x, np.float32)
        return _undone(x, offset, gain)

    def aligned_bounds(
        self, high: np.ndarray, low: np.ndarray, offset_floor: float | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The per-channel maxima and minima [n, channels] of what `apply` gives, from those of the
        raw windows: `apply`'s float operations on the extremes alone. Each operation keeps the
        order of values (the gain is positive, rounding is monotone), so these are exactly the
        extremes of the corrected windows, for the guard to check without a second pass over them.
        None while a turn mixes the channels, or where the last `apply` (on these windows) smoothed
        one: a moving average moves the extremes."""
        if self.smoothed or (self.mounting is not None and self.mounting.turn):
            return None
        offset, gain, _ = self._corrected(offset_floor)
        both = _undone(np.concatenate((high, low)), offset, gain)  # one call for the two
        return both[: len(high)], both[len(high) :]

    def update(self, x: np.ndarray, probs: np.ndarray, entropy: np.ndarray) -> bool:
        """Learn from raw windows and the model's predictions on their corrected copies, once
        `learn_every` windows have gathered (`flush`); in the warm-up after every call, window
        by window, so that a unit error is learnt as fast as a window's bounded pull allows.
        True when the orientation changed (see `flush`)."""
        if not len(x):
            return False
        self._pending.append((np.array(x, copy=True), np.asarray(probs, np.float64), np.asarray(entropy)))
        self._gathered += len(x)
        if self._gathered >= self.options.learn_every or self.windows < self.options.warmup_windows:
            return self.flush()
        return False

    def flush(self) -> bool:
        """Learn from the gathered windows now. The mounting learns from every window (a wrongly
        mounted device is rarely confident); the gain and offset, learnt in the old orientation,
        start afresh when it changes, and the block is dropped. True when the orientation
        changed: whatever adapted to the old one downstream should start afresh too."""
        if not self._pending:
            return False
        x, probs, entropy = (np.concatenate(part) for part in zip(*self._pending, strict=True))
        self._pending, self._gathered = [], 0
        if self.noise is not None:  # the sensor's noise, whatever the activity or the confidence
            self.noise.update(x)
        if self.mounting is not None:
            turned = self.mounting.apply(x)
            before = self.mounting.turn
            self.mounting.update(x)
            if self.mounting.turn != before:
                self._reset_channels()
                return True
            x = turned
        keep = entropy < self.reliable_entropy
        x, probs = x[keep], probs[keep]
        one_by_one = min(len(x), max(0, math.ceil(self.options.warmup_windows - self.windows)))
        for i in range(one_by_one):  # the warm-up: each window's bounds from the one before
            self._fold(x[i : i + 1], probs[i : i + 1])
        if one_by_one < len(x):
            self._fold(x[one_by_one:], probs[one_by_one:])
        return False

    def _fold(self, x: np.ndarray, probs: np.ndarray) -> None:
        """The momentum means moved by a block of reliable windows in one step: each window's
        weight is what folding them one by one gives it; the cap on the autocovariance and the
        offset's reach come from the estimates before the block."""
        o = self.options
        mean, autocov = window_features(x)
        ref_mean, ref_autocov = probs @ self.ref_mean, probs @ self.ref_autocov
        weights = self.balance.weights(probs.argmax(axis=1)) if o.prior_momentum > 0 else np.ones(len(probs))
        counts = self.windows + 1 + np.arange(len(x))
        rates = weights * np.maximum(o.momentum, 1.0 / (counts + o.warmup_windows))
        kept, share = fold_weights(rates)
        cap = MAX_STEP * np.maximum(self.autocov, self.expected)
        self.autocov = kept * self.autocov + share @ np.minimum(autocov, cap)
        self.expected = kept * self.expected + share @ ref_autocov
        gain = np.exp(self.log_gain)
        reach = RANGE_SIGMAS * self.std * gain
        residual = np.clip(mean - gain * ref_mean - self.offset, -reach, reach)
        self.offset = self.offset + share @ residual
        self.windows += len(x)
        self._corrections = {}
        if o.prior_momentum > 0:
            self.balance.observe(probs.argmax(axis=1))

    def state(self) -> Arrays:
        """The estimates with every window seen so far learnt (`flush` first)."""
        self.flush()
        flat = {
            "offset": self.offset.copy(),
            "autocov": self.autocov.copy(),
            "expected": self.expected.copy(),
            "windows": np.asarray(self.windows),
            "prior": self.balance.share.copy(),
        }
        if self.mounting is not None:
            flat.update(prefixed("mount", self.mounting.state()))
        if self.noise is not None:
            flat.update(prefixed("noise", self.noise.state()))
        return flat

    def load_state(self, flat: Arrays) -> None:
        """Restore what `state` returned; a state without the mounting's arrays leaves it as mounted,
        one without the noise's (saved before it) starts it afresh."""
        mount, noise = unprefixed("mount", flat), unprefixed("noise", flat)
        if self.mounting is not None:
            self.mounting.load_state(mount) if mount else self.mounting.reset()
        if self.noise is not None:
            self.noise.load_state(noise) if noise else self.noise.reset()
        self.offset = np.asarray(flat["offset"], np.float64).copy()
        self.autocov = np.asarray(flat["autocov"], np.float64).copy()
        self.expected = np.asarray(flat["expected"], np.float64).copy()
        self.windows = int(flat["windows"])
        self.balance.share = np.asarray(flat["prior"], np.float64).copy()
        self._corrections = {}
        self._pending, self._gathered = [], 0
