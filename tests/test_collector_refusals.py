"""The collector against payloads that used to stop it (found by a black-box test): a poison summary
that crashed every flush and every restart, a header that killed paho's network thread, a batch
that failed to write as a whole, and the temporary files a killed write left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa

from edge_ttt.drift.schema import to_table
from edge_ttt.drift.summary import DriftSummary
from edge_ttt.monitor import dataset
from edge_ttt.monitor.collector import STALE_S, Collector, received
from tests.conftest import wait_for
from tests.test_drift_refusals import TS, payloads, summary_table
from tests.test_monitor_collector import T0, Running, config, make_summary, publish, publisher, stored_ids


def to_one(summary: DriftSummary) -> pa.Table:
    return to_table([summary])


def test_a_poison_summary_among_good_ones_is_refused_and_the_good_ones_are_stored(broker, tmp_path):
    """A null `interval_end` crashed the flush (TypeError), the batch with it, and every restart
    (the broker delivers the poison again); valid summaries of the same batch were never stored."""
    location = str(tmp_path / "fleet")
    running = Running(config(broker.port, location))
    agents = publisher(broker.port)
    good = [summary_table().set_column(1, "summary_id", pa.array([f"good{i}"])) for i in range(2)]
    poison = summary_table(interval_end=pa.nulls(1, TS))
    try:
        publish(agents, "dev-1", payloads(good[0]))
        publish(agents, "dev-1", payloads(poison))
        publish(agents, "dev-1", payloads(good[1]))
        assert wait_for(lambda: sorted(stored_ids(location)) == ["good0", "good1"])
        assert running.collector.receiver.counters.corrupt == 1 and running.thread.is_alive()
    finally:
        running.stop()
    again = Running(config(broker.port, location))  # a restart neither crashes nor stores it
    try:
        publish(agents, "dev-1", payloads(poison))
        assert wait_for(lambda: again.collector.receiver.counters.corrupt == 1)
    finally:
        again.stop()
        agents.disconnect()
        agents.loop_stop()
    assert sorted(stored_ids(location)) == ["good0", "good1"]
    assert [p.name for p in Path(location).iterdir() if p.name.startswith("date=")] == ["date=2023-11-14"]


def test_a_header_that_broke_the_json_parser_leaves_the_network_thread_running(broker, tmp_path):
    """`[[[...` (RecursionError) raised inside paho's on_message and stopped its thread: the
    process lived on, holding the dataset's lock, storing nothing."""
    location = str(tmp_path / "fleet")
    running = Running(config(broker.port, location))
    agents = publisher(broker.port)
    after = make_summary("after", T0, seed=9)
    try:
        publish(agents, "deep", [b"[" * 100_000 + b"\n"])
        publish(agents, "after", payloads(to_one(after)))
        assert wait_for(lambda: stored_ids(location) == [after.summary_id])
        assert running.collector.receiver.counters.malformed == 1
    finally:
        running.stop()
        agents.disconnect()
        agents.loop_stop()


class Message:
    """What paho hands `on_message`."""

    def __init__(self, payload: bytes, mid: int) -> None:
        self.payload, self.mid, self.qos, self.topic = payload, mid, 1, "edge-ttt/dev-1/drift"


def test_an_exception_while_handling_a_message_is_counted_and_never_escapes(tmp_path, monkeypatch, caplog):
    collector = Collector(config(1, str(tmp_path / "fleet")))  # not started
    acked = []
    monkeypatch.setattr(collector.client, "ack", lambda mid, qos: acked.append(mid))
    monkeypatch.setattr(collector, "accept", lambda *_: 1 / 0)
    collector._on_message(Message(b"x\n", 7))
    assert collector.handler_errors == 1 and acked == [7]
    assert any("edge-ttt/dev-1/drift" in r.getMessage() for r in caplog.records)


def test_a_batch_that_fails_to_write_is_written_summary_by_summary_never_lost(tmp_path, monkeypatch):
    """A row no check foresaw (here one with a null date, past the receiver) used to lose the
    popped batch and stop the writer thread; now the others are written and it is refused."""
    location = str(tmp_path / "fleet")
    collector = Collector(config(1, location))  # not started
    acked = []
    monkeypatch.setattr(collector.client, "ack", lambda mid, _qos: acked.append(mid))
    good = summary_table().set_column(1, "summary_id", pa.array(["good"]))
    bad = summary_table(interval_end=pa.nulls(1, TS)).set_column(1, "summary_id", pa.array(["bad"]))
    collector._pending = [received(t, T0) for t in (good, bad)]
    collector._to_ack = {"good": [1, 2], "bad": [3]}
    collector.receiver.seen.update({"good", "bad"})
    collector.flush()
    assert stored_ids(location) == ["good"] and sorted(acked) == [1, 2, 3]
    assert (
        collector.refused_at_write == 1 and "bad" not in collector.receiver.seen
    )  # a re-send is judged again
    assert not collector._pending and not collector._to_ack


def test_temporary_files_of_a_killed_write_are_removed_at_start(tmp_path):
    """kill -9 during a write left `.part-*.tmp` files in the dataset for ever."""
    location = tmp_path / "fleet"
    dataset.append(str(location), to_one(make_summary("dev", T0)))
    partition = next(location.glob("date=*"))
    stale = partition / ".part-0123abcd.parquet.x1y2z3.tmp"
    stale.write_bytes(b"PAR1 half")
    other = partition / ".notes.tmp"  # not the collector's: left alone
    other.write_text("keep")
    Collector(config(1, str(location)))
    assert not stale.exists() and other.exists()
    # sharing the directory, a fresh one may be another collector's write in progress
    fresh, old = partition / ".part-1.parquet.a.tmp", partition / ".part-2.parquet.b.tmp"
    fresh.write_bytes(b"")
    old.write_bytes(b"")
    os.utime(old, (time.time() - STALE_S - 60,) * 2)
    Collector(config(1, str(location), group="collectors"))
    assert fresh.exists() and not old.exists()
