"""The summary spooler: summaries spooled off the worker, oldest first, a stop bounded in time."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from edge_ttt.agent import background
from edge_ttt.agent.spooler import SummarySpooler
from tests.conftest import wait_for


def summary(device: str) -> SimpleNamespace:
    """What the spooler reads of a summary when it reports a failure."""
    return SimpleNamespace(device=device, stream="0")


class Sink:
    """Records what the spooler hands on; `submit` runs `each` first."""

    def __init__(self, each=lambda s: None) -> None:
        self.each = each
        self.done: list[tuple[object, str]] = []
        self.batches: list[list] = []

    def submit(self, summary):
        self.each(summary)
        self.done.append((summary, threading.current_thread().name))

    def submit_batch(self, summaries):
        self.batches.append(list(summaries))


def test_summaries_are_spooled_in_order_on_the_spoolers_thread():
    sink = Sink()
    spooler = SummarySpooler(sink)
    for name in "abc":
        spooler.put(name)
    assert wait_for(lambda: len(sink.done) == 3)
    assert sink.done == [(n, "drift-spooler") for n in "abc"] and spooler.written == 3
    assert spooler.close(1.0) == 0 and sink.batches == []


def test_a_full_queue_waits_and_a_stop_writes_the_queue_in_one_batch_without_waiting():
    gate = threading.Event()
    sink = Sink(lambda s: gate.wait(20))
    spooler = SummarySpooler(sink, max_pending=2)
    for name in "abc":
        assert spooler.put(name, timeout=1.0)
    assert wait_for(lambda: spooler.pending() == 3)  # one being spooled, two queued: full
    assert not spooler.put("d", timeout=0.1)
    start = time.monotonic()
    assert spooler.close(0.3) == 0  # nothing lost: the two queued go in one batch
    assert time.monotonic() - start < 2
    assert sink.batches == [["b", "c"]]
    gate.set()


def test_a_batch_the_disk_refuses_is_counted_as_lost():
    gate = threading.Event()

    class Full(Sink):
        def submit_batch(self, summaries):
            raise OSError("disk full")

    writing = threading.Event()
    spooler = SummarySpooler(Full(lambda s: writing.set() or gate.wait(20)))
    for name in "abc":
        spooler.put(name)
    assert writing.wait(10)  # "a" is being written, "b" and "c" queued
    assert spooler.close(0.1) == 2
    gate.set()


def test_a_summary_the_disk_refuses_is_kept_and_written_first_once_it_takes_writes(monkeypatch):
    monkeypatch.setattr(background, "RETRY_MIN_S", 0.01)
    full = threading.Event()
    full.set()

    def refuse(s):
        if full.is_set():
            raise OSError(28, "No space left on device")

    sink = Sink(refuse)
    spooler = SummarySpooler(sink)
    for name in "abc":
        spooler.put(summary(name))
    assert wait_for(lambda: spooler.failed >= 2)  # tried again, still refused
    assert spooler.failing and sink.done == [] and spooler.pending() == 3
    full.clear()
    assert wait_for(lambda: spooler.written == 3)
    assert [s.device for s, _ in sink.done] == ["a", "b", "c"] and not spooler.failing  # order kept
    assert spooler.dropped == 0 and spooler.close(1.0) == 0


def test_while_the_disk_refuses_a_full_queue_drops_its_oldest_instead_of_blocking(monkeypatch):
    monkeypatch.setattr(background, "RETRY_MIN_S", 30.0)  # no second try during the test

    class Refusing(Sink):
        def __init__(self):
            super().__init__(lambda s: (_ for _ in ()).throw(OSError(28, "No space left on device")))
            self.dropped = 0

        def count_dropped(self, summaries):
            self.dropped += summaries

    sink = Refusing()
    spooler = SummarySpooler(sink, max_pending=2)
    spooler.put(summary("a"))
    assert wait_for(lambda: spooler.failing)  # "a" refused, back first in the queue
    spooler.put(summary("b"))
    start = time.monotonic()
    assert spooler.put(summary("c"), timeout=5.0) and spooler.put(summary("d"), timeout=5.0)
    assert time.monotonic() - start < 1.0  # did not wait for room
    assert spooler.dropped == sink.dropped == 2  # "a" and "b", the oldest
    assert spooler.close(0.1) == 0 and [s.device for s in sink.batches[0]] == ["c", "d"]  # the stop's batch


def test_a_slow_disk_that_takes_writes_still_makes_a_full_queue_wait():
    gate = threading.Event()
    spooler = SummarySpooler(Sink(lambda s: gate.wait(20)), max_pending=1)
    spooler.put("a")
    assert wait_for(lambda: spooler.pending() == 1 and not spooler.failing)
    spooler.put("b")
    assert not spooler.put("c", timeout=0.1) and spooler.dropped == 0  # back-pressure, no loss
    gate.set()
    assert wait_for(lambda: spooler.written == 2)
    spooler.close(1.0)
