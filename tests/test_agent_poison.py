"""One hostile message must not stop the agent: a poison acknowledgement, an odd stream level, a
device id too long for MQTT's topics, a summary paho will never publish, an unreadable spool file."""

from __future__ import annotations

import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.agent import Agent, Message
from edge_ttt.agent.config import load_config
from edge_ttt.drift.acks import encode_ack, parse_ack
from edge_ttt.drift.schema import to_parquet
from edge_ttt.drift.shipper import Shipper
from edge_ttt.drift.spool import Spool
from edge_ttt.mqtt_callbacks import MAX_TOPIC_BYTES, CallbackGuard
from edge_ttt.stream.codec import encode
from tests.agent_harness import Listener, frames, start, write_config
from tests.conftest import wait_for
from tests.test_drift_spool import summary

POISON = b"[" * 200_000


@pytest.mark.parametrize(
    "payload", [POISON, b'{"format":"edge-ttt-drift-ack","v":1,"ids":' + POISON, b"1e99999", b"\xff", None]
)
def test_parse_ack_refuses_anything_unreadable_without_raising(payload):
    assert parse_ack(payload) == []


def test_a_callback_guard_counts_and_logs_once_and_never_raises(caplog):
    guard = CallbackGuard()
    message = paho.MQTTMessage(topic=b"edge-ttt/d/drift/ack")

    def boom(_c, _u, _m) -> None:
        raise RuntimeError("boom")

    wrapped = guard("on_ack", boom)
    for _ in range(3):
        assert wrapped(None, None, message) is None
    logged = [r for r in caplog.records if r.getMessage().startswith("MQTT callback failed")]
    assert guard.errors == 3 and len(logged) == 1
    assert logged[0].fields["topic"] == "edge-ttt/d/drift/ack"


def test_a_poison_ack_or_a_failing_callback_does_not_end_the_network_loop(
    tmp_path, bundle_dir, broker, monkeypatch
):
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port)))
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    try:
        listener.publish("edge-ttt/dev1/drift/ack", POISON)  # RecursionError in json before
        batch = frames(12)
        for frame in batch[:6]:
            listener.publish("edge-ttt/dev1/dt/0", encode(frame))
        assert wait_for(lambda: agent.counters.frames == 6, 10), "the network loop died"

        def failing(_payload: bytes) -> list[str]:
            raise RuntimeError("a bug in a callback")

        monkeypatch.setattr("edge_ttt.drift.shipper.parse_ack", failing)
        listener.publish("edge-ttt/dev1/drift/ack", encode_ack(["a1"]))
        for frame in batch[6:]:
            listener.publish("edge-ttt/dev1/dt/0", encode(frame))
        assert wait_for(lambda: agent.counters.frames == 12, 10), "the network loop died"
        assert agent.status()["counters"]["callback_errors"] == 1
        assert agent.transport.client.suppress_exceptions
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()


@pytest.fixture
def offline_agent(tmp_path, bundle_dir) -> Agent:
    return Agent(load_config(write_config(tmp_path, bundle_dir, 1)))


@pytest.mark.parametrize("stream", ["\u00b2", "\u2460", "\u0663", "00", "01", "0\u00b2"])
def test_a_stream_level_not_in_canonical_ascii_digits_is_dropped_as_stream(offline_agent: Agent, stream):
    frame = frames(1)[0]  # stream_id 0; '٣' (Arabic-Indic 3) read as 3 would also mismatch
    offline_agent.handle(Message(f"edge-ttt/dev1/dt/{stream}", encode(frame), time.monotonic()))
    assert dict(offline_agent.counters.rejected) == {"stream": 1}
    assert offline_agent.counters.frames == 0 and len(offline_agent.pipelines) == 0


def test_named_and_canonical_streams_still_pass(offline_agent: Agent):
    frame = frames(1)[0]
    for stream in ("0", "imu"):
        offline_agent.handle(Message(f"edge-ttt/dev1/dt/{stream}", encode(frame), time.monotonic()))
    assert offline_agent.counters.frames == 2 and not offline_agent.counters.rejected


