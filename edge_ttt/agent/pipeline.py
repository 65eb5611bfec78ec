"""One (device, stream) from a decoded frame to predictions: check, sequence, window, adapt.

Every (device, stream) has its own sequencer, windower, engine and drift summary; all share one
set of ORT sessions. Predictions go to the publisher, finished drift summaries to the shipper.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_ttt.adapt.engine import Engine, FallbackOptions, Predictions
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.agent.checkpoints import restore
from edge_ttt.drift.summary import DriftSummary, Reference, SummaryCollector
from edge_ttt.manifest import Manifest, check_fits, sample_period_ns
from edge_ttt.stream.codec import Frame, FrameError
from edge_ttt.stream.sequencer import Sequencer
from edge_ttt.stream.window import Windower

# (device, stream, policy, window end times, predictions, arrival) -> latencies of what was published
PublishPredictions = Callable[[str, str, str, np.ndarray, Predictions, float], list[float]]


@dataclass
class AgentCounters:
    """What the router counts: frames passed on, topics it cannot route, frames refused by reason."""

    frames: int = 0
    unknown_topic: int = 0
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
    if stream.isdigit() and int(stream) != frame.stream_id:
        raise FrameError(
            "stream",
            f"topic names stream {stream}, the frame's stream_id is {frame.stream_id}",
            "publish each stream on its own topic",
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

    def feed(self, frame: Frame, arrived: float) -> None:
        """A checked frame: whatever windows it completes are predicted, published and summarised."""
        for ready in self.sequencer.push(frame):
            windows = self.windower.push(ready.times(), ready.values)
            if len(windows):
                predictions = self.engine.process(windows.x)
                latency = self.publish(
                    self.device, self.stream, self.engine.policy_name, windows.t_end_ns, predictions, arrived
                )
                self.drift.observe_predictions(windows.x, predictions, latency)
                self.close_summary(final=False)  # a window count may be reached

    def close_summary(self, final: bool) -> None:
        """Ship the drift summary when its interval ended (`final`: now, ended or not); the
        engine hands over its report only then."""
        now = time.time()
        if final or self.drift.due(now):
            summary = self.drift.close(now, self.engine.report())
            if summary is not None:
                self.ship(summary)


@dataclass(frozen=True)
class PipelineSettings:
    """What a new pipeline is made with, taken from the agent's config."""

    policy: str
    options: dict
    fallback: FallbackOptions | None
    state_dir: Path
    reorder_frames: int
    drift_interval_s: float
    drift_interval_windows: int | None


class Pipelines(dict[tuple[str, str], Pipeline]):
    """The pipelines by (device, stream), each made on its stream's first valid frame, from the
    stream's checkpoint when there is one."""

    def __init__(
        self,
        model: OrtModel,
        manifest: Manifest,
        settings: PipelineSettings,
        publish: PublishPredictions,
        ship: Callable[[DriftSummary], None],
    ) -> None:
        super().__init__()
        self.model = model
        self.manifest = manifest
        self.settings = settings
        self.reference = Reference.from_manifest(manifest)
        self._publish = publish
        self._ship = ship
        self.states_restored = 0  # pipelines that started from a checkpoint

    def get_or_make(self, device: str, stream: str) -> Pipeline:
        key = (device, stream)
        if key not in self:
            self[key] = self._make(device, stream)
        return self[key]

    def close_summaries(self, final: bool) -> None:
        """Ship the drift summaries whose interval ended (`final`: every stream's, ended or not)."""
        for p in self.values():
            p.close_summary(final)

    def _make(self, device: str, stream: str) -> Pipeline:
        s = self.settings
        engine = Engine(self.model, policy=s.policy, options=s.options or None, fallback=s.fallback)
        if restore(engine, s.state_dir, device, stream):
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
        return Pipeline(device, stream, sequencer, windower, engine, drift, self._publish, self._ship)
