"""Shipping drift summaries over a real mosquitto: outages, restarts, the bound, chunks, corruption.
The receiving side (`Home`) acknowledges what it accepted, as the fleet collector does."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.drift.acks import ack_topic, encode_ack
from edge_ttt.drift.receiver import MessageError, Receiver, parse_message
from edge_ttt.drift.schema import to_parquet
from edge_ttt.drift.shipper import Shipper, drift_topic, encode_chunks
from edge_ttt.drift.spool import Spool, summary_id_of
from tests.conftest import wait_for
from tests.test_drift_spool import summary

TOPIC = drift_topic("edge-ttt", "dev-1")


@pytest.fixture
def home_broker(broker, tmp_path):
    """The fixture broker with persistence on, as a fleet broker runs: the collector's session and
    its queued QoS 1 messages survive a broker restart (stop() saves them, start() restores them)."""
    broker.stop()
    store = tmp_path / "mosquitto-db"
    store.mkdir()
    text = broker.config.read_text().replace(
        "persistence false", f"persistence true\npersistence_location {store}/"
    )
    broker.config.write_text(text)
    broker.start()
    return broker


def client(port: int, client_id: str, clean: bool = True) -> paho.Client:
    """An agent's client: it subscribes to its acknowledgements on every connect."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.reconnect_delay_set(min_delay=1, max_delay=1)
    c.on_connect = lambda c, *_: c.subscribe(ack_topic(TOPIC), qos=1)
    c.connect_async("127.0.0.1", port)
    c.loop_start()
    return c


class Home:
    """The receiving side: a persistent-session subscriber feeding a `Receiver`; it acknowledges
    every summary it has (`acks=False`: none, a collector that never writes)."""

    def __init__(self, port: int, acks: bool = True) -> None:
        self.acks = acks
        self.receiver = Receiver()
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="home", clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda c, *_: c.subscribe("edge-ttt/+/drift", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, _c, _u, msg) -> None:
        with self.lock:
            table = self.receiver.accept(msg.payload)
            if table is not None:
                self.ids.extend(table["summary_id"].to_pylist())
            sid = parse_message(msg.payload).summary_id
            if self.acks and sid in self.receiver.seen:  # new or a duplicate: stored, say so
                self.client.publish(ack_topic(msg.topic), encode_ack([sid]), qos=1)

    def accepted(self) -> list[str]:
        with self.lock:
            return list(self.ids)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def home(home_broker):
    h = Home(home_broker.port)
    yield h
    h.close()


def shipper_for(port: int, spool: Spool, chunk_bytes: int = 64_000, ack_timeout_s: float = 60.0) -> Shipper:
    shipper = Shipper(
        client(port, "dev-1"), spool, TOPIC, chunk_bytes=chunk_bytes, ack_timeout_s=ack_timeout_s
    )
    shipper.start(interval_s=0.05)
    return shipper


def close(shipper: Shipper) -> None:
    shipper.stop()
    shipper.client.disconnect()
    shipper.client.loop_stop()


def test_summaries_made_during_a_broker_outage_arrive_once_each_when_it_returns(home_broker, home, tmp_path):
    spool = Spool(tmp_path / "spool", 10**7)
    shipper = shipper_for(home_broker.port, spool)
    try:
        before = [summary(i) for i in range(3)]
        for s in before:
            shipper.submit(s)
        assert wait_for(lambda: len(home.accepted()) == 3 and shipper.pending() == 0)
        home_broker.stop()
        during = [summary(10 + i) for i in range(5)]
        for s in during:
            shipper.submit(s)
            time.sleep(0.2)
        time.sleep(1.0)
        assert shipper.pending() == 5  # nothing acknowledged, nothing removed
        home_broker.start()
        assert wait_for(lambda: len(home.accepted()) == 8 and shipper.pending() == 0, 30)
        time.sleep(0.5)  # room for late duplicates, which must be dropped
        accepted = home.accepted()
        assert sorted(accepted) == sorted(s.summary_id for s in before + during)  # each once
        assert home.receiver.counters.corrupt == 0 and spool.counters.dropped == 0
    finally:
        close(shipper)


