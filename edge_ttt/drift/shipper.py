"""Store and forward: spool files go to `<prefix>/<device>/drift` at QoS 1, and leave the spool
only once the broker has acknowledged every chunk (paho's `MQTTMessageInfo.is_published()`,
set by its PUBACK handling for that message id).

paho keeps unacknowledged QoS 1 messages in memory and sends them again after a reconnect; the
spool covers what memory cannot: a restart of the agent ships whatever is still on disk. Either
way a summary can arrive twice, so the receiver de-duplicates by summary id.

Message = one header line of JSON (`MESSAGE_FORMAT`, `v`, summary `id`, file `sha256`, chunk
`index` and `count`, total `size` in bytes), a newline, then the chunk's bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from paho.mqtt.enums import MQTTErrorCode

from edge_ttt.drift.schema import SchemaError, read_bytes, to_parquet
from edge_ttt.drift.spool import Spool, summary_id_of
from edge_ttt.drift.summary import DriftSummary

log = logging.getLogger(__name__)

MESSAGE_FORMAT = "edge-ttt-drift"
MESSAGE_VERSION = 1


def drift_topic(prefix: str, device: str) -> str:
    return f"{prefix}/{device}/drift"


def device_of(data: bytes) -> str:
    """The device id inside one spooled summary file."""
    return str(read_bytes(data).column("device")[0].as_py())


def encode_chunks(summary_id: str, data: bytes, chunk_bytes: int) -> list[bytes]:
    """The messages that carry one file, each with at most `chunk_bytes` of it.

    >>> [m.split(b"\\n", 1)[1] for m in encode_chunks("a1", b"abcde", 2)]
    [b'ab', b'cd', b'e']
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    digest = hashlib.sha256(data).hexdigest()
    count = max(1, -(-len(data) // chunk_bytes))
    messages = []
    for index in range(count):
        header = {
            "format": MESSAGE_FORMAT,
            "v": MESSAGE_VERSION,
            "id": summary_id,
            "sha256": digest,
            "index": index,
            "count": count,
            "size": len(data),
        }
        chunk = data[index * chunk_bytes : (index + 1) * chunk_bytes]
        messages.append(json.dumps(header, separators=(",", ":")).encode() + b"\n" + chunk)
    return messages


class Shipper:
    """Ships a spool through a paho client (connected and looping elsewhere, e.g. the agent's
    transport). At most `max_inflight` files are unacknowledged at a time, oldest first; nothing
    new is handed to paho while it is disconnected, so an outage grows the spool, not memory."""

    def __init__(
        self,
        client: Any,
        spool: Spool,
        topic: str | Callable[[str], str],
        chunk_bytes: int = 64_000,
        max_inflight: int = 4,
    ) -> None:
        """`topic`: one topic, or a function of the summary's device id (an agent serving several
        devices ships each device's summaries to `<prefix>/<device>/drift` from one spool)."""
        self.client = client
        self.spool = spool
        self.topic = topic
        self.chunk_bytes = chunk_bytes
        self.max_inflight = max_inflight
        self.messages_sent = 0
        self.unreadable = 0
        self._inflight: dict[Path, list[Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, summary: DriftSummary) -> Path:
        """Into the spool (atomically); shipped by a later `pump`."""
        return self.spool.put(summary.summary_id, to_parquet([summary]))

    def pump(self) -> None:
        """Retire acknowledged files, then hand new ones to paho while connected."""
        with self._lock:
            for path, infos in list(self._inflight.items()):
                if all(info.is_published() for info in infos):
                    self.spool.remove(path)
                    del self._inflight[path]
            if not self.client.is_connected():
                return
            for path in self.spool.pending():
                if len(self._inflight) >= self.max_inflight:
                    break
                if path in self._inflight:
                    continue
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # dropped by the bound meanwhile
                    continue
                try:
                    topic = self.topic if isinstance(self.topic, str) else self.topic(device_of(data))
                except (pa.ArrowException, SchemaError, KeyError, IndexError) as exc:
                    # Not a summary we can read (written by something else): shipping it would only
                    # fail at the receiver, keeping it would block the spool.
                    log.warning(
                        "unreadable spool file removed",
                        extra={"fields": {"file": path.name, "error": str(exc)}},
                    )
                    path.unlink(missing_ok=True)
                    self.unreadable += 1
                    continue
                messages = encode_chunks(summary_id_of(path), data, self.chunk_bytes)
                infos = [self.client.publish(topic, m, qos=1) for m in messages]
                self.messages_sent += len(messages)
                # A refused publish (the connection dropped meanwhile) cannot be tracked: the file
                # stays out of flight and goes again later; the receiver drops the duplicate.
                if all(info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS for info in infos):
                    self._inflight[path] = infos

    def pending(self) -> int:
        """Files not yet acknowledged (in the spool)."""
        return len(self.spool.pending())

    def start(self, interval_s: float = 0.2) -> None:
        """Pump on a thread of its own (the agent may call `pump` from its loop instead)."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.pump()
                except OSError as exc:  # a full or failing disk must not end shipping
                    log.warning("drift shipping failed", extra={"fields": {"error": str(exc)}})

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="drift-shipper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
