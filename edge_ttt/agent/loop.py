"""The edge agent: MQTT sensor frames in, predictions out, adapting as it goes.

Data flows one way: transport (paho thread) -> inbox (bounded) -> worker: route by topic, decode,
check -> the stream's pipeline (sequencer, windower, engine) -> predictions, drift summaries;
status and state checkpoints on their intervals (the worker copies states, a thread writes them).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.agent.checkpoints import CheckpointWriter
from edge_ttt.agent.config import AgentConfig
from edge_ttt.agent.pipeline import AgentCounters, Pipelines, PipelineSettings, check_frame
from edge_ttt.agent.publisher import PredictionPublisher
from edge_ttt.agent.quiet import QuietWatch
from edge_ttt.agent.spooler import SummarySpooler
from edge_ttt.agent.status import StatusReporter, StatusSources, read_health, status_file
from edge_ttt.artifacts import Bundle, load_bundle
from edge_ttt.dirlock import DirLock, hold
from edge_ttt.drift.shipper import Shipper
from edge_ttt.drift.spool import Spool
from edge_ttt.logs import RateLimitedLog
from edge_ttt.mqtt_callbacks import MAX_TOPIC_BYTES
from edge_ttt.stream.codec import FrameError, decode
from edge_ttt.stream.inbox import Inbox
from edge_ttt.stream.mqtt import MqttTransport

log = logging.getLogger(__package__)

SUMMARY_CHECK_S = 1.0  # how often the worker looks for drift summary intervals that ended
QUEUE_FULL = (
    "inbox full, messages dropped for good (queue.when_full): a flood, or the backlog a broker kept "
    "while the agent was away arriving faster than the worker takes it. Fix: raise queue.max_frames "
    "(and queue.max_bytes) above the backlog an outage leaves (frames/s x seconds away)"
)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    arrived: float  # time.monotonic() when paho handed it over


def health(
    cfg: AgentConfig, max_age_s: float | None = None, max_disconnected_s: float | None = None
) -> str | None:
    """None when the agent's local status is fresh and connected (or briefly not), else what is wrong."""
    max_age_s = 3 * cfg.status.interval_s if max_age_s is None else max_age_s
    down_s = cfg.status.max_disconnected_s if max_disconnected_s is None else max_disconnected_s
    return read_health(status_file(cfg.state.dir), max_age_s, down_s)


def hold_dirs(cfg: AgentConfig) -> list[DirLock]:
    """The agent's directories for this process (`dirlock.DirInUse` if another agent has one), to
    take before an `Agent` touches them: its spool clears a crash's temporaries as it opens."""
    owner = f"agent '{cfg.agent.id}'"
    locks = [hold(cfg.state.dir, owner, "state.dir")]
    if cfg.drift.spool_dir != cfg.state.dir:
        try:
            locks.append(hold(cfg.drift.spool_dir, owner, "drift.spool_dir"))
        except BaseException:
            locks[0].release()
            raise
    return locks


def _settings(cfg: AgentConfig) -> PipelineSettings:
    m, d = cfg.model, cfg.drift
    return PipelineSettings(
        m.policy,
        m.options,
        m.fallback.options(),
        m.input.options(),
        m.runs.options(),
        m.estimates.source_every,
        cfg.state.dir,
        cfg.windowing.reorder_frames,
        d.interval_s,
        d.interval_windows,
        cfg.state.max_streams,
    )


def agent_bundle(cfg: AgentConfig) -> Bundle:
    """`model.artifacts`, verified, and a policy that can run on it (`ModelSection.check_fits`):
    both refused before anything starts."""
    bundle = load_bundle(cfg.model.artifacts)
    cfg.model.check_fits(bundle.manifest)
    return bundle