def test_a_restarted_agent_ships_what_its_spool_holds(home_broker, home, tmp_path):
    offline = Shipper(
        paho.Client(CallbackAPIVersion.VERSION2, client_id="never"), Spool(tmp_path, 10**7), TOPIC
    )
    ids = [summary_id_of(offline.submit(summary(i))) for i in range(3)]
    offline.pump()  # not connected: nothing is handed over, everything stays
    assert offline.pending() == 3 and offline.messages_sent == 0
    shipper = shipper_for(home_broker.port, Spool(tmp_path, 10**7))  # the agent after a restart
    try:
        assert wait_for(lambda: len(home.accepted()) == 3 and shipper.pending() == 0)
        assert sorted(ids) == sorted(home.accepted())
    finally:
        close(shipper)


def test_a_long_outage_keeps_the_spool_within_its_bound_and_ships_the_newest(home_broker, home, tmp_path):
    size = len(to_parquet([summary(0)]))
    spool = Spool(tmp_path, max_bytes=int(size * 5.5))
    shipper = shipper_for(home_broker.port, spool)
    try:
        assert wait_for(shipper.client.is_connected)
        home_broker.stop()
        assert wait_for(lambda: not shipper.client.is_connected())  # nothing in flight: drops are losses
        made = [summary(i) for i in range(20)]
        for s in made:
            shipper.submit(s)
        assert spool.size() <= spool.max_bytes
        assert spool.counters.dropped == 15 and shipper.pending() == 5
        home_broker.start()
        assert wait_for(lambda: len(home.accepted()) == 5 and shipper.pending() == 0, 30)
        assert sorted(home.accepted()) == sorted(s.summary_id for s in made[-5:])
    finally:
        close(shipper)


def test_a_summary_larger_than_the_chunk_limit_arrives_in_chunks_and_is_reassembled(
    home_broker, home, tmp_path
):
    shipper = shipper_for(home_broker.port, Spool(tmp_path, 10**7), chunk_bytes=1_000)
    try:
        s = summary()
        shipper.submit(s)
        assert wait_for(lambda: home.accepted() == [s.summary_id])
        assert shipper.messages_sent > 3 and home.receiver.counters.messages >= shipper.messages_sent
    finally:
        close(shipper)


def messages(chunk_bytes: int = 700) -> tuple[str, list[bytes]]:
    s = summary()
    return s.summary_id, encode_chunks(s.summary_id, to_parquet([s]), chunk_bytes)


def test_a_corrupted_chunk_fails_the_sha256_and_is_counted_not_stored():
    sid, msgs = messages()
    head, body = msgs[1].split(b"\n", 1)
    bad = head + b"\n" + bytes([body[0] ^ 0xFF]) + body[1:]
    receiver = Receiver()
    out = [receiver.accept(m) for m in [msgs[0], bad, *msgs[2:]]]
    assert out == [None] * len(msgs) and receiver.counters.corrupt == 1 and sid not in receiver.seen
    out = [receiver.accept(m) for m in reversed(msgs)]  # an intact resend, in any order, is accepted
    assert out[-1]["summary_id"].to_pylist() == [sid] and receiver.counters.accepted == 1


def test_duplicates_are_dropped_by_summary_id():
    sid, msgs = messages()
    receiver = Receiver()
    first = [receiver.accept(m) for m in msgs]
    again = [receiver.accept(m) for m in msgs]
    assert first[-1] is not None and again == [None] * len(msgs)
    assert receiver.counters.duplicates == len(msgs) and receiver.seen == {sid}


@pytest.mark.parametrize(
    "payload",
    [b"no header", b"{}\n", b'{"format": "edge-ttt-drift", "v": 2}\nx', b"[1]\n", b"{bad json\n"],
)
def test_malformed_messages_are_refused_and_counted(payload):
    with pytest.raises(MessageError):
        parse_message(payload)
    receiver = Receiver()
    assert receiver.accept(payload) is None and receiver.counters.malformed == 1


