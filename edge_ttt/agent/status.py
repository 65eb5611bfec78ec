"""The agent's status: counters of every stage in one document, published retained on the status
topic (for the fleet) and written to `<state.dir>/status.json` (for a local health probe, which
must work without a broker). Its `state` is the MQTT connection's (`online` only while connected,
`connecting` or `disconnected` with the reason and since when), or `offline` after a clean stop."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from edge_ttt.adapt.counters import Counters
from edge_ttt.agent.pipeline import AgentCounters, Pipelines
from edge_ttt.agent.publisher import PredictionPublisher
from edge_ttt.agent.spooler import SummarySpooler
from edge_ttt.atomic import atomic_write
from edge_ttt.config_file import Section
from edge_ttt.drift.spool import Spool
from edge_ttt.logs import RateLimitedLog
from edge_ttt.mqtt_callbacks import CallbackGuard
from edge_ttt.stream.connection import CONNECTING, DISCONNECTED, ONLINE, ConnectionState
from edge_ttt.stream.inbox import Inbox
from edge_ttt.stream.sequencer import SequencerCounters
from edge_ttt.stream.topics import AgentTopic

log = logging.getLogger(__package__)


class StatusSection(Section):
    topic: AgentTopic = Field("{prefix}/agents/{agent}/status", validate_default=True)
    interval_s: float = Field(10.0, gt=0)
    max_disconnected_s: float = Field(
        10.0, gt=0, description="health fails once the agent is not connected for longer than this"
    )
    quiet_warning_s: float = Field(
        300.0, ge=0, description="warn once when subscribed this long without any sensor message (0: never)"
    )


def status_file(state_dir: Path) -> Path:
    return Path(state_dir) / "status.json"


CLOCK_SLACK_S = 60.0  # a status written this far "in the future" is still the agent's (clocks differ)


def read_health(path: Path, max_age_s: float, max_disconnected_s: float = 10.0) -> str | None:
    """None when the status file is fresh and says online, or not connected for at most
    `max_disconnected_s` (a broker restart is not an outage); else what is wrong, in one line."""
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"a JSON {type(doc).__name__}, not an object")
    except (OSError, ValueError) as exc:
        return f"no readable status at {path}: {exc}"
    state, link = doc.get("state"), doc.get("connection")
    if state == "offline":  # a clean stop wrote it
        return "agent is offline"
    if state not in (ONLINE, CONNECTING, DISCONNECTED):
        return f"no readable status at {path}: state {state!r} is not one an agent writes"
    try:
        now = time.time()
        age = now - float(doc["time_unix"])
        down_s = 0.0 if state == ONLINE else now - float(link["since_unix"])
    except (ValueError, TypeError, KeyError) as exc:
        return f"no readable status at {path}: no time_unix and connection.since_unix ({exc!r})"
    # a time that is not finite, or minutes in the future, is no agent's clock: not "fresh"
    if not (math.isfinite(age) and math.isfinite(down_s) and min(age, down_s) > -CLOCK_SLACK_S):
        when = doc["time_unix"]
        return f"no readable status at {path}: its times are not an agent's clock (time_unix {when!r})"
    if age > max_age_s:
        return (
            f"status is {age:.0f} s old (more than {max_age_s:.0f} s): the agent is stuck or gone,"
            f" or cannot write {path} (is its disk full?)"
        )
    if isinstance(link, dict) and link.get("flapping"):
        return f"agent's connections keep ending within seconds: {link['flapping']}"
    if state != ONLINE and down_s > max_disconnected_s:
        reason = link.get("reason") or "no attempt has failed yet"
        return f"agent is {state} for {down_s:.0f} s (more than {max_disconnected_s:g} s): {reason}"
    return None


@dataclass(frozen=True)
class StatusSources:
    """What the status is read from: the agent's identity and every stage's counters."""

    identity: dict[str, str]  # device, policy, model
    counters: AgentCounters
    pipelines: Pipelines
    publisher: PredictionPublisher
    inbox: Inbox
    spool: Spool
    spooler: SummarySpooler
    link: ConnectionState
    callbacks: CallbackGuard  # MQTT callbacks that failed (the network loop goes on)


@dataclass
class StatusReporter:
    """Reads the counters of every stage; publishes and writes them, never changes them.

    A status file the disk refuses is counted (`status_file_failures`) and logged, rate-limited:
    the agent goes on predicting, the status topic still says so, and the local health probe
    sees the file grow old."""

    agent_id: str
    topic: str
    path: Path  # the status file
    publish_to: Callable[..., None]  # (topic, payload, qos=, retain=): the transport's publish
    sources: StatusSources
    file_failures: int = 0
    _warn: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, 60.0), repr=False)

    def status(self) -> dict[str, Any]:
        src = self.sources
        # every key from the start (zeros before the first stream); frame order and gaps also
        # count evicted streams, engine counters those live (a restored stream brings its own back)
        engines: Counter = Counter({k: 0 for k in Counters().as_dict() if k != "windows"})
        order: Counter = Counter(dict.fromkeys(vars(SequencerCounters()), 0))
        order.update(src.pipelines.retired_order)
        gaps = src.pipelines.retired_gaps
        for p in src.pipelines.values():
            engines.update({k: v for k, v in p.engine.counters.as_dict().items() if k != "windows"})
            order.update(vars(p.sequencer.counters))
            gaps += p.windower.gaps
        c = src.counters
        return {
            "counters": {
                "frames": c.frames,
                "windows": src.publisher.windows,
                "predictions_published": src.publisher.published,
                "publishes_refused": src.link.publishes_refused,
                "decode_errors": dict(c.rejected),
                "unknown_topic": c.unknown_topic,
                "stream_errors": c.stream_errors,
                "callback_errors": src.callbacks.errors,
                "states_restored": src.pipelines.states_restored,
                "streams_evicted": src.pipelines.evicted,
                "checkpoints_pending": src.pipelines.writer.pending(),
                "checkpoints_failed": src.pipelines.writer.failed,
                "checkpoints_dropped": src.pipelines.writer.dropped,
                "checkpoints_pruned": src.pipelines.writer.pruned,
                "queue_dropped": src.inbox.counters.dropped,
                "queue_depth": len(src.inbox),
                "queue_bytes": src.inbox.bytes,
                "drift_spooled": len(src.spool.pending()),
                "drift_unspooled": src.spooler.pending(),
                "drift_spool_failures": src.spooler.failed,
                "drift_dropped": src.spool.counters.dropped,
                "drift_shipped": src.spool.counters.shipped,
                "drift_refused": src.spool.counters.refused,
                "drift_resent": src.spool.counters.resent,
                "gaps": gaps,
                "status_file_failures": self.file_failures,
                **{f"frames_{k}": v for k, v in order.items() if k != "delivered"},
                **engines,
            },
            "latency_ms": src.publisher.percentiles(),
            "streams": len(src.pipelines),
            "device": src.identity["device"],
            "policy": src.identity["policy"],
            "model": src.identity["model"],
        }

    def publish(self, state: str | None = None) -> None:
        """To the status file, and to the retained status topic while online (paho would queue the
        others and send them stale after a reconnect; the Last Will and the transport's clean stop
        say offline there). `state`: the connection's unless given (`offline` at a clean stop)."""
        link = self.sources.link.snapshot()
        doc = {
            "agent": self.agent_id,
            "state": state or link.state,
            "time_unix": time.time(),
            "connection": {
                "broker": self.sources.link.broker,
                "state": link.state,
                **link.as_dict(),
                "flapping": self.sources.link.flapping(),
            },
            **self.status(),
        }
        payload = json.dumps(doc).encode()
        if doc["state"] == ONLINE:
            self.publish_to(self.topic, payload, qos=1, retain=True)
        try:
            atomic_write(self.path, lambda f: f.write(payload))
        except OSError as exc:
            self.file_failures += 1
            fields = {"file": str(self.path), "error": str(exc), "failures": self.file_failures}
            self._warn.warning("status_file", "status file not written", fields=fields)