class Agent:
    """Routes each message of the inbox to its stream's pipeline, and keeps status, drift summaries
    and checkpoints on their intervals."""

    def __init__(self, cfg: AgentConfig, bundle: Bundle | None = None) -> None:
        """`bundle`: from `agent_bundle(cfg)` already (else it is called here)."""
        self.cfg, m = cfg, cfg.model
        bundle = agent_bundle(cfg) if bundle is None else bundle
        self.manifest = bundle.manifest
        self.model = OrtModel(bundle, device=m.device, threads=m.threads)
        identity = {"device": self.model.device, "policy": m.policy, "model": self.model.bundle_sha256}
        loaded = {"bundle": bundle.sha256[:12], "device": self.model.device, "policy": m.policy}
        log.info("model loaded", extra={"fields": loaded})
        if self.manifest.reference.drift_limits is None:
            log.warning(
                "the bundle has no calibrated drift limits (exported before them, or from one source "
                "device): the monitor judges its drift by sampling limits alone; re-export it with "
                "`edge-ttt export` for them",
                extra={"fields": {"bundle": bundle.sha256[:12]}},
            )
        self.inbox: Inbox[Message] = Inbox(cfg.queue.max_frames, cfg.queue.when_full, cfg.queue.max_bytes)
        self.counters = AgentCounters()
        self.quiet = QuietWatch(cfg.status.quiet_warning_s)
        self.stop_event = threading.Event()
        self._warn = RateLimitedLog(log)
        self._warn_received = RateLimitedLog(log)  # paho's thread has its own
        acks = cfg.drift_ack_subscription()
        self.transport = MqttTransport(cfg.mqtt, cfg.agent.id, cfg.status_topic(), self._received, (acks,))
        self.spool = Spool(cfg.drift.spool_dir, cfg.drift.spool_max_bytes)
        d = cfg.drift
        self.shipper = Shipper(
            self.transport.client,
            self.spool,
            cfg.drift_topic,
            d.chunk_bytes,
            d.max_inflight,
            d.ack_timeout_s,
            acks,
            max_packet=lambda: self.transport.max_packet,
            guard=self.transport.guard,
        )
        sha = self.model.bundle_sha256
        self.publisher = PredictionPublisher(
            cfg.predictions, cfg.prediction_topic, self.transport.publish, self.manifest.model.classes, sha
        )
        self.writer = CheckpointWriter(cfg.state.dir, cfg.state.max_files)
        self.spooler = SummarySpooler(self.shipper, max(10_000, 2 * cfg.state.max_streams))
        self.pipelines = Pipelines(
            self.model,
            self.manifest,
            _settings(cfg),
            self.publisher.publish,
            self.spooler.put,
            self.writer,
        )
        sources = StatusSources(
            identity,
            self.counters,
            self.pipelines,
            self.publisher,
            self.inbox,
            self.spool,
            self.spooler,
            self.transport.link,
            self.transport.guard,
        )
        self.reporter = StatusReporter(
            cfg.agent.id, cfg.status_topic(), status_file(cfg.state.dir), self.transport.publish, sources
        )

    def status(self) -> dict[str, Any]:
        return self.reporter.status()

    def _received(self, topic: str, payload: bytes) -> None:  # on paho's thread
        """Queue the message; one over `max_frame_bytes` is refused here, before it takes memory."""
        if len(payload) > self.cfg.queue.max_frame_bytes:
            self.counters.rejected["too_large"] += 1  # only this thread counts this reason
            fields = {"topic": topic[:200], "bytes": len(payload), "limit": self.cfg.queue.max_frame_bytes}
            self._warn_received.warning("too_large", "frame dropped before queueing", fields=fields)
            return
        dropped = self.inbox.counters.dropped
        self.inbox.put(Message(topic, payload, time.monotonic()), len(payload) + len(topic))
        if self.inbox.counters.dropped > dropped:  # paho acknowledged them: the broker will not resend
            q = self.cfg.queue
            fields = {
                "dropped": self.inbox.counters.dropped,
                "max_frames": q.max_frames,
                "when_full": q.when_full,
            }
            self._warn_received.warning("queue_full", QUEUE_FULL, fields=fields)

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
                if now >= next_status or self.transport.link.changed.is_set():  # a change is said at once
                    self.transport.link.changed.clear()
                    self.reporter.publish()
                    next_status = now + self.cfg.status.interval_s
                if now >= next_checkpoint:
                    self.pipelines.start_checkpoints()
                    next_checkpoint = now + self.cfg.state.checkpoint_interval_s
                self.pipelines.checkpoint_step()
                if now >= next_summaries:  # intervals are minutes: a look per second is plenty
                    self.pipelines.close_summaries(final=False)
                    next_summaries = now + SUMMARY_CHECK_S
                    self._warn_if_quiet(now)
        finally:
            stopping = time.monotonic()
            self.write_last()
            self.ship_before_stop(self.cfg.drift.stop_timeout_s - (time.monotonic() - stopping))
            self.reporter.publish("offline")
            self.transport.stop(counters=self.status()["counters"])

    def _warn_if_quiet(self, now: float) -> None:
        c = self.counters
        quiet_s = self.quiet.update(
            self.transport.subscribed.is_set(), c.frames + c.unknown_topic + sum(c.rejected.values()), now
        )
        if quiet_s is not None:
            fields = {"subscription": self.cfg.mqtt.subscription(), "seconds": round(quiet_s)}
            log.warning(
                "no sensor message since subscribing: check that the devices publish to this filter "
                "(mqtt.prefix, mqtt.sensor_topic) and that the broker lets this client read it (an ACL "
                "that does not is silent: mosquitto accepts the subscription and drops the messages)",
                extra={"fields": fields},
            )

    def ship_before_stop(self, budget_s: float) -> None:
        """Ship what the fleet acknowledges within what is left of `drift.stop_timeout_s` (the
        whole stop's budget, writing the last states and summaries included); the rest stays
        spooled for the next start (which sends it again: the collector stores each summary once),
        and so do the summaries still `batched` (the next start unpacks them)."""
        deadline = time.monotonic() + budget_s
        self.shipper.stop()
        batched = self.shipper.unpack(deadline)  # the stop's batch, as files that can be shipped
        left = self.shipper.drain(max(0.0, deadline - time.monotonic()))
        fields = {"spooled": left, "batched": batched, "shipped": self.spool.counters.shipped}
        (log.warning if left or batched else log.info)(
            "drift summaries left in the spool", extra={"fields": fields}
        )

    def handle(self, message: Message) -> None:
        """Route a message to its stream's pipeline; a frame that cannot go there is counted, and
        so is one that its stream fails on, or any other unexpected fault (logged with the
        traceback at most once per 10 s): one message must never end the agent (retained, it
        would be a crash loop)."""
        try:
            self._route(message)
        except Exception as exc:
            self.counters.stream_errors += 1
            fields = {"topic": message.topic[:200], "error": repr(exc)[:300]}
            self._warn.warning("stream_error", "frame lost: its stream failed", fields=fields, exc_info=exc)

    def _route(self, message: Message) -> None:
        parsed = self.cfg.mqtt.parse_topic(message.topic)
        if parsed is None:
            self.counters.unknown_topic += 1
            return
        device, stream = parsed
        try:
            if (device, stream) not in self.pipelines:  # once per stream, not per frame
                self._check_device(device)
            frame = decode(message.payload, self.cfg.queue.max_frame_bytes)
            check_frame(self.manifest, frame, stream)
        except FrameError as exc:
            self.counters.rejected[exc.reason] += 1
            fields = {"device": device[:200], "stream": stream[:200], "error": str(exc)[:500]}
            self._warn.warning(exc.reason, "frame dropped", fields=fields)
            return
        self.counters.frames += 1
        self.pipelines.get_or_make(device, stream).feed(frame, message.arrived)

    def _check_device(self, device: str) -> None:
        """A device id whose drift or prediction topic MQTT cannot carry (over 65535 bytes) is
        refused here: paho would raise on publishing, and its summaries could never leave."""
        longest = max(
            len(self.cfg.drift_topic(device).encode()), len(self.cfg.prediction_topic(device).encode())
        )
        if longest > MAX_TOPIC_BYTES:
            raise FrameError(
                "device",
                f"device id of {len(device.encode())} bytes makes a topic of {longest} bytes, "
                f"MQTT takes at most {MAX_TOPIC_BYTES}",
                "use a shorter device id",
            )

    def write_last(self) -> None:
        """Every stream's last drift summary and adapted state, for at most `state.stop_timeout_s`,
        so that a stop is prompt whatever the number of streams. Summaries first, the queued ones
        in one batch file (`summaries_lost` only when the disk refuses it); a state left keeps
        its previous checkpoint."""
        budget, start = self.cfg.state.stop_timeout_s, time.monotonic()
        remaining = lambda: max(0.0, start + budget - time.monotonic())  # noqa: E731
        self.pipelines.close_summaries(final=True)  # in memory; the spooler writes them
        summaries_lost = self.spooler.close(remaining())
        written_before = self.writer.written  # the stop's own, not the run's total
        states_left = self.pipelines.checkpoint_all(remaining())
        states_left += self.writer.close(remaining())
        fields = {
            "states_written": self.writer.written - written_before,
            "states_left": states_left,
            "summaries_lost": summaries_lost,
            # received and acknowledged to the broker, never handled: the broker will not resend them
            "frames_unprocessed": len(self.inbox),
            "seconds": round(time.monotonic() - start, 3),
        }
        if states_left or summaries_lost or fields["frames_unprocessed"]:
            log.warning(
                "stop: states left at their previous checkpoint, or summaries or queued frames lost",
                extra={"fields": fields},
            )
        else:
            log.info("stop: states and summaries written", extra={"fields": fields})