def test_an_unexpected_fault_on_one_frame_is_counted_and_the_agent_goes_on(
    offline_agent: Agent, monkeypatch, caplog
):
    def broken(*_args) -> None:
        raise ValueError("not a FrameError")

    monkeypatch.setattr("edge_ttt.agent.loop.check_frame", broken)
    offline_agent.handle(Message("edge-ttt/dev1/dt/0", encode(frames(1)[0]), time.monotonic()))
    assert offline_agent.counters.stream_errors == 1
    logged = [r for r in caplog.records if r.getMessage().startswith("frame lost")]
    assert logged and logged[0].fields["topic"] == "edge-ttt/dev1/dt/0"


def test_a_device_id_too_long_for_the_drift_topic_is_dropped_where_frames_arrive(offline_agent: Agent):
    device = "L" * (MAX_TOPIC_BYTES - len("edge-ttt//dt/0"))  # the sensor topic just fits
    offline_agent.handle(Message(f"edge-ttt/{device}/dt/0", encode(frames(1)[0]), time.monotonic()))
    assert dict(offline_agent.counters.rejected) == {"device": 1} and len(offline_agent.pipelines) == 0


class _Client:
    """paho's publish checks, without a broker: what the shipper hands it."""

    def __init__(self) -> None:
        self.on_publish = None
        self.sent: list[str] = []
        self._real = paho.Client(CallbackAPIVersion.VERSION2)

    def is_connected(self) -> bool:
        return True

    def message_callback_add(self, *_args) -> None:
        pass

    def publish(self, topic: str, payload: bytes, qos: int) -> paho.MQTTMessageInfo:
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            raise ValueError("Publish topic is too long")  # as paho does
        self.sent.append(topic)
        info = paho.MQTTMessageInfo(len(self.sent))
        info.rc = paho.MQTT_ERR_SUCCESS
        return info


def test_a_summary_paho_cannot_publish_is_set_aside_and_the_others_ship(tmp_path, caplog):
    spool = Spool(tmp_path, 10**7)
    poison = summary(0)
    poison.device = "L" * (MAX_TOPIC_BYTES - len("edge-ttt//dt/0"))  # spooled by an older agent
    spool.put("long1", to_parquet([poison]))
    spool.put("ok1", to_parquet([summary(1)]))
    client = _Client()
    shipper = Shipper(client, spool, lambda d: f"edge-ttt/{d}/drift", ack_filter="x")
    shipper.pump()
    assert [p.suffix for p in sorted(tmp_path.iterdir()) if p.suffix == ".unsendable"] == [".unsendable"]
    assert client.sent == ["edge-ttt/dev-1/drift"] and shipper.unsendable == 1
    assert shipper.pending() == 1  # the one in flight, not the one set aside
    assert any("cannot be published" in r.getMessage() for r in caplog.records)
    assert Spool(tmp_path, 10**7).pending() == spool.pending()  # not back after a restart


def test_a_shipper_thread_survives_an_unexpected_error(tmp_path, monkeypatch):
    spool = Spool(tmp_path, 10**7)
    shipper = Shipper(_Client(), spool, "edge-ttt/d/drift")
    calls: list[int] = []

    def pump() -> None:
        calls.append(1)
        raise RuntimeError("bug")

    monkeypatch.setattr(shipper, "pump", pump)
    shipper.start(interval_s=0.01)
    try:
        assert wait_for(lambda: len(calls) >= 3, 5) and shipper._thread.is_alive()
    finally:
        shipper.stop()


def test_an_unreadable_spool_file_leaves_the_spool_index(tmp_path):
    spool = Spool(tmp_path, 10**7)
    spool.put("junk1", b"not parquet")
    shipper = Shipper(_Client(), spool, lambda d: f"edge-ttt/{d}/drift", ack_filter="x")
    shipper.pump()
    assert shipper.unreadable == 1 and shipper.pending() == 0 and spool.size() == 0
    assert shipper.drain(5.0) == 0
