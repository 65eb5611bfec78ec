"""The edge agent: MQTT sensor frames in, predictions out, adapting as it goes.

Data flows one way: transport (paho thread) -> inbox (bounded) -> worker: decode -> sequencer
-> windower -> engine -> predictions, status and state checkpoints. Every (device, stream) has
its own sequencer, windower and adapted state; all share one set of ORT sessions.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_ttt.adapt.engine import Engine, Predictions, StateError
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import load_bundle
from edge_ttt.atomic import atomic_write
from edge_ttt.config import AgentConfig
from edge_ttt.drift.shipper import Shipper
from edge_ttt.drift.spool import Spool
from edge_ttt.drift.summary import Reference, SummaryCollector
from edge_ttt.stream.codec import Frame, FrameError, decode
from edge_ttt.stream.inbox import Inbox
from edge_ttt.stream.mqtt import MqttTransport
from edge_ttt.stream.sequencer import Sequencer
from edge_ttt.stream.window import Windower

log = logging.getLogger(__name__)

RATE_TOLERANCE = 0.01  # a frame's sample period may differ this much from the model's
LATENCY_SAMPLES = 4096  # recent latencies kept for the status percentiles
SUMMARY_CHECK_S = 1.0  # how often the worker looks for drift summary intervals that ended


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    arrived: float  # time.monotonic() when paho handed it over


@dataclass
class Pipeline:
    """One (device, stream): its order, its windows and its adapted state."""

    device: str
    stream: str
    sequencer: Sequencer
    windower: Windower
    engine: Engine
    drift: SummaryCollector


@dataclass
class AgentCounters:
    frames: int = 0
    windows: int = 0
    published: int = 0
    unknown_topic: int = 0
    states_restored: int = 0
    rejected: Counter = field(default_factory=Counter)  # by reason: codec reasons, channels, rate, stream


def status_file(cfg: AgentConfig) -> Path:
    return Path(cfg.state.dir) / "status.json"


def health(cfg: AgentConfig, max_age_s: float | None = None) -> str | None:
    """None when the agent's local status is online and fresh, else what is wrong (for probes)."""
    path = status_file(cfg)
    max_age_s = 3 * cfg.status.interval_s if max_age_s is None else max_age_s
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"no readable status at {path}: {exc}"
    age = time.time() - float(doc.get("time_unix", 0))
    if doc.get("state") != "online":
        return f"agent is {doc.get('state')}"
    if age > max_age_s:
        return f"status is {age:.0f} s old (more than {max_age_s:.0f} s): the agent is stuck or gone"
    return None


