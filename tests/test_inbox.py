"""The bounded inbox: never blocks the producer, never grows past its bound, counts every drop."""

from __future__ import annotations

import threading

import pytest

from edge_ttt.stream.inbox import Inbox


def test_fifo_within_the_bound():
    box: Inbox[int] = Inbox(3)
    for i in range(3):
        box.put(i)
    assert [box.get(0) for _ in range(3)] == [0, 1, 2]
    assert box.get(0) is None and box.counters.dropped == 0


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", [7, 8, 9]), ("drop_newest", [0, 1, 2])])
def test_when_full_policy_and_drop_count(policy: str, kept: list[int]):
    box: Inbox[int] = Inbox(3, when_full=policy)
    for i in range(10):
        box.put(i)
    assert len(box) == 3 and box.counters.dropped == 7 and box.counters.received == 10
    assert [box.get(0) for _ in range(3)] == kept
    assert box.counters.high_water == 3


def test_get_waits_for_a_producer_thread_or_times_out():
    box: Inbox[str] = Inbox(10)
    threading.Timer(0.05, box.put, args=("hello",)).start()
    assert box.get(timeout=5) == "hello"
    assert box.get(timeout=0.05) is None


def test_a_fast_producer_against_a_slow_consumer_stays_bounded():
    box: Inbox[int] = Inbox(100)
    producer = threading.Thread(target=lambda: [box.put(i) for i in range(50_000)])
    producer.start()
    seen = []
    while producer.is_alive() or len(box):
        item = box.get(0.01)
        if item is not None:
            seen.append(item)
    producer.join()
    assert box.counters.high_water <= 100
    assert len(seen) + box.counters.dropped == 50_000
    assert seen == sorted(seen)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="max_items"):
        Inbox(0)
    with pytest.raises(ValueError, match="when_full"):
        Inbox(5, when_full="block")
    with pytest.raises(ValueError, match="max_bytes"):
        Inbox(5, max_bytes=0)


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", [3, 4]), ("drop_newest", [0, 1])])
def test_bounded_in_bytes_as_well_as_in_messages(policy: str, kept: list[int]):
    box: Inbox[int] = Inbox(100, when_full=policy, max_bytes=250)
    for i in range(5):
        box.put(i, size=100)
    assert len(box) == 2 and box.bytes == 200 and box.counters.dropped == 3
    assert box.counters.high_water_bytes == 200
    assert [box.get(0) for _ in range(2)] == kept
    assert box.bytes == 0


def test_an_item_larger_than_the_byte_bound_is_refused_and_the_others_kept():
    box: Inbox[str] = Inbox(10, max_bytes=100)
    assert box.put("small", size=60)
    assert not box.put("huge", size=101)
    assert box.counters.dropped == 1 and box.get(0) == "small"
