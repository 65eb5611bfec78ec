"""The bounded hand-off between the MQTT network thread and the worker.

The network thread must return from its callback at once (a blocked callback stalls keepalives
and QoS acks, and the broker drops the connection), so it only appends here; the worker takes
messages out and does the model work. The inbox is bounded in messages and in bytes (a few large
payloads must not cost what many small ones may); when a new message would pass either bound the
configured policy applies and every dropped message is counted: memory stays bounded whatever
the sender rate and payload size.

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
    high_water_bytes: int = 0


class Inbox(Generic[T]):
    def __init__(
        self, max_items: int, when_full: WhenFull = "drop_oldest", max_bytes: int | None = None
    ) -> None:
        """`max_bytes`: bound on the sum of the sizes given to `put` (None: messages only)."""
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"when_full must be drop_oldest or drop_newest, got {when_full!r}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.counters = InboxCounters()
        self.bytes = 0  # sum of the sizes of the items held
        self._items: deque[tuple[T, int]] = deque()
        self._ready = threading.Condition()

    def _fits(self, size: int) -> bool:
        within_bytes = self.max_bytes is None or self.bytes + size <= self.max_bytes
        return len(self._items) < self.max_items and within_bytes

    def put(self, item: T, size: int = 0) -> bool:
        """Never blocks: called from the network thread. `size`: the item's bytes; whether it was kept."""
        with self._ready:
            self.counters.received += 1
            if self.max_bytes is not None and size > self.max_bytes:
                self.counters.dropped += 1  # would never fit: keep what is there
                return False
            while not self._fits(size):
                self.counters.dropped += 1
                if self.when_full == "drop_newest":
                    return False
                self.bytes -= self._items.popleft()[1]
            self._items.append((item, size))
            self.bytes += size
            self.counters.high_water = max(self.counters.high_water, len(self._items))
            self.counters.high_water_bytes = max(self.counters.high_water_bytes, self.bytes)
            self._ready.notify()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to `timeout` s; None on timeout."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            if not self._items:
                return None
            item, size = self._items.popleft()
            self.bytes -= size
            return item

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)
