"""Drift summaries: what one (device, stream) saw and did over an interval, without raw data.

`SummaryCollector` folds in every batch of windows the engine processed and, when the interval
(seconds or windows) is over, closes a `DriftSummary` with the engine's report of that moment (a
value: the collector never holds the engine). Summaries carry their source reference, so their
drift scores can be recomputed after `merge_summaries` combines consecutive intervals or several
devices. Pure: no I/O (schema.py writes them).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edge_ttt import __version__
from edge_ttt.drift.calibration import limit_at
from edge_ttt.drift.reference import Reference
from edge_ttt.drift.stats import Histogram, Mean, Moments, mean_shift, psi
from edge_ttt.steadiness import StayCounter, Stays

COUNTERS = (
    "adapt_steps",
    "skipped_unreliable",
    "skipped_no_drift",
    "rejected_invalid",
    "resets",
    "rollbacks",
    "fallbacks",
    "windows_on_source",
)
BINS = 20  # confidence and entropy histograms: equal-width bins over [0, 1] and [0, ln K]
LATENCY_EDGES_MS = tuple(float(e) for e in np.geomspace(0.1, 10_000.0, 41))  # 0.1 ms to 10 s, x1.33


@dataclass(frozen=True)
class Adaptation:
    """Where the adapted state stands at the end of an interval (a level, not a count), as the
    engine reports it.

    Per batch-norm layer: the mean over channels of |mu - mu_s| / sqrt(var_s + eps) and of
    |ln((var + eps) / (var_s + eps))|; None for policies that keep no statistics of their own
    (source, tent, sar), empty for models without batch norms. `param_change` is the L2 norm of
    the adapted norm affines minus the source ones; `param_change_rel` divides it by the source norm.
    `mounting`: how the device was found mounted or wired ("as mounted", "turned 180° about x",
    "sensors exchanged"), for the operator to fix at the device. `noise_share`: per raw channel, the
    white noise the input alignment found beyond the source's, as a share of the channel's variance
    (a noisy sensor, also to fix at the device; smoothed meanwhile).
    """

    norm_layers: tuple[str, ...] | None
    norm_mean_shift: tuple[float, ...] | None
    norm_log_var_ratio: tuple[float, ...] | None
    param_change: float
    param_change_rel: float
    mounting: str | None = None  # the input alignment's orientation in words; None: no search
    noise_share: tuple[float, ...] | None = None  # per channel; None: not looked for


class EngineReport(Protocol):
    """What an interval's close takes from the engine: its counters (totals so far) and the
    fields of `Adaptation`, by name."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def adaptation(self) -> Mapping[str, Any]: ...


