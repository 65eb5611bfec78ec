"""The bounded hand-off between the MQTT network thread and the worker.

The network thread must return from its callback at once (a blocked callback stalls keepalives
and QoS acks, and the broker drops the connection), so it only appends here; the worker takes
messages out and does the model work. When the inbox is full the configured policy applies and
every dropped message is counted: memory stays bounded whatever the sender rate.

- `drop_oldest` (default): the newest data is the most useful for a live prediction;
- `drop_newest`: keep what arrived first, e.g. to replay a burst completely up to the bound.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
WhenFull = Literal["drop_oldest", "drop_newest"]


@dataclass
class InboxCounters:
    received: int = 0
    dropped: int = 0
    high_water: int = 0


class Inbox(Generic[T]):
    def __init__(self, max_items: int, when_full: WhenFull = "drop_oldest") -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"when_full must be drop_oldest or drop_newest, got {when_full!r}")
        self.max_items = max_items
        self.when_full = when_full
        self.counters = InboxCounters()
        self._items: deque[T] = deque()
        self._ready = threading.Condition()

    def put(self, item: T) -> None:
        """Never blocks: called from the network thread."""
        with self._ready:
            self.counters.received += 1
            if len(self._items) >= self.max_items:
                self.counters.dropped += 1
                if self.when_full == "drop_newest":
                    return
                self._items.popleft()
            self._items.append(item)
            self.counters.high_water = max(self.counters.high_water, len(self._items))
            self._ready.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to `timeout` s; None on timeout."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
