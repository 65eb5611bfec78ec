"""The summary spooler: summaries spooled off the worker, oldest first, a stop bounded in time."""

from __future__ import annotations

import threading
import time

from edge_ttt.agent.spooler import SummarySpooler
from tests.conftest import wait_for


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


def test_a_failing_disk_is_counted_and_spooling_goes_on():
    from types import SimpleNamespace

    def fail_bad(s):
        if s.device == "bad":
            raise OSError("disk full")

    spooler = SummarySpooler(Sink(fail_bad))
    spooler.put(SimpleNamespace(device="bad", stream="0"))
    spooler.put(SimpleNamespace(device="good", stream="0"))
    assert wait_for(lambda: spooler.written == 1 and spooler.failed == 1)
    spooler.close(1.0)