class RateLimitedLog:
    """At most one line per `interval` s per kind; the rest only counted (a flood stays cheap)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def warning(self, kind: str, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1e18) >= self.interval:
            self._last[kind] = now
            log.warning(message, extra={"fields": {"kind": kind, **fields}})


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        bundle = load_bundle(cfg.model.artifacts)
        self.manifest = bundle.manifest
        self.model = OrtModel(bundle, device=cfg.model.device, threads=cfg.model.threads)
        log.info(
            "model loaded",
            extra={
                "fields": {
                    "bundle": bundle.sha256[:12],
                    "device": self.model.device,
                    "policy": cfg.model.policy,
                }
            },
        )
        info = self.manifest.model
        self.period_ns = round(1e9 / info.sample_rate_hz)
        self.inbox: Inbox[Message] = Inbox(cfg.queue.max_frames, cfg.queue.when_full)
        self.pipelines: dict[tuple[str, str], Pipeline] = {}
        self.counters = AgentCounters()
        self.latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.stop_event = threading.Event()
        self._warn = RateLimitedLog()
        self._pending: dict[str, list[dict]] = {}
        self.transport = MqttTransport(cfg.mqtt, cfg.agent.id, cfg.status_topic(), self._received)
        self.reference = Reference.from_manifest(self.manifest)
        self.spool = Spool(cfg.drift.spool_dir, cfg.drift.spool_max_bytes)
        self.shipper = Shipper(self.transport.client, self.spool, cfg.drift_topic, cfg.drift.chunk_bytes)

    # network thread -------------------------------------------------------------------------
    def _received(self, topic: str, payload: bytes) -> None:
        self.inbox.put(Message(topic, payload, time.monotonic()))

    # worker ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Until `stop_event` is set: handle messages, publish status, summaries and checkpoints."""
        self.transport.start()
        self.shipper.start()  # also ships what a previous run left in the spool
        next_status = next_summaries = time.monotonic()
        next_checkpoint = time.monotonic() + self.cfg.state.checkpoint_interval_s
        try:
            while not self.stop_event.is_set():
                message = self.inbox.get(timeout=0.2)
                if message is not None:
                    self.handle(message)
                now = time.monotonic()
                if now >= next_status:
                    self.publish_status()
                    next_status = now + self.cfg.status.interval_s
                if now >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = now + self.cfg.state.checkpoint_interval_s
                if now >= next_summaries:  # intervals are minutes: a look per second is plenty
                    self._close_summaries(final=False)
                    next_summaries = now + SUMMARY_CHECK_S
        finally:
            self.checkpoint()
            self._close_summaries(final=True)
            self.shipper.pump()  # hand the last ones to paho; the spool keeps whatever is not acked
            self.publish_status("offline")
            self.transport.stop(counters=self.status()["counters"])
            self.shipper.stop()

    def _close_summaries(self, final: bool) -> None:
        for p in self.pipelines.values():
            self._close_summary(p, final)

    def _close_summary(self, p: Pipeline, final: bool) -> None:
        now = time.time()
        if final or p.drift.due(now):
            summary = p.drift.close(now, p.engine.report())
            if summary is not None:
                self.shipper.submit(summary)

    def handle(self, message: Message) -> None:
        parsed = self.cfg.mqtt.parse_topic(message.topic)
        if parsed is None:
            self.counters.unknown_topic += 1
            return
        device, stream = parsed
        try:
            frame = decode(message.payload, self.cfg.queue.max_frame_bytes)
            self._check(frame, stream)
        except FrameError as exc:
            self.counters.rejected[exc.reason] += 1
            self._warn.warning(exc.reason, "frame dropped", device=device, stream=stream, error=str(exc))
            return
        self.counters.frames += 1
        pipeline = self._pipeline(device, stream)
        for ready in pipeline.sequencer.push(frame):
            windows = pipeline.windower.push(ready.times(), ready.values)
            if len(windows):
                predictions = pipeline.engine.process(windows.x)
                latency = self._publish_predictions(pipeline, windows.t_end_ns, predictions, message.arrived)
                pipeline.drift.observe_predictions(windows.x, predictions, latency)
                self._close_summary(pipeline, final=False)  # a window count reached

    def _check(self, frame: Frame, stream: str) -> None:
        """What the codec cannot know: the model's channels and rate, and the topic's stream."""
        info = self.manifest.model
        if frame.n_channels != len(info.channels):
            raise FrameError(
                "channels",
                f"frame has {frame.n_channels} channels, the model takes {len(info.channels)}",
                f"send {', '.join(info.channels)} in this order",
            )
        if abs(frame.period_ns - self.period_ns) > RATE_TOLERANCE * self.period_ns:
            raise FrameError(
                "rate",
                f"sample period {frame.period_ns} ns, the model's is {self.period_ns} ns",
                f"sample at {info.sample_rate_hz:g} Hz or deploy a model trained at this rate",
            )
        if stream.isdigit() and int(stream) != frame.stream_id:
            raise FrameError(
                "stream",
                f"topic names stream {stream}, the frame's stream_id is {frame.stream_id}",
                "publish each stream on its own topic",
            )

    def _pipeline(self, device: str, stream: str) -> Pipeline:
        key = (device, stream)
        if key not in self.pipelines:
            engine = Engine(self.model, policy=self.cfg.model.policy, options=self.cfg.model.options or None)
            path = self._state_path(device, stream)
            if path.is_file():
                try:
                    engine.load_state(path)
                    self.counters.states_restored += 1
                    log.info("adapted state restored", extra={"fields": {"device": device, "stream": stream}})
                except StateError as exc:
                    log.warning(
                        "state not restored, starting from source", extra={"fields": {"error": str(exc)}}
                    )
            info = self.manifest.model
            windower = Windower(info.window, info.hop, self.period_ns, len(info.channels))
            drift = SummaryCollector(
                self.reference,
                device,
                stream,
                self.model.bundle_sha256,
                engine.policy_name,
                interval_s=self.cfg.drift.interval_s,
                interval_windows=self.cfg.drift.interval_windows,
                counters=engine.counters.as_dict(),
            )
            sequencer = Sequencer(self.cfg.windowing.reorder_frames)
            self.pipelines[key] = Pipeline(device, stream, sequencer, windower, engine, drift)
        return self.pipelines[key]

    def _publish_predictions(
        self, pipeline: Pipeline, t_end_ns: np.ndarray, pred: Predictions, arrived: float
    ) -> list[float]:
        """Publish (or hold for a batch); the latency in ms of what was published, if anything."""
        classes = self.manifest.model.classes
        pending = self._pending.setdefault(pipeline.device, [])
        for i in range(len(pred)):
            pending.append(
                {
                    "stream": pipeline.stream,
                    "t_end_ns": int(t_end_ns[i]),
                    "class": classes[int(pred.classes[i])],
                    "class_index": int(pred.classes[i]),
                    "confidence": round(float(pred.probs[i].max()), 5),
                    "entropy": round(float(pred.entropy[i]), 5),
                    "valid": bool(pred.valid[i]),
                }
            )
        self.counters.windows += len(pred)
        if len(pending) >= self.cfg.predictions.batch:
            body = {
                "device": pipeline.device,
                "policy": pipeline.engine.policy_name,
                "model": self.model.bundle_sha256,
            }
            payload = body | (pending[0] if len(pending) == 1 else {"predictions": pending})
            self.transport.publish(
                self.cfg.prediction_topic(pipeline.device),
                json.dumps(payload).encode(),
                self.cfg.predictions.qos,
            )
            self.counters.published += len(pending)
            self._pending[pipeline.device] = []
            self.latency_ms.append(1000 * (time.monotonic() - arrived))
            return [self.latency_ms[-1]]
        return []

    # reporting and state ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        engines: Counter = Counter()
        order: Counter = Counter()
        gaps = 0
        for p in self.pipelines.values():
            engines.update({k: v for k, v in p.engine.counters.as_dict().items() if k != "windows"})
            order.update(vars(p.sequencer.counters))
            gaps += p.windower.gaps
        lat = np.asarray(self.latency_ms)
        c = self.counters
        return {
            "counters": {
                "frames": c.frames,
                "windows": c.windows,
                "predictions_published": c.published,
                "decode_errors": dict(c.rejected),
                "unknown_topic": c.unknown_topic,
                "states_restored": c.states_restored,
                "queue_dropped": self.inbox.counters.dropped,
                "queue_depth": len(self.inbox),
                "drift_spooled": len(self.spool.pending()),
                "drift_dropped": self.spool.counters.dropped,
                "gaps": gaps,
                **{f"frames_{k}": v for k, v in order.items() if k != "delivered"},
                **engines,
            },
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
                "p99": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            },
            "streams": len(self.pipelines),
            "device": self.model.device,
            "policy": self.cfg.model.policy,
            "model": self.model.bundle_sha256,
        }

    def publish_status(self, state: str = "online") -> None:
        """To the retained status topic, and to `<state.dir>/status.json` for local health checks."""
        doc = {"agent": self.cfg.agent.id, "state": state, "time_unix": time.time(), **self.status()}
        payload = json.dumps(doc).encode()
        if state == "online":
            self.transport.publish(self.cfg.status_topic(), payload, qos=1, retain=True)
        atomic_write(status_file(self.cfg), lambda f: f.write(payload))

    def _state_path(self, device: str, stream: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{device}__{stream}")
        return Path(self.cfg.state.dir) / f"{safe}.npz"

    def checkpoint(self) -> None:
        """Save every stream's adapted state (atomic per file)."""
        for p in self.pipelines.values():
            p.engine.save_state(self._state_path(p.device, p.stream))