@dataclass
class DriftSummary:
    """One interval of one (device, stream), or a merge of several. Times are Unix seconds."""

    summary_id: str
    device: str
    stream: str
    start: float
    end: float
    model_sha256: str
    policy: str
    agent_version: str
    reference: Reference
    moments: Moments  # over the raw samples of the windows, per channel
    channel_hist: list[Histogram]  # per channel, over the reference edges
    class_counts: np.ndarray  # int64 [K], predicted classes
    confidence: Histogram  # max softmax probability
    entropy: Histogram  # prediction entropy, nats
    latency: Histogram  # ms, frame arrival to prediction
    estimated: Mean = field(default_factory=Mean)  # per-window label-free estimates, served model
    source_estimated: Mean = field(default_factory=Mean)  # the same, source model (where it ran)
    windows: int = 0
    invalid_windows: int = 0  # failed the input guard
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    adaptation: Adaptation | None = None
    spool_dropped: int = 0  # the agent's spool drops since its previous summary (any stream)
    frames_missing: int = 0  # this stream's frames given up on (sequence gaps) in the interval
    source_class_counts: np.ndarray | None = None  # int64 [K], the source model's classes where it ran
    # how often the served classes, and the source model's where it ran, stayed from window to window
    stays: Stays = field(default_factory=Stays)
    source_stays: Stays = field(default_factory=Stays)

    @classmethod
    def empty(
        cls, reference: Reference, device: str, stream: str, start: float, model_sha256: str, policy: str
    ) -> DriftSummary:
        k = len(reference.classes)
        return cls(
            summary_id=uuid.uuid4().hex,
            device=device,
            stream=stream,
            start=start,
            end=start,
            model_sha256=model_sha256,
            policy=policy,
            agent_version=__version__,
            reference=reference,
            moments=Moments.empty(len(reference.channels)),
            channel_hist=[Histogram.over(e) for e in reference.edges],
            class_counts=np.zeros(k, np.int64),
            confidence=Histogram.over(np.linspace(0.0, 1.0, BINS + 1)[1:-1]),
            entropy=Histogram.over(np.linspace(0.0, math.log(k), BINS + 1)[1:-1]),
            latency=Histogram.over(LATENCY_EDGES_MS),
            source_class_counts=np.zeros(k, np.int64),
        )

    @property
    def samples(self) -> int:
        """Raw sample rows seen (overlapping windows count their shared samples again)."""
        return int((self.moments.count + self.moments.nonfinite).max(initial=0))

    def psi(self) -> np.ndarray:
        """Population stability index per channel against the reference shares (NaN without data)."""
        return np.array(
            [
                psi(h.counts, np.asarray(s))
                for h, s in zip(self.channel_hist, self.reference.share, strict=True)
            ]
        )

    def psi_limit(self) -> np.ndarray:
        """Per channel, the PSI that in-distribution devices stay under at this interval's window
        count (`edge_ttt.drift.calibration`); NaN without windows or without a calibration."""
        ref = self.reference
        if not ref.limit_windows:
            return np.full(len(ref.channels), np.nan)
        return limit_at(self.windows, ref.limit_windows, ref.limit_psi)

    def mean_shift(self) -> np.ndarray:
        """Standardized mean shift per channel (NaN without finite data)."""
        shift = mean_shift(self.moments.mean, np.asarray(self.reference.mean), np.asarray(self.reference.var))
        return np.where(self.moments.count > 0, shift, np.nan)

    def latency_ms(self, q: float) -> float | None:
        return self.latency.quantile(q)

    @property
    def estimated_accuracy(self) -> float | None:
        """Label-free estimate of the served predictions' accuracy (None without estimates)."""
        return self.estimated.get()

    @property
    def source_estimated_accuracy(self) -> float | None:
        """The same for the source model (None where the engine ran no source pass)."""
        return self.source_estimated.get()


