"""Store and forward with end-to-end acknowledgement: spool files go to `<prefix>/<device>/drift`
at QoS 1 and leave the spool only when the fleet collector says it has stored them, on the
acknowledgement topic `<prefix>/<device>/drift/ack` (acks.py). A broker's PUBACK only means
the broker took a message; a broker that crashes before its next autosave loses it, so it is not
enough to delete on. What stays unacknowledged for `ack_timeout_s`, or is in flight across a
reconnect, is sent again; a PUBACK with a failure reason code (e.g. 0x87 not authorized) is a
refusal: the file stays, the refusal is counted and logged (rate-limited), and it goes again after
`ack_timeout_s` or the next reconnect. Re-sending means a summary can arrive twice: the collector
de-duplicates by summary id and acknowledges the copy again.

Message = one header line of JSON (`MESSAGE_FORMAT`, `v`, summary `id`, file `sha256`, chunk
`index` and `count`, total `size` in bytes), a newline, then the chunk's bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from paho.mqtt.enums import MQTTErrorCode

from edge_ttt.drift.acks import ack_topic, parse_ack
from edge_ttt.drift.schema import SchemaError, encode_table, read_bytes, to_parquet
from edge_ttt.drift.spool import Spool, summary_id_of
from edge_ttt.drift.summary import DriftSummary
from edge_ttt.logs import RateLimitedLog
from edge_ttt.mqtt_callbacks import CallbackGuard

log = logging.getLogger(__name__)

MESSAGE_FORMAT = "edge-ttt-drift"
MESSAGE_VERSION = 1
# Bytes of a drift packet besides its topic and chunk: the header line (about 170) and MQTT's fixed
# header, topic length, packet id and properties, with room to spare.
PACKET_OVERHEAD = 512
MIN_CHUNK_BYTES = 64  # a broker that takes less than this plus the overhead takes no summary at all


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


@dataclass
class _Flight:
    """A file sent and not yet acknowledged by the collector."""

    summary_id: str
    sent: float  # time.monotonic() of the last send
    mids: set[int] = field(default_factory=set)
    resend: bool = False  # a reconnect came since the send


class Shipper:
    """Ships a spool through a paho client (connected and looping elsewhere, e.g. the agent's
    transport, which subscribes to `ack_filter`). At most `max_inflight` files await their
    acknowledgement at a time, oldest first; nothing new is handed to paho while it is
    disconnected, so an outage grows the spool, not memory. All bookkeeping happens in `pump`;
    paho's callbacks only queue what they saw."""

    def __init__(
        self,
        client: Any,
        spool: Spool,
        topic: str | Callable[[str], str],
        chunk_bytes: int = 64_000,
        max_inflight: int = 32,
        ack_timeout_s: float = 60.0,
        ack_filter: str | None = None,
        max_packet: Callable[[], int | None] | None = None,
        guard: CallbackGuard | None = None,
    ) -> None:
        """`topic`: one topic, or a function of the summary's device id (an agent serving several
        devices ships each device's summaries to `<prefix>/<device>/drift` from one spool).
        `ack_filter`: the subscription acknowledgements arrive on (default: `ack_topic(topic)`).
        `max_packet`: the largest packet the broker takes now (None: no limit known); chunks are
        cut to fit it, whatever `chunk_bytes` says. `guard`: wraps the callbacks registered on
        `client` (the transport's, to count their failures in one place)."""
        self.client = client
        self.spool = spool
        self.topic = topic
        self.chunk_bytes = chunk_bytes
        self.max_packet = max_packet
        self.max_inflight = max_inflight
        self.ack_timeout_s = ack_timeout_s
        self.messages_sent = 0
        self.unreadable = self.unsendable = 0  # spool files set aside, never shipped
        self._inflight: dict[Path, _Flight] = {}
        self._refused_until: dict[Path, float] = {}
        self._acks: deque[str] = deque()  # ids acknowledged, from paho's thread
        self._refusals: deque[tuple[int, str]] = deque()  # (mid, reason) of failed PUBACKs
        self._connected = False
        self._drops_reported = 0
        self._warn = RateLimitedLog(log, 60.0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        previous = client.on_publish
        guard = guard or CallbackGuard()

        def on_publish(*args: Any) -> None:  # paho's thread: only note what came back
            self._published(*args)
            if previous is not None:
                previous(*args)

        client.on_publish = guard("on_publish", on_publish)
        ack_filter = ack_filter or (ack_topic(topic) if isinstance(topic, str) else None)
        if ack_filter is not None:
            client.message_callback_add(
                ack_filter, guard("on_ack", lambda _c, _u, msg: self._acks.extend(parse_ack(msg.payload)))
            )

    def _published(self, _client, _userdata, mid: int, reason_code, _properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            self._refusals.append((mid, str(reason_code)))

    def submit(self, summary: DriftSummary) -> Path:
        """Into the spool (atomically), carrying the spool drops since the previous summary."""
        return self._carrying(summary, lambda: self.spool.put(summary.summary_id, to_parquet([summary])))

    def submit_batch(self, summaries: list[DriftSummary]) -> Path:
        """Many summaries into one batch file, a few milliseconds per hundred instead of each:
        a stop's last intervals. `unpack` turns it into the spool's one-summary files."""
        return self._carrying(summaries[0], lambda: self.spool.put_batch(to_parquet(summaries)))

    def count_dropped(self, summaries: int) -> None:
        """Summaries given up before they reached the spool (a disk refusing writes for long)."""
        self.spool.count_dropped(summaries)

    def _carrying(self, summary: DriftSummary, write: Callable[[], Path]) -> Path:
        """`write()` with `summary` carrying the spool drops not reported yet; they count as
        reported only once it is written (a write the disk refuses is tried again)."""
        dropped = self.spool.counters.dropped
        summary.spool_dropped = dropped - self._drops_reported
        path = write()
        self._drops_reported = dropped
        return path

    def unpack(self, deadline: float = math.inf, stop: threading.Event | None = None) -> int:
        """The spool's batch files as one-summary files, oldest first, until `deadline`
        (monotonic) or `stop` is set; what is left is written back as a smaller batch for the next
        call. Summaries already in the spool are skipped (an unpack a crash interrupted). How many
        stay batched."""
        left = 0
        for path in self.spool.batches():
            try:
                table = read_bytes(path.read_bytes())
            except (OSError, pa.ArrowException, SchemaError) as exc:
                path.rename(path.with_suffix(".unreadable"))  # kept for a person, never retried
                log.error(
                    "drift batch file unreadable, set aside",
                    extra={"fields": {"file": path.name, "error": str(exc)}},
                )
                continue
            ids = table.column("summary_id").to_pylist()
            todo = [i for i, summary_id in enumerate(ids) if not self.spool.has(summary_id)]
            done = 0
            while done < len(todo) and time.monotonic() < deadline and not (stop and stop.is_set()):
                i = todo[done]
                self.spool.put(ids[i], encode_table(table.slice(i, 1)))
                done += 1
            rest = todo[done:]
            if len(rest) < len(ids):
                self.spool.rewrite_batch(path, encode_table(table.take(rest)) if rest else None)
            left += len(rest)
        return left

    def pump(self) -> None:
        """Retire acknowledged files and note refusals; then, while connected, send again what
        timed out or crossed a reconnect, and hand new files to paho."""
        with self._lock:
            now = time.monotonic()
            connected = self.client.is_connected()
            if connected and not self._connected:  # (re)connected: what was in flight goes again
                for flight in self._inflight.values():
                    flight.resend = True
                self._refused_until.clear()
            self._connected = connected
            while self._acks:
                self._acknowledged(self._acks.popleft())
            while self._refusals:
                self._refused(*self._refusals.popleft(), now)
            if not connected:
                return
            for path, flight in list(self._inflight.items()):
                if flight.resend or now - flight.sent >= self.ack_timeout_s:
                    self._resend(path, flight, now)
            for path in self.spool.pending():
                if len(self._inflight) >= self.max_inflight:
                    break
                if path not in self._inflight and self._refused_until.get(path, -math.inf) <= now:
                    self._send(path, now)

    def _acknowledged(self, summary_id: str) -> None:
        for path, flight in list(self._inflight.items()):
            if flight.summary_id == summary_id:
                del self._inflight[path]
                self._refused_until.pop(path, None)
        self.spool.acknowledged(summary_id)

    def _refused(self, mid: int, reason: str, now: float) -> None:
        for path, flight in list(self._inflight.items()):
            if mid in flight.mids:
                del self._inflight[path]
                self.spool.sending(path, False)
                self._refused_until[path] = now + self.ack_timeout_s
                self.spool.counters.refused += 1
                fields = {"file": path.name, "reason": reason, "refused": self.spool.counters.refused}
                self._warn.warning("refused", "broker refused a drift summary; kept", fields=fields)

    def _resend(self, path: Path, flight: _Flight, now: float) -> None:
        if not path.exists():  # deleted by the spool's bound while in flight
            if now - flight.sent >= self.ack_timeout_s:  # and never acknowledged: a loss
                del self._inflight[path]
                self.spool.lost(flight.summary_id)
            flight.resend = False
            return
        del self._inflight[path]
        self.spool.counters.resent += 1
        self._send(path, now)

    def _send(self, path: Path, now: float) -> None:
        """Publish a file; one paho refuses for good (a ValueError: e.g. its device makes a topic
        over MQTT's limit) is set aside as `.unsendable`, not to block the others at every start."""
        try:
            self._publish(path, now)
        except (ValueError, TypeError) as exc:
            self._inflight.pop(path, None)
            self.spool.set_aside(path, ".unsendable")
            self.unsendable += 1
            fields = {"file": path.name[:200], "error": str(exc)[:300], "unsendable": self.unsendable}
            log.error("drift summary cannot be published, set aside", extra={"fields": fields})

    def _publish(self, path: Path, now: float) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # dropped by the bound meanwhile
            return
        try:
            topic = self.topic if isinstance(self.topic, str) else self.topic(device_of(data))
        except (pa.ArrowException, SchemaError, KeyError, IndexError) as exc:
            # Not a summary we can read (written by something else): shipping it would only
            # fail at the receiver, keeping it would block the spool.
            fields = {"file": path.name, "error": str(exc)}
            log.warning("unreadable spool file set aside", extra={"fields": fields})
            self.spool.set_aside(path, ".unreadable")
            self.unreadable += 1
            return
        flight = _Flight(summary_id_of(path), now)
        self.spool.sending(path, True)
        self._inflight[path] = flight  # before publishing: a refusal may come back at once
        for message in encode_chunks(flight.summary_id, data, self._chunk_bytes(topic)):
            info = self.client.publish(topic, message, qos=1)
            self.messages_sent += 1
            flight.mids.add(info.mid)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # The connection dropped during the call: not in flight, the file goes again on a
                # later pump (paho may also deliver its queued copy: a duplicate, dropped by the collector).
                del self._inflight[path]
                self.spool.sending(path, False)
                return

    def _chunk_bytes(self, topic: str) -> int:
        """`chunk_bytes`, or less where the broker takes only smaller packets: a packet holds the
        topic, the chunk's header line and MQTT's own fields besides the chunk."""
        limit = None if self.max_packet is None else self.max_packet()
        if limit is None:
            return self.chunk_bytes
        return max(MIN_CHUNK_BYTES, min(self.chunk_bytes, limit - len(topic.encode()) - PACKET_OVERHEAD))

    def pending(self) -> int:
        """Files not yet acknowledged (in the spool)."""
        return len(self.spool.pending())

    def drain(self, timeout_s: float, interval_s: float = 0.05) -> int:
        """Pump until the spool is empty or `timeout_s` passed (a clean stop); files left."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.pump()
            left = self.pending()
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(interval_s)

    def start(self, interval_s: float = 0.2) -> None:
        """Unpack what a stop left batched, then pump, on a thread of its own (the agent may
        call `pump` from its loop instead)."""

        def loop() -> None:
            try:
                self.unpack(stop=self._stop)  # what a stop left batched
            except Exception as exc:  # shipping what is spooled goes on
                log.warning("drift batch not unpacked", extra={"fields": {"error": repr(exc)[:300]}})
            while not self._stop.wait(interval_s):
                try:
                    self.pump()
                except Exception as exc:  # a full or failing disk, or anything else, must not end shipping
                    self._warn.warning("pump", "drift shipping failed", fields={"error": repr(exc)[:300]})

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="drift-shipper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
