"""The agent's status: counters of every stage in one document, published retained on the status
topic (for the fleet) and written to `<state.dir>/status.json` (for a local health probe, which
must work without a broker)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from edge_ttt.agent.pipeline import AgentCounters, Pipelines
from edge_ttt.agent.publisher import PredictionPublisher
from edge_ttt.atomic import atomic_write
from edge_ttt.config_file import Section
from edge_ttt.drift.spool import Spool
from edge_ttt.stream.inbox import Inbox
from edge_ttt.stream.topics import AgentTopic


class StatusSection(Section):
    topic: AgentTopic = Field("{prefix}/agents/{agent}/status", validate_default=True)
    interval_s: float = Field(10.0, gt=0)


def status_file(state_dir: Path) -> Path:
    return Path(state_dir) / "status.json"


def read_health(path: Path, max_age_s: float) -> str | None:
    """None when the status file says online and is fresh, else what is wrong (for probes)."""
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


@dataclass(frozen=True)
class StatusSources:
    """What the status is read from: the agent's identity and every stage's counters."""

    identity: dict[str, str]  # device, policy, model
    counters: AgentCounters
    pipelines: Pipelines
    publisher: PredictionPublisher
    inbox: Inbox
    spool: Spool


@dataclass(frozen=True)
class StatusReporter:
    """Reads the counters of every stage; publishes and writes them, never changes them."""

    agent_id: str
    topic: str
    path: Path  # the status file
    publish_to: Callable[..., None]  # (topic, payload, qos=, retain=): the transport's publish
    sources: StatusSources

    def status(self) -> dict[str, Any]:
        src = self.sources
        engines: Counter = Counter()
        order: Counter = Counter()
        gaps = 0
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
                "decode_errors": dict(c.rejected),
                "unknown_topic": c.unknown_topic,
                "states_restored": src.pipelines.states_restored,
                "streams_evicted": src.pipelines.evicted,
                "checkpoints_pending": src.pipelines.writer.pending(),
                "checkpoints_failed": src.pipelines.writer.failed,
                "queue_dropped": src.inbox.counters.dropped,
                "queue_depth": len(src.inbox),
                "queue_bytes": src.inbox.bytes,
                "drift_spooled": len(src.spool.pending()),
                "drift_dropped": src.spool.counters.dropped,
                "gaps": gaps,
                **{f"frames_{k}": v for k, v in order.items() if k != "delivered"},
                **engines,
            },
            "latency_ms": src.publisher.percentiles(),
            "streams": len(src.pipelines),
            "device": src.identity["device"],
            "policy": src.identity["policy"],
            "model": src.identity["model"],
        }

    def publish(self, state: str = "online") -> None:
        """To the retained status topic (online only: the transport says offline itself), and to
        the status file."""
        doc = {"agent": self.agent_id, "state": state, "time_unix": time.time(), **self.status()}
        payload = json.dumps(doc).encode()
        if state == "online":
            self.publish_to(self.topic, payload, qos=1, retain=True)
        atomic_write(self.path, lambda f: f.write(payload))
