"""One (device, stream) from a decoded frame to predictions: check, sequence, window, adapt.

Every (device, stream) has its own sequencer, windower, engine and drift summary; all share one
set of ORT sessions. Predictions go to the publisher, finished drift summaries to the shipper.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_ttt.adapt.engine import (
    AutoFallback,
    AutoInputs,
    AutoRuns,
    Engine,
    FallbackOptions,
    InputOptions,
    Predictions,
    RunOptions,
)
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.agent.checkpoints import CheckpointWriter, restore, stamped, state_path
from edge_ttt.drift.reference import Reference
from edge_ttt.drift.summary import DriftSummary, SummaryCollector
from edge_ttt.logs import RateLimitedLog
from edge_ttt.manifest import Manifest, check_fits, sample_period_ns
from edge_ttt.stream.codec import Frame, FrameError
from edge_ttt.stream.sequencer import Sequencer
from edge_ttt.stream.window import Windower

log = logging.getLogger(__package__)

CHECKPOINT_STEP_S = 0.002  # worker time per loop turn for copying states during a checkpoint round

# (device, stream, policy, window end times, predictions, arrival) -> latencies of what was published
PublishPredictions = Callable[[str, str, str, np.ndarray, Predictions, float], list[float]]


@dataclass
class AgentCounters:
    """What the router counts: frames passed on, topics it cannot route, frames refused by reason,
    frames whose stream failed on them (a fault of the agent's, not of the frame)."""

    frames: int = 0
    unknown_topic: int = 0
    stream_errors: int = 0
    rejected: Counter = field(default_factory=Counter)  # by reason: codec reasons, channels, rate, stream


def check_frame(manifest: Manifest, frame: Frame, stream: str) -> None:
    """What the codec cannot know: the model's channels and rate, and the topic's stream."""
    info = manifest.model
    misfit = check_fits(
        info.channels, info.sample_rate_hz, channels=frame.n_channels, period_ns=frame.period_ns
    )
    if misfit == "channels":
        raise FrameError(
            "channels",
            f"frame has {frame.n_channels} channels, the model takes {len(info.channels)}",
            f"send {', '.join(info.channels)} in this order",
        )
    if misfit == "rate":
        raise FrameError(
            "rate",
            f"sample period {frame.period_ns} ns, the model's is {sample_period_ns(info.sample_rate_hz)} ns",
            f"sample at {info.sample_rate_hz:g} Hz or deploy a model trained at this rate",
        )
    if not stream.isascii() and any(char.isnumeric() for char in stream):  # ASCII: one C call
        # str.isdigit() holds for '²' and '①' (int() refuses them), int() reads '٣' as 3: either
        # way one stream would get two names, or a frame would end the worker.
        raise FrameError(
            "stream",
            f"topic's stream level {stream[:40]!r} holds a digit that is not ASCII",
            "name numbered streams 0, 1, 2, ... in ASCII digits",
        )
    if stream.isdigit() and stream != str(frame.stream_id):  # ASCII here; '00' is not '0'
        raise FrameError(
            "stream",
            f"topic names stream {stream[:40]}, the frame's stream_id is {frame.stream_id}",
            "publish each stream on its own topic, its number written without leading zeros",
        )


@dataclass
class Pipeline:
    """One (device, stream): its order, its windows and its adapted state."""

    device: str
    stream: str
    sequencer: Sequencer
    windower: Windower
    engine: Engine
    drift: SummaryCollector
    publish: PublishPredictions
    ship: Callable[[DriftSummary], None]
    warn: RateLimitedLog  # the agent's pipelines share one: a flood of gaps logs once a while
    dirty: bool = False  # adapted since its last checkpoint (or restore)
    missing_reported: int = 0  # the sequencer's `missing` when the last summary closed

    def feed(self, frame: Frame, arrived: float) -> None:
        """A checked frame: whatever windows it completes are predicted, published and summarised."""
        missing = self.sequencer.counters.missing
        for ready in self.sequencer.push(frame):
            windows = self.windower.push(ready.times(), ready.values)
            if len(windows):
                predictions = self.engine.process(windows.x)
                self.dirty = True
                latency = self.publish(
                    self.device, self.stream, self.engine.policy_name, windows.t_end_ns, predictions, arrived
                )
                self.drift.observe_predictions(windows.x, predictions, latency)
                self.close_summary(final=False)  # a window count may be reached
        if (now_missing := self.sequencer.counters.missing) > missing:
            self.warn.warning(
                "frames_missing",
                "frames missing: sequence numbers given up on",
                fields={"device": self.device, "stream": self.stream, "missing": now_missing},
            )

    def close_summary(self, final: bool) -> None:
        """Ship the drift summary when its interval ended (`final`: now, ended or not); the
        engine hands over its report only then."""
        now = time.time()
        if final or self.drift.due(now):
            summary = self.drift.close(now, self.engine.report())
            if summary is not None:
                missing = self.sequencer.counters.missing
                summary.frames_missing, self.missing_reported = missing - self.missing_reported, missing
                self.ship(summary)


@dataclass(frozen=True)
class PipelineSettings:
    """What a new pipeline is made with, taken from the agent's config."""

    policy: str
    options: dict
    fallback: FallbackOptions | AutoFallback | None
    inputs: InputOptions | AutoInputs | None
    runs: RunOptions | AutoRuns | None
    source_every: int
    state_dir: Path
    reorder_frames: int
    drift_interval_s: float
    drift_interval_windows: int | None
    max_streams: int


class Pipelines(OrderedDict[tuple[str, str], Pipeline]):
    """The live pipelines by (device, stream), least recently used first. Each is made on its
    stream's first valid frame, from the stream's checkpoint when there is one; beyond
    `max_streams` the least recently used is evicted: its state checkpointed, its open drift
    interval closed and shipped. Checkpoints go through `writer`, off the worker's hot path."""

    def __init__(
        self,
        model: OrtModel,
        manifest: Manifest,
        settings: PipelineSettings,
        publish: PublishPredictions,
        ship: Callable[[DriftSummary], None],
        writer: CheckpointWriter,
    ) -> None:
        super().__init__()
        self.model = model
        self.manifest = manifest
        self.settings = settings
        self.reference = Reference.from_manifest(manifest)
        self._publish = publish
        self._ship = ship
        self.writer = writer
        self.states_restored = 0  # pipelines that started from a checkpoint
        self.evicted = 0  # pipelines closed for newer ones beyond max_streams
        # frame-order counters and gaps of evicted pipelines, so that the agent's totals never drop
        self.retired_order: Counter = Counter()
        self.retired_gaps = 0
        self._due: deque[tuple[str, str]] = deque()  # the checkpoint round under way
        self._warn = RateLimitedLog(log)

    def get_or_make(self, device: str, stream: str) -> Pipeline:
        key = (device, stream)
        if key in self:
            self.move_to_end(key)
            return self[key]
        while len(self) >= self.settings.max_streams:
            self.evict()
        self[key] = pipeline = self._make(device, stream)
        return pipeline

    def evict(self) -> None:
        """Close the least recently used pipeline: checkpoint it, ship its open interval."""
        (device, stream), p = self.popitem(last=False)
        p.close_summary(final=True)
        self._checkpoint(p)
        self.retired_order.update(vars(p.sequencer.counters))
        self.retired_gaps += p.windower.gaps
        self.evicted += 1
        fields = {"device": device, "stream": stream, "evicted": self.evicted}
        self._warn.warning("evicted", "stream evicted: max_streams are live", fields=fields)

    def close_summaries(self, final: bool) -> None:
        """Ship the drift summaries whose interval ended (`final`: every stream's, ended or not)."""
        for p in self.values():
            p.close_summary(final)

    def start_checkpoints(self) -> None:
        """Begin a round: every stream adapted since its last checkpoint is copied by later
        `checkpoint_step`s, a few per worker turn."""
        self._due = deque(k for k, p in self.items() if p.dirty)

    def checkpoint_step(self, budget_s: float = CHECKPOINT_STEP_S) -> None:
        """Copy the states of the round for about `budget_s`, as far as the writer has room."""
        deadline = time.monotonic() + budget_s
        while self._due and self.writer.has_room():
            p = self.get(self._due.popleft())
            if p is not None and p.dirty:  # gone meanwhile: checkpointed when evicted
                self._checkpoint(p)
            if time.monotonic() >= deadline:
                break

    def checkpoint_all(self, timeout: float) -> int:
        """The last checkpoints of a stop, most recently used first, for at most `timeout` s
        (with the writer's close); how many adapted streams were left at their previous one."""
        deadline = time.monotonic() + timeout
        dirty = [p for p in reversed(self.values()) if p.dirty]
        for i, p in enumerate(dirty):
            if not self._checkpoint(p, timeout=max(0.0, deadline - time.monotonic())):
                return len(dirty) - i
        return 0

    def _checkpoint(self, p: Pipeline, timeout: float | None = None) -> bool:
        if not p.dirty:
            return True
        path = state_path(self.settings.state_dir, p.device, p.stream)
        if not self.writer.submit(path, stamped(p.engine.snapshot(), p.device, p.stream), timeout):
            return False
        p.dirty = False
        return True

    def _make(self, device: str, stream: str) -> Pipeline:
        s = self.settings
        engine = Engine(
            self.model,
            s.policy,
            s.options or None,
            fallback=s.fallback,
            inputs=s.inputs,
            runs=s.runs,
            source_every=s.source_every,
        )
        pending = self.writer.take(state_path(s.state_dir, device, stream))
        if restore(engine, s.state_dir, device, stream, pending):
            self.states_restored += 1
        info = self.manifest.model
        windower = Windower(info.window, info.hop, sample_period_ns(info.sample_rate_hz), len(info.channels))
        drift = SummaryCollector(
            self.reference,
            device,
            stream,
            self.model.bundle_sha256,
            engine.policy_name,
            interval_s=s.drift_interval_s,
            interval_windows=s.drift_interval_windows,
            counters=engine.counters.as_dict(),
        )
        sequencer = Sequencer(s.reorder_frames)
        pipeline = Pipeline(
            device, stream, sequencer, windower, engine, drift, self._publish, self._ship, self._warn
        )
        pipeline.dirty = pending is not None  # its newest state is in memory only
        return pipeline