def test_incomplete_files_are_evicted_beyond_the_bound():
    receiver = Receiver(max_partial=2)
    for seed in range(3):
        s = summary(seed)
        receiver.accept(encode_chunks(s.summary_id, to_parquet([s]), 500)[0])
    assert receiver.counters.evicted == 1


def _message(index: int, count: int, size: int, data: bytes, summary_id: str = "flood") -> bytes:
    header = {"format": "edge-ttt-drift", "v": 1, "id": summary_id, "sha256": "0" * 64}
    header.update(index=index, count=count, size=size)
    return json.dumps(header).encode() + b"\n" + data


def test_memory_stays_bounded_whatever_the_chunks_claim():
    """A sender that declares a huge file, or keeps sending chunks of one that never completes,
    cannot make the receiver hold more than `max_bytes` per incomplete file."""
    receiver = Receiver(max_bytes=100_000)  # a genuine summary here: about 18 KB
    assert receiver.accept(_message(0, 2, 10**12, b"x")) is None  # declared over the bound
    assert receiver.counters.too_large == 1 and not receiver.waiting("flood")
    for index in range(50):  # 1 KB chunks of a "5 KB" file of a million chunks
        receiver.accept(_message(index, 10**6, 5_000, b"x" * 1_000))
    assert receiver.counters.too_large == 1 + 8  # the 6th chunk of each run of 6 goes over: 8 of 50
    assert sum(len(d) for parts in receiver._partial.values() for d in parts.values()) <= 5_000
    s = summary()  # a genuine summary still goes through
    data = to_parquet([s])
    assert [receiver.accept(m) for m in encode_chunks(s.summary_id, data, 500)][-1] is not None
    # Many files that never complete, of empty chunks too: all of them together stay in the bound.
    crowd = Receiver(max_partial=10**6, max_bytes=100_000)
    for n in range(3_000):
        crowd.accept(_message(0, 3, 2_000, b"x" * 900, summary_id=f"f{n}"))
        crowd.accept(_message(n % 2 + 1, 3, 2_000, b"", summary_id=f"f{n}"))
    assert crowd.held <= 100_000 and crowd.counters.evicted > 2_900
    assert crowd.held == sum(len(d) + 64 for parts in crowd._partial.values() for d in parts.values())


def test_a_file_leaves_the_spool_only_after_the_collector_acknowledged_it(home_broker, tmp_path):
    """The broker's PUBACK is not enough (it may crash before it saves the message): without the
    collector's acknowledgement the file stays, and goes again after the timeout."""
    silent = Home(home_broker.port, acks=False)  # receives, never acknowledges
    shipper = shipper_for(home_broker.port, Spool(tmp_path, 10**7), ack_timeout_s=1.0)
    try:
        s = summary()
        shipper.submit(s)
        assert wait_for(lambda: silent.accepted() == [s.summary_id])  # PUBACKed, delivered
        assert wait_for(lambda: shipper.spool.counters.resent >= 2, 10)
        # A re-send counts when it leaves; the collector counts it when it arrives, a moment later.
        assert wait_for(lambda: silent.receiver.counters.duplicates >= 2, 10)
        assert shipper.pending() == 1
    finally:
        silent.close()
    home = Home(home_broker.port)  # a collector that acknowledges: the next re-send is stored
    try:
        assert wait_for(lambda: shipper.pending() == 0 and home.accepted() == [s.summary_id], 10)
        assert shipper.spool.counters.shipped == 1
    finally:
        home.close()
        close(shipper)


def test_chunks_of_a_resend_chunked_differently_do_not_mix():
    s = summary()
    data = to_parquet([s])
    small, large = encode_chunks(s.summary_id, data, 500), encode_chunks(s.summary_id, data, 700)
    receiver = Receiver()
    assert len(small) > len(large) + 2
    out = [receiver.accept(m) for m in [*small[2:], *large]]  # small[2:] alone outnumbers large
    assert out[-1] is not None and receiver.counters.corrupt == 0
