"""Put one (device, stream)'s frames back in order before windowing.

MQTT QoS 1 delivers at least once and, across reconnects, not always in order. Frames carry a
sequence number (+1 per frame) and the time of their first sample; from those the sequencer:

- drops duplicates (a sequence number already delivered or already waiting);
- holds up to `reorder` frames that arrived ahead of a missing one, and delivers them in order
  when the missing frame arrives; if it has not arrived by then it is given up: counted as
  missing, and the windower sees the time gap and ends its run;
- drops a frame that arrives after its place was given up (late);
- treats a lower sequence number as a restarted device (a firmware reboot resets its counter)
  when its first-sample time is *newer* than the last delivered, or far *older* than the stream's
  own timeline allows that number (a device without a real-time clock restarts its clock as
  well): the stream starts over instead of being dropped until its counter catches up. A frame
  takes at least the shortest time seen between two consecutive ones (a pause only adds), so
  frame `s` came no earlier than the run's first frame's time plus (s - its seq) of those; one
  more than `TIMELINE_SLACK` of them earlier is a restart. A frame merely late (a redelivery
  after a reconnect) keeps to that, and is dropped. (One from before the run's first frame,
  after a pause longer than the slack, would be taken for a restart: the lesser harm.)

Pure: no I/O, no clock. See docs/frames.md, "Order and duplicates".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

# Frames' worth of time by which a lower sequence number's first sample must precede where the
# stream's timeline puts it to count as a restart: far beyond a clock's jitter or a short pause.
TIMELINE_SLACK = 64


class Sequenced(Protocol):
    """What the sequencer needs of a frame (edge_ttt.stream.codec.Frame has it)."""

    seq: int
    t0_ns: int


@dataclass
class SequencerCounters:
    delivered: int = 0
    duplicates: int = 0
    late: int = 0
    missing: int = 0  # sequence numbers given up on
    restarts: int = 0


@dataclass
class Sequencer:
    reorder: int = 4
    counters: SequencerCounters = field(default_factory=SequencerCounters)
    _next: int | None = None
    _last_t0: int | None = None
    _anchor: tuple[int, int] | None = None  # (seq, t0_ns) of the first frame delivered since the (re)start
    _span: int | None = None  # the shortest time between two consecutive frames delivered since then
    _waiting: dict[int, Sequenced] = field(default_factory=dict)
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=64))

    def __post_init__(self) -> None:
        if self.reorder < 0:
            raise ValueError(f"reorder must be >= 0, got {self.reorder}")

    def push(self, frame: Sequenced) -> list[Sequenced]:
        """Frames ready to window, in sequence order (often just `frame`, sometimes none or several)."""
        seq = frame.seq
        if self._next is None:
            self._next = seq
        elif seq < self._next:
            if self._restarted(frame):
                ready = self._flush_all()
                self.counters.restarts += 1
                self._next, self._anchor, self._span = seq, None, None
                return ready + self._accept(frame)
            if seq in self._recent:
                self.counters.duplicates += 1
            else:
                self.counters.late += 1
            return []
        if seq in self._waiting:
            self.counters.duplicates += 1
            return []
        return self._accept(frame)

    def _restarted(self, frame: Sequenced) -> bool:
        """A lower sequence number from a device that started over: newer than the last frame
        delivered, or older than the run's timeline allows (module docstring)."""
        if self._last_t0 is None:
            return False
        if frame.t0_ns > self._last_t0:
            return True
        if self._anchor is None or self._span is None:
            return False
        seq0, t0 = self._anchor
        return frame.t0_ns < t0 + (frame.seq - seq0 - TIMELINE_SLACK) * self._span

    def _accept(self, frame: Sequenced) -> list[Sequenced]:
        self._waiting[frame.seq] = frame
        ready = self._drain()
        while len(self._waiting) > self.reorder:  # stop waiting for the oldest missing frame
            first = min(self._waiting)
            assert self._next is not None
            self.counters.missing += first - self._next
            self._next = first
            ready += self._drain()
        return ready

    def _drain(self) -> list[Sequenced]:
        ready = []
        while self._next in self._waiting:
            frame = self._waiting.pop(self._next)
            ready.append(frame)
            if self._anchor is None:
                self._anchor = (frame.seq, frame.t0_ns)
            elif self._recent and self._recent[-1] == frame.seq - 1 and frame.t0_ns > self._last_t0:
                gap = frame.t0_ns - self._last_t0
                self._span = gap if self._span is None else min(self._span, gap)
            self._recent.append(frame.seq)
            self._last_t0 = frame.t0_ns
            self._next += 1
        self.counters.delivered += len(ready)
        return ready

    def _flush_all(self) -> list[Sequenced]:
        """Deliver whatever is waiting, in order, giving up on the gaps between (before a restart)."""
        ready: list[Sequenced] = []
        for seq in sorted(self._waiting):
            assert self._next is not None
            self.counters.missing += seq - self._next
            self._next = seq
            ready += self._drain()
        return ready

    @property
    def waiting(self) -> int:
        return len(self._waiting)
