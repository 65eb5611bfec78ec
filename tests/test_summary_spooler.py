"""The summary spooler: summaries spooled off the worker, oldest first, a stop bounded in time."""

from __future__ import annotations

import threading
import time

from edge_ttt.agent.spooler import SummarySpooler
from tests.conftest import wait_for


def test_summaries_are_spooled_in_order_on_the_spoolers_thread():
    done: list[tuple[str, str]] = []
    spooler = SummarySpooler(lambda s: done.append((s, threading.current_thread().name)))
    for name in "abc":
        spooler.put(name)
    assert wait_for(lambda: len(done) == 3)
    assert done == [(n, "drift-spooler") for n in "abc"] and spooler.written == 3
    assert spooler.close(1.0) == 0


def test_a_full_queue_waits_and_a_stop_is_bounded_in_time():
    gate = threading.Event()
    spooler = SummarySpooler(lambda s: gate.wait(20), max_pending=2)
    for name in "abc":
        assert spooler.put(name, timeout=1.0)
    assert wait_for(lambda: spooler.pending() == 3)  # one being spooled, two queued: full
    assert not spooler.put("d", timeout=0.1)
    start = time.monotonic()
    assert spooler.close(0.3) == 2
    assert time.monotonic() - start < 2
    gate.set()


def test_a_failing_disk_is_counted_and_spooling_goes_on():
    from types import SimpleNamespace

    def submit(s):
        if s.device == "bad":
            raise OSError("disk full")

    spooler = SummarySpooler(submit)
    spooler.put(SimpleNamespace(device="bad", stream="0"))
    spooler.put(SimpleNamespace(device="good", stream="0"))
    assert wait_for(lambda: spooler.written == 1 and spooler.failed == 1)
    spooler.close(1.0)
