"""The shipper's bookkeeping against a fake paho client: deleted only on the collector's
acknowledgement, re-sent after a timeout or a reconnect, refusals kept and counted, spool drops
counted once and carried in the next summary."""

from __future__ import annotations

import logging

import pytest
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_ttt.drift.acks import ack_topic, encode_ack, parse_ack
from edge_ttt.drift.schema import read_table, to_parquet
from edge_ttt.drift.shipper import Shipper, drift_topic
from edge_ttt.drift.spool import Spool
from tests.test_drift_spool import summary

TOPIC = drift_topic("edge-ttt", "dev-1")


class FakeInfo:
    """paho's `MQTTMessageInfo`: a message id and the publish call's result."""

    def __init__(self, mid: int, rc: MQTTErrorCode) -> None:
        self.mid = mid
        self.rc = rc


class FakeClient:
    """Connected (or not); records publishes; PUBACKs and acknowledgements are delivered by hand."""

    def __init__(self) -> None:
        self.connected = True
        self.refuse_next = False  # the next publish call fails (the connection dropped during it)
        self.sent: list[tuple[str, int]] = []  # (topic, mid)
        self.on_publish = None
        self.callbacks: dict[str, object] = {}

    def is_connected(self) -> bool:
        return self.connected

    def message_callback_add(self, sub: str, callback) -> None:
        self.callbacks[sub] = callback

    def publish(self, topic: str, payload: bytes, qos: int) -> FakeInfo:
        mid = len(self.sent) + 1
        self.sent.append((topic, mid))
        rc = MQTTErrorCode.MQTT_ERR_NO_CONN if self.refuse_next else MQTTErrorCode.MQTT_ERR_SUCCESS
        self.refuse_next = False
        return FakeInfo(mid, rc)

    def puback(self, mid: int, reason: int = 0) -> None:
        self.on_publish(self, None, mid, ReasonCode(PacketTypes.PUBACK, identifier=reason), None)

    def ack(self, *ids: str) -> None:
        msg = type("Msg", (), {"topic": ack_topic(TOPIC), "payload": encode_ack(list(ids))})
        self.callbacks[ack_topic(TOPIC)](self, None, msg)


def shipper(tmp_path, max_bytes: int = 10**7, **kwargs) -> Shipper:
    return Shipper(FakeClient(), Spool(tmp_path, max_bytes), TOPIC, **kwargs)


def test_a_puback_alone_keeps_the_file_the_collectors_acknowledgement_deletes_it(tmp_path):
    sh = shipper(tmp_path)
    s = summary()
    sh.submit(s)
    sh.pump()
    (_, mid), *_ = sh.client.sent
    sh.client.puback(mid)
    sh.pump()
    assert sh.pending() == 1 and len(sh.client.sent) == 1  # in flight, not sent again
    sh.client.ack("someone-elses-id", s.summary_id)
    sh.pump()
    assert sh.pending() == 0 and sh.spool.counters.shipped == 1


def test_what_stays_unacknowledged_is_sent_again_after_the_timeout_and_after_a_reconnect(
    tmp_path, monkeypatch
):
    clock = [100.0]
    monkeypatch.setattr("edge_ttt.drift.shipper.time.monotonic", lambda: clock[0])
    sh = shipper(tmp_path, ack_timeout_s=30.0)
    sh.submit(summary())
    sh.pump()
    clock[0] += 29.0
    sh.pump()
    assert len(sh.client.sent) == 1
    clock[0] += 1.0
    sh.pump()
    assert len(sh.client.sent) == 2 and sh.spool.counters.resent == 1
    sh.client.connected = False
    sh.pump()
    sh.client.connected = True  # a reconnect: in flight goes again at once
    sh.pump()
    assert len(sh.client.sent) == 3 and sh.spool.counters.resent == 2 and sh.pending() == 1


def test_a_refused_publish_call_keeps_the_file_and_sends_it_again(tmp_path):
    sh = shipper(tmp_path)
    sh.submit(summary())
    sh.client.refuse_next = True
    sh.pump()
    sh.pump()  # not tracked: it goes again
    assert len(sh.client.sent) == 2 and sh.pending() == 1
    sh.pump()  # in flight now: not sent a third time
    assert len(sh.client.sent) == 2


