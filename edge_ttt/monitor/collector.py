"""The fleet collector: drift messages from MQTT in, verified summaries out into the dataset.

One paho client with a persistent session (stable client id; v5 clean_start off with a session
expiry, or v3.1.1 clean_session off) subscribes at QoS 1 in `on_connect`, so every reconnect
subscribes again and messages queued while the collector was away arrive. Payloads go to a
`Receiver` (chunks, SHA-256, de-duplication), whose `seen` set starts with the ids already in the
dataset. New summaries are buffered and written as one file per batch: after `flush_summaries`
summaries or `flush_s` seconds, or when `MAX_UNACKED` messages wait for their acknowledgement.
Chunks of summaries not yet complete are acknowledged then too: the broker sends nothing more
until some are, so holding them stalled the collector for good on a summary of more chunks than
that (or on the first chunks of that many devices' summaries); a crash before their summary is
written costs its agent a re-send after `drift.ack_timeout_s`, never the summary.

Nothing is lost in a crash: messages are acknowledged by hand (paho `manual_ack`), a summary's
messages only once the file holding it is written. A collector killed before writing leaves
them unacknowledged, and the broker delivers them again to its persistent session. Messages that
carry nothing to keep (duplicates, malformed, corrupt) are acknowledged at once.

The agents are told too: once a batch is written, its summary ids go (QoS 1) to each device's
acknowledgement topic (`<drift topic>/ack`), and only then does an agent delete its spooled copy.
A duplicate of a summary already written is acknowledged again at once (its first
acknowledgement may have been lost); one still waiting in the batch is acknowledged with it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import asdict

import paho.mqtt.client as paho
import pyarrow as pa

from edge_ttt.drift.acks import ack_topic, encode_ack
from edge_ttt.drift.receiver import MessageError, Receiver, parse_message
from edge_ttt.drift.validation import first_line
from edge_ttt.logs import RateLimitedLog
from edge_ttt.monitor import dataset, files
from edge_ttt.monitor.config import MonitorConfig
from edge_ttt.stream.connection import ConnectionState
from edge_ttt.stream.mqtt import connect_in_background, make_client

log = logging.getLogger(__name__)

# Brokers stop sending to a client with this many QoS 1 messages unacknowledged (mosquitto's
# max_inflight_messages defaults to 20): write the batch before reaching it.
MAX_UNACKED = 16
ACK_IDS_PER_MESSAGE = 500  # about 18 kB of ids per acknowledgement
STALE_S = 600.0  # a temporary file untouched this long is no write in progress (one takes seconds)


def topic_device(topic: str) -> str:
    """The device level of a drift topic (`<prefix>/<device>/drift`, the prefix may hold levels).

    >>> topic_device("edge-ttt/watch-1/drift"), topic_device("plant/a/edge-ttt/watch-1/drift")
    ('watch-1', 'watch-1')
    """
    return topic.rsplit("/", 2)[-2]


CLOSE_WAIT_S = 5.0  # at most, for the broker to take the last acknowledgements before disconnecting


def received(table: pa.Table, now: float) -> pa.Table:
    """The summary stamped with when the collector took it (the fleet's clock, not the agent's)."""
    stamp = pa.array([round(now * 1e6)] * table.num_rows, pa.int64()).cast(dataset.RECEIVED.type)
    return table.append_column(dataset.RECEIVED, stamp)


class Collector:
    def __init__(self, cfg: MonitorConfig) -> None:
        self.cfg = cfg
        self.location = cfg.collector.dataset
        # a collector killed mid-write left its temporary file; one sharing the directory may be
        # writing one now, so with a share group only old ones go
        files.remove_temporaries(self.location, 0.0 if cfg.collector.share_group is None else STALE_S)
        self.receiver = Receiver(seen=dataset.summary_ids(self.location))
        self.subscribed = threading.Event()
        self.files_written = 0
        self.write_failures = 0
        self.refused_at_write = 0  # summaries no file would take (a row no check foresaw)
        self.handler_errors = 0  # messages whose handling raised: dropped, the network thread lives
        self._pending: list[pa.Table] = []
        self._unacked: dict[str, list[int]] = {}  # summary id -> message ids, until written
        self._to_ack: dict[str, list[int]] = {}  # summary id -> message ids, of those in `_pending`
        self._batch_ids: dict[str, str] = {}  # summary id -> drift topic, pending or being written
        self._pending_since = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._full = threading.Event()
        self._warn = RateLimitedLog(log, cfg.collector.log_every_s)
        self._rejected_reported = 0
        self.client = make_client(cfg.mqtt, cfg.collector.client_id, manual_ack=True)
        # the agent's connection reasons: refusals, TLS, a duplicate client id taking the session
        broker = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
        self.link = ConnectionState(broker, cfg.collector.client_id, "collector.client_id")
        self.client.on_connect = self._connected
        self.client.on_connect_fail = lambda *_: self.link.connect_failed(sys.exc_info()[1])
        self.client.on_disconnect = self._disconnected
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        # an acknowledgement the ACL refuses: the agents resend the summaries for ever (duplicates)
        self.client.on_publish = self.link.published
        self.client.on_message = lambda _c, _u, msg: self._on_message(msg)
        self.acks_sent = 0  # acknowledgement messages to agents
        self._closed = threading.Event()  # set once our own disconnect at the end is done
        self._told: list[paho.MQTTMessageInfo] = []  # the agents' acknowledgements of the last batch

    def _disconnected(self, _client, _userdata, flags, reason_code, _properties) -> None:
        self.link.closed(reason_code, flags.is_disconnect_packet_from_server)
        if self.link.stopping:
            self._closed.set()

    def start(self) -> None:
        connect_in_background(self.client, self.cfg.mqtt)

    def _connected(self, client: paho.Client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self.link.refused(reason_code)
            return
        client.subscribe(self.cfg.topic_filter(), qos=1)
        self.link.connected()

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        """Never raises: an exception escaping into paho stopped its network thread for good, the
        process living on, holding the dataset's lock and storing nothing."""
        try:
            mids = self.accept(msg.payload, msg.mid, msg.topic)
        except Exception as exc:  # a payload no check foresaw: dropped like a corrupt one
            self.handler_errors += 1
            fields = {"topic": msg.topic, "error": first_line(exc)}
            self._warn.warning(
                "handler", "message on %s dropped: %r", msg.topic, exc, fields=fields, exc_info=exc
            )
            mids = [msg.mid]
        for mid in mids:
            self.client.ack(mid, msg.qos)

    def accept(self, payload: bytes, mid: int = 0, topic: str | None = None) -> list[int]:
        """One message (from drift topic `topic`), on paho's thread: a completed new summary joins
        the batch; a full batch wakes the writer thread (files are never written on the network
        thread). Returns the message ids to acknowledge now (those that carry nothing to keep)."""
        with self._lock:
            duplicates = self.receiver.counters.duplicates
            table = self.receiver.accept(payload, None if topic is None else topic_device(topic))
            try:
                chunk = parse_message(payload)
                summary_id: str | None = chunk.summary_id
                last_chunk = chunk.index == chunk.count - 1
            except MessageError:
                summary_id, last_chunk = None, False
            ack_now: list[int] = []
            if table is not None:
                self._pending.append(received(table, time.time()))
                self._to_ack[str(summary_id)] = [*self._unacked.pop(str(summary_id), []), mid]
                if topic is not None:
                    self._batch_ids[str(summary_id)] = topic
            elif summary_id is not None and self.receiver.waiting(summary_id):
                self._unacked.setdefault(summary_id, []).append(mid)  # a chunk of a summary to come
            else:
                ack_now = [mid, *self._unacked.pop(str(summary_id), [])]  # duplicate, corrupt or junk
                stored = self.receiver.counters.duplicates > duplicates and summary_id not in self._batch_ids
                if stored and last_chunk and topic is not None:  # written before: tell the agent again, once
                    self._tell_agents({str(summary_id): topic})
            self._warn_rejected()
            waiting = sum(map(len, self._to_ack.values())) + sum(map(len, self._unacked.values()))
            if waiting >= MAX_UNACKED and self._unacked:  # the broker would send nothing more:
                ack_now += [m for held in self._unacked.values() for m in held]
                self._unacked.clear()
            if len(self._pending) >= self.cfg.collector.flush_summaries or waiting >= MAX_UNACKED:
                self._full.set()
            return ack_now

    def _warn_rejected(self) -> None:
        """At most one warning per `log_every_s`, with the count since the last one."""
        c = self.receiver.counters
        rejected = c.malformed + c.corrupt + c.misaddressed + c.too_large
        new = rejected - self._rejected_reported
        if new > 0 and self._warn.warning(
            "rejected",
            "rejected %d payloads, the latest %s (counters: %s)",
            new,
            self.receiver.refusal,
            asdict(c),
        ):
            self._rejected_reported = rejected

    def flush(self) -> None:
        """Write the buffered summaries as one file (per date), outside the lock so that messages
        keep arriving meanwhile; on a failing disk they go back to the buffer for the next try.
        Never raises: a batch that fails otherwise is written summary by summary (`_one_by_one`)."""
        with self._lock:
            batch, self._pending = self._pending, []
            acks, self._to_ack = self._to_ack, {}
            self._pending_since = time.monotonic()
            self._full.clear()
        if not batch:
            return
        ids = [sid for table in batch for sid in table.column("summary_id").to_pylist()]
        try:
            self.files_written += len(dataset.append(self.location, pa.concat_tables(batch)))
        except OSError as exc:  # a full or failing disk: one line, not a traceback a second
            self._keep(batch, acks, exc)
            return
        except Exception as exc:  # a row no check foresaw must not stop the writer
            ids = self._one_by_one(batch, acks, exc)
        with self._lock:
            written = {sid: self._batch_ids.pop(sid) for sid in ids if sid in self._batch_ids}
        for mid in (m for sid in ids for m in acks.get(sid, [])):  # written: now the broker may forget them
            self.client.ack(mid, 1)
        # stored: now the agents may delete their copies. After the broker's acknowledgements on
        # the one connection, so that the broker's answer to the last of these says it has those
        self._told = self._tell_agents(written)

    def _keep(self, batch: list[pa.Table], acks: dict[str, list[int]], exc: Exception) -> None:
        """Summaries the disk refused: back to the buffer, unacknowledged, for the next flush."""
        self.write_failures += 1
        fields = {"summaries": len(batch), "dataset": str(self.location), "error": str(exc)}
        self._warn.warning("write", "summaries not written, kept unacknowledged; trying again", fields=fields)
        with self._lock:
            self._pending = batch + self._pending
            self._to_ack = {**acks, **self._to_ack}

    def _one_by_one(self, batch: list[pa.Table], acks: dict[str, list[int]], exc: Exception) -> list[str]:
        """Each summary of a batch that failed as a whole, in a file of its own: the ids written.
        One that fails again is refused as a corrupt payload is (its messages acknowledged, the agent
        not told: no row), kept back where the disk refuses it; never is the batch lost."""
        self._warn.warning(
            "batch", "batch not written (%s); writing it summary by summary", first_line(exc), exc_info=exc
        )
        written, refused, kept, kept_acks = [], [], [], {}
        for table in batch:  # one summary each (`Receiver.accept`)
            sid = table.column("summary_id")[0].as_py()
            try:
                self.files_written += len(dataset.append(self.location, table))
                written.append(sid)
            except OSError as failed:
                kept.append(table)
                kept_acks[sid] = acks.pop(sid, [])
                exc = failed
            except Exception as failed:
                refused.append(sid)
                self._warn.warning("refused", "summary %s refused: %s", sid, first_line(failed))
        with self._lock:
            for sid in refused:  # a re-send is judged again, not taken for stored
                self.receiver.seen.discard(sid)
                self._batch_ids.pop(sid, None)
        self.refused_at_write += len(refused)
        if kept:
            self._keep(kept, kept_acks, exc)
        return written + refused  # refused ones are acknowledged to the broker, not told to agents

    def _tell_agents(self, stored: dict[str, str]) -> list[paho.MQTTMessageInfo]:
        """Acknowledge stored summary ids, one message per drift topic (`<topic>/ack`, QoS 1)."""
        by_topic: dict[str, list[str]] = {}
        for summary_id, topic in stored.items():
            by_topic.setdefault(topic, []).append(summary_id)
        sent = []
        for topic, ids in by_topic.items():
            for start in range(0, len(ids), ACK_IDS_PER_MESSAGE):
                sent.append(
                    self.client.publish(
                        ack_topic(topic), encode_ack(ids[start : start + ACK_IDS_PER_MESSAGE]), qos=1
                    )
                )
                self.acks_sent += 1
        return sent

    def run(self, stop: threading.Event | None = None) -> None:
        """Write batches when full or `flush_s` old until `stop` (or `self.stop()`), then write
        what is left and disconnect."""
        stop = stop or self._stop
        self.start()
        try:
            while not stop.is_set():
                self._full.wait(0.2)
                if (
                    self._full.is_set()
                    or time.monotonic() - self._pending_since >= self.cfg.collector.flush_s
                ):
                    self.flush()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Write what is buffered and acknowledge it while still connected (else the broker and
        the agents would send it all again), then disconnect. What arrives meanwhile is written
        too, unacknowledged: the broker delivers it again and the next run counts a duplicate."""
        self.link.stopping = True
        self.flush()
        # The broker has taken the acknowledgements once it answers the agents' ones sent after
        # them. A disconnect right away closed the socket with the broker's messages unread, which
        # resets the connection: the broker lost acknowledgements still in its buffer and sent the
        # summaries again.
        deadline = time.monotonic() + CLOSE_WAIT_S
        for info in self._told:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # not connected: the broker sends them again, harmless
                break
        self.client.disconnect()
        self._closed.wait(max(0.0, deadline - time.monotonic()))
        self.client.loop_stop()
        self.flush()
