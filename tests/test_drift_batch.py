"""A stop's batch file: many summaries in one write, unpacked into the spool's one-summary files,
within a deadline, without duplicates, an unreadable one set aside."""

from __future__ import annotations

import math

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.drift.schema import read_bytes, read_table
from edge_ttt.drift.shipper import Shipper
from edge_ttt.drift.spool import Spool, summary_id_of
from tests.test_drift_spool import summary


def shipper(spool: Spool) -> Shipper:
    return Shipper(paho.Client(CallbackAPIVersion.VERSION2, client_id="offline"), spool, "t/drift")


def test_a_batch_unpacks_into_one_file_per_summary_with_the_same_rows(tmp_path):
    spool = Spool(tmp_path, 10**8)
    made = [summary(seed) for seed in range(5)]
    s = shipper(spool)
    s.submit_batch(made)
    assert spool.pending() == [] and len(spool.batches()) == 1  # a batch is not shipped as such
    assert s.unpack() == 0
    assert spool.batches() == []
    files = spool.pending()
    assert [summary_id_of(p) for p in files] == [m.summary_id for m in made]
    for path, m in zip(files, made, strict=True):
        row = read_table(path).to_pylist()
        assert len(row) == 1 and row[0]["device"] == m.device and row[0]["windows"] == m.windows


def test_an_unpack_past_its_deadline_leaves_the_rest_batched_and_a_later_one_finishes(tmp_path, monkeypatch):
    spool = Spool(tmp_path, 10**8)
    made = [summary(seed) for seed in range(6)]
    s = shipper(spool)
    s.submit_batch(made)
    assert s.unpack(deadline=-math.inf) == 6  # no time: nothing moves, the batch stays whole
    spool.put(made[0].summary_id, b"already here")  # e.g. an unpack a crash interrupted
    ticks = iter([0.0, 0.0])  # the clock the unpack reads: two turns, then time is up
    with monkeypatch.context() as m:
        m.setattr("edge_ttt.drift.shipper.time.monotonic", lambda: next(ticks, 1.0))
        assert s.unpack(deadline=0.5) == 3  # made[0] skipped, two unpacked
    (batch,) = spool.batches()
    left = read_bytes(batch.read_bytes()).column("summary_id").to_pylist()
    assert left == [m.summary_id for m in made[3:]]
    assert s.unpack() == 0 and spool.batches() == []
    assert sorted(summary_id_of(p) for p in spool.pending()) == sorted(m.summary_id for m in made)


def test_an_unreadable_batch_is_set_aside_not_retried(tmp_path, caplog):
    spool = Spool(tmp_path, 10**8)
    spool.put_batch(b"not parquet")
    assert shipper(spool).unpack() == 0
    assert spool.batches() == [] and [p.suffix for p in tmp_path.iterdir()] == [".unreadable"]
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_a_stop_interrupts_an_unpack_and_the_rest_stays_batched(tmp_path):
    import threading

    spool = Spool(tmp_path, 10**8)
    s = shipper(spool)
    s.submit_batch([summary(seed) for seed in range(4)])
    stop = threading.Event()
    stop.set()
    assert s.unpack(stop=stop) == 4 and spool.pending() == []