def test_a_puback_with_a_failure_reason_is_kept_counted_logged_and_retried(tmp_path, monkeypatch, caplog):
    clock = [0.0]
    monkeypatch.setattr("edge_ttt.drift.shipper.time.monotonic", lambda: clock[0])
    sh = shipper(tmp_path, ack_timeout_s=10.0)
    for seed in range(3):
        sh.submit(summary(seed))
    sh.pump()
    assert len(sh.client.sent) == 3
    with caplog.at_level(logging.WARNING):
        for _, mid in sh.client.sent:
            sh.client.puback(mid, 0x87)  # not authorized
        sh.pump()
    assert sh.pending() == 3 and sh.spool.counters.refused == 3
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "Not authorized" in lines[0].fields["reason"]  # rate-limited
    sh.pump()
    assert len(sh.client.sent) == 3  # not hammered: retried after the timeout...
    clock[0] += 10.0
    sh.pump()
    assert len(sh.client.sent) == 6
    for _, mid in sh.client.sent[3:]:
        sh.client.puback(mid, 0x87)
    sh.pump()
    sh.client.connected = False
    sh.pump()
    sh.client.connected = True  # ...or at once after a reconnect (e.g. the ACL was changed)
    sh.pump()
    assert len(sh.client.sent) == 9 and sh.spool.counters.refused == 6


def test_a_file_the_bound_deletes_in_flight_counts_as_shipped_when_acknowledged_else_dropped(
    tmp_path, monkeypatch
):
    clock = [0.0]
    monkeypatch.setattr("edge_ttt.drift.shipper.time.monotonic", lambda: clock[0])
    size = len(to_parquet([summary(0)]))
    sh = shipper(tmp_path, max_bytes=int(size * 2.5), max_inflight=2, ack_timeout_s=10.0)
    made = [summary(i) for i in range(4)]
    sh.submit(made[0])
    sh.submit(made[1])
    sh.pump()  # both in flight
    sh.submit(made[2])
    sh.submit(made[3])  # the bound deletes both in-flight files
    c = sh.spool.counters
    assert sh.pending() == 2 and c.dropped == 0  # not (yet) a loss
    sh.client.ack(made[0].summary_id)
    sh.pump()
    assert c.shipped == 1 and c.dropped == 0  # delivered after all
    clock[0] += 10.0
    sh.pump()  # made[1] never acknowledged: now it is a loss
    assert c.shipped == 1 and c.dropped == 1 and c.dropped_bytes > 0


def test_spool_drops_are_logged_and_travel_in_the_next_summary(tmp_path, caplog):
    size = len(to_parquet([summary(0)]))
    sh = shipper(tmp_path, max_bytes=int(size * 2.5))
    sh.client.connected = False
    with caplog.at_level(logging.WARNING):
        paths = [sh.submit(summary(i)) for i in range(6)]
    assert sh.spool.counters.dropped == 4
    assert sum("spool over its bound" in r.getMessage() for r in caplog.records) == 1  # rate-limited
    paths.append(sh.submit(summary(9)))
    carried = [read_table(p)["spool_dropped"][0].as_py() for p in paths if p.exists()]
    # each carries the drops since the previous summary: every drop once, the newest in the next one
    assert carried == [1, 1] and sh.spool.counters.dropped == 5


def test_drops_carried_by_a_summary_the_disk_refused_travel_with_the_next_one_written(tmp_path, monkeypatch):
    sh = shipper(tmp_path)
    sh.count_dropped(3)  # given up before reaching the spool (a disk refusing writes for long)
    written = sh.spool.put

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sh.spool, "put", refuse)
    with pytest.raises(OSError):
        sh.submit(summary(0))
    monkeypatch.setattr(sh.spool, "put", written)
    paths = [sh.submit(summary(0)), sh.submit(summary(1))]  # the retry, then the next
    assert [read_table(p)["spool_dropped"][0].as_py() for p in paths] == [3, 0]
    assert sh.spool.counters.dropped == 3


def test_acknowledgements_that_are_junk_are_ignored():
    assert (
        parse_ack(b"not json")
        == parse_ack(b"[]")
        == parse_ack(b'{"format": "x", "v": 1, "ids": ["a"]}')
        == []
    )
    assert parse_ack(b'{"format": "edge-ttt-drift-ack", "v": 1, "ids": ["a", 3, "*"]}') == ["a"]
