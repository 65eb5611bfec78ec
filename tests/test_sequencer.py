"""Frame order: duplicates dropped, short reorderings repaired, lost frames given up, restarts seen."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_ttt.stream.sequencer import Sequencer

PERIOD = 1_000


@dataclass(frozen=True)
class F:
    seq: int
    t0_ns: int


def frame(seq: int, offset: int = 0) -> F:
    return F(seq, (seq + offset) * PERIOD)


def run(s: Sequencer, seqs: list[int]) -> list[int]:
    return [f.seq for q in seqs for f in s.push(frame(q))]


def test_in_order_frames_pass_straight_through():
    s = Sequencer(reorder=2)
    assert run(s, [5, 6, 7, 8]) == [5, 6, 7, 8]
    assert s.counters.delivered == 4 and s.waiting == 0


def test_duplicates_are_dropped_whether_delivered_or_waiting():
    s = Sequencer(reorder=3)
    assert run(s, [1, 2, 2, 4, 4, 1]) == [1, 2]
    assert s.counters.duplicates == 3 and s.waiting == 1


def test_a_short_reordering_is_repaired():
    s = Sequencer(reorder=2)
    assert run(s, [1, 3, 4, 2, 5]) == [1, 2, 3, 4, 5]
    assert s.counters.missing == 0 and s.counters.late == 0


def test_a_lost_frame_is_given_up_after_reorder_frames_and_a_late_one_dropped():
    s = Sequencer(reorder=2)
    assert run(s, [1, 3, 4]) == [1]
    assert run(s, [5]) == [3, 4, 5]  # three waiting > reorder: stop waiting for 2
    assert s.counters.missing == 1
    assert run(s, [2]) == []
    assert s.counters.late == 1


def test_reorder_zero_never_waits():
    s = Sequencer(reorder=0)
    assert run(s, [1, 3, 2, 4]) == [1, 3, 4]
    assert s.counters.missing == 1 and s.counters.late == 1


def test_a_restarted_device_starts_over_instead_of_being_dropped():
    s = Sequencer(reorder=2)
    assert run(s, [100, 101, 103]) == [100, 101]
    rebooted = [f.seq for q in (0, 1) for f in s.push(frame(q, offset=10_000))]
    assert rebooted == [103, 0, 1]  # what waited is delivered first, then the new run
    assert s.counters.restarts == 1 and s.counters.missing == 1


def test_a_device_whose_clock_started_over_too_starts_over_and_a_late_frame_does_not():
    """A device without a real-time clock reboots to seq 0 and a time near 1970. Before, its frames
    were all dropped as late until its counter passed the old one."""
    s = Sequencer(reorder=2)
    now = 1_700_000_000_000_000_000
    assert [f.seq for q in range(100, 200) for f in s.push(F(q, now + q * PERIOD))] == list(range(100, 200))
    s.push(F(120, now + 120 * PERIOD))  # a redelivered old frame, where its time puts it
    assert s.counters.late == 1 and s.counters.restarts == 0
    assert [f.seq for q in range(3) for f in s.push(F(q, q * PERIOD))] == [0, 1, 2]  # rebooted
    assert s.counters.restarts == 1 and s.counters.late == 1


def test_a_pause_in_the_stream_does_not_make_late_frames_look_like_a_restart():
    s = Sequencer(reorder=2)
    early = [f.seq for q in range(100) for f in s.push(frame(q))]
    later = [f.seq for q in range(100, 200) for f in s.push(frame(q, offset=100_000))]  # asleep 100 s
    assert early + later == list(range(200))
    for q in (5, 50, 99, 120):  # none of them among the last 64 delivered (those are duplicates)
        s.push(frame(q, offset=100_000 if q >= 100 else 0))
    assert s.counters.late == 4 and s.counters.restarts == 0


def test_negative_reorder_is_refused():
    with pytest.raises(ValueError, match="reorder"):
        Sequencer(reorder=-1)


@given(
    st.lists(st.integers(0, 40), max_size=120),
    st.integers(0, 6),
)
def test_output_is_increasing_unique_and_accounted_for(arrivals: list[int], reorder: int):
    s = Sequencer(reorder=reorder)
    out = run(s, arrivals)
    assert out == sorted(set(out))  # never a duplicate, never out of order
    assert set(out) <= set(arrivals)
    c = s.counters
    assert c.delivered == len(out)
    assert c.delivered + c.duplicates + c.late + s.waiting == len(arrivals)
    assert c.restarts == 0  # times follow sequence numbers here: nothing looks like a reboot


@given(st.permutations(list(range(30))))
def test_with_a_window_as_long_as_the_stream_nothing_after_the_first_frame_is_lost(order: list[int]):
    """The first arrival fixes where the stream starts; everything after it is delivered in order."""
    s = Sequencer(reorder=30)
    assert run(s, order) == list(range(order[0], 30))
    assert s.waiting == 0 and s.counters.missing == 0 and s.counters.late == order[0]