def add_counts(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Counts that older summaries lack (None) add as zeros; None only when both lack them."""
    if a is None or b is None:
        return b if a is None else a
    return a + b


class SummaryCollector:
    """Collects one (device, stream) and closes a summary every `interval_s` seconds or every
    `interval_windows` windows, whichever comes first. An interval without windows yields none.

    `counters` are the engine's counters when the collector starts (a restored engine does not
    start at 0); each summary holds the increase over its interval.
    """

    def __init__(
        self,
        reference: Reference,
        device: str,
        stream: str,
        model_sha256: str,
        policy: str,
        interval_s: float = 300.0,
        interval_windows: int | None = None,
        counters: Mapping[str, int] | None = None,
        now: float | None = None,
    ) -> None:
        if interval_s <= 0 or (interval_windows is not None and interval_windows <= 0):
            raise ValueError("intervals must be positive")
        self.reference = reference
        self.identity = (device, stream, model_sha256, policy)
        self.interval_s = interval_s
        self.interval_windows = interval_windows
        self._counters = {k: int((counters or {}).get(k, 0)) for k in COUNTERS}
        self._stays, self._source_stays = StayCounter(reference.stay), StayCounter(reference.stay)
        self._open(time.time() if now is None else now)

    def _open(self, now: float) -> None:
        device, stream, model, policy = self.identity
        self.current = DriftSummary.empty(self.reference, device, stream, now, model, policy)
        self._base = dict(self._counters)

    def observe(
        self,
        x: np.ndarray,
        classes: np.ndarray,
        confidence: np.ndarray,
        entropy: np.ndarray,
        valid: np.ndarray | None = None,
        counters: Mapping[str, int] | None = None,
        adaptation: Adaptation | None = None,
        latency_ms: Iterable[float] = (),
        estimated_correct: np.ndarray | None = None,
        source_estimated_correct: np.ndarray | None = None,
        source_classes: np.ndarray | None = None,
    ) -> SummaryCollector:
        """One batch: raw windows `[n, C, L]`, and per window the predicted class, confidence,
        entropy and guard verdict; the engine's counters and adaptation level after the batch;
        per window, the label-free accuracy estimates of the served and the source model
        (NaN: not estimated) and the source model's class (-1: it did not run)."""
        x = np.asarray(x)
        s = self.current
        samples = np.moveaxis(x, 1, 2).reshape(-1, x.shape[1])
        s.moments.update(samples)
        for c, hist in enumerate(s.channel_hist):
            hist.update(samples[:, c])
        s.class_counts += np.bincount(np.asarray(classes, np.int64), minlength=len(s.class_counts))
        s.stays += self._stays.count(classes)
        s.confidence.update(confidence)
        s.entropy.update(entropy)
        s.latency.update(np.fromiter(latency_ms, np.float64))
        if estimated_correct is not None:
            s.estimated.update(estimated_correct)
        if source_estimated_correct is not None:
            s.source_estimated.update(source_estimated_correct)
        if source_classes is not None:
            ran = np.asarray(source_classes, np.int64)
            ran = ran[ran >= 0]
            k = len(s.class_counts)
            s.source_class_counts = add_counts(s.source_class_counts, np.bincount(ran, minlength=k))
            s.source_stays += self._source_stays.count(source_classes)
        s.windows += len(x)
        s.invalid_windows += 0 if valid is None else int((~np.asarray(valid, bool)).sum())
        if counters is not None:
            self._counters = {k: int(counters.get(k, 0)) for k in COUNTERS}
        if adaptation is not None:
            s.adaptation = adaptation
        return self

    def observe_predictions(
        self, x: np.ndarray, predictions: Any, latency_ms: Iterable[float] = ()
    ) -> SummaryCollector:
        """`observe` from the engine's `Predictions` (classes, probs, entropy, valid and the
        accuracy estimates); the counters (windows on source among them) and the adaptation level
        come with the report at `close`."""
        return self.observe(
            x,
            predictions.classes,
            predictions.probs.max(axis=1),
            predictions.entropy,
            predictions.valid,
            latency_ms=latency_ms,
            estimated_correct=predictions.estimated_correct,
            source_estimated_correct=predictions.source_estimated_correct,
            source_classes=predictions.source_classes,
        )

    def due(self, now: float | None = None) -> bool:
        """Whether the interval is over (by time or window count): time to `close` it. A clock set
        back (network time correcting a clock that ran ahead) ends it too: waiting for the old
        time to come round again would leave the fleet without summaries for as long as the step."""
        now = time.time() if now is None else now
        full = self.interval_windows is not None and self.current.windows >= self.interval_windows
        return full or now - self.current.start >= self.interval_s or now < self.current.start

    def maybe_close(
        self, now: float | None = None, report: EngineReport | None = None
    ) -> DriftSummary | None:
        """`close` when the interval is over, else None."""
        now = time.time() if now is None else now
        return self.close(now, report) if self.due(now) else None

    def close(self, now: float | None = None, report: EngineReport | None = None) -> DriftSummary | None:
        """End the interval now (also at shutdown); None when it saw no windows. The engine's
        `report` gives the counters and the adaptation level at the end of the interval."""
        now = time.time() if now is None else now
        s = self.current
        s.end = now
        if report is not None:
            self._counters = {k: int(report.counters.get(k, 0)) for k in COUNTERS}
            s.adaptation = Adaptation(**report.adaptation)
        s.counters = {k: self._counters[k] - self._base[k] for k in COUNTERS}
        self._open(now)
        return s if s.windows else None
