"""One writer thread for work that must not stall the worker: items queue here (at most
`max_pending`, so memory stays bounded), are written one at a time, oldest first, and a stop
writes what it can within a time bound. `CheckpointWriter` and `SummarySpooler` are the two.

A disk that refuses a write (full, read-only, failing) is usually a disk that will take it later:
the item stays first in the queue and is tried again after a pause that doubles from
`RETRY_MIN_S` to `RETRY_MAX_S`. While writes fail, a full queue drops its oldest item (counted)
instead of making the caller wait: a refusing disk must not stop the predictions."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, ClassVar

from edge_ttt.logs import RateLimitedLog

log = logging.getLogger(__package__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0


class BackgroundWriter:
    """Subclasses say what writing one item means (`_write`) and how a failure reads (`_failure`).

    Items are keyed: queuing under a key that is still pending replaces that item in its place.
    A failing write is counted (`failed`, attempts) and logged, rate-limited, and tried again
    unless a newer item of its key replaced it meanwhile; `dropped` counts the items a full queue
    gave up while writes failed."""

    thread_name: ClassVar[str]

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.failing = False  # the last write failed
        self._pending: OrderedDict[Hashable, Any] = OrderedDict()
        self._current: Hashable | None = None  # the key being written
        self._closing = False
        self._changed = threading.Condition()
        self._warn = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def pending(self) -> int:
        """Items queued or being written."""
        with self._changed:
            return len(self._pending) + (self._current is not None)

    def _queue(self, key: Hashable, item: Any, timeout: float | None) -> bool:
        """Queue `item` under `key`, waiting (at most `timeout` s) while `max_pending` others wait;
        whether it was queued."""
        with self._changed:
            room = lambda: key in self._pending or len(self._pending) < self.max_pending  # noqa: E731
            if not room() and self.failing:
                self._drop(*self._pending.popitem(last=False))
            if not self._changed.wait_for(room, timeout):
                return False
            self._pending[key] = item
            self._changed.notify_all()
            return True

    def close(self, timeout: float) -> int:
        """Write what is pending for at most `timeout` s, then stop; how many items were left."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._changed.wait_for(lambda: not self._pending and self._current is None, timeout)
        return len(self._stop(deadline))

    def _stop(self, deadline: float) -> list[Any]:
        """Stop the thread (a write in progress may finish until `deadline`, monotonic); the
        items it did not write, oldest first."""
        with self._changed:
            self._closing = True
            left = list(self._pending.values())
            self._pending.clear()
            self._changed.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return left

    def _write(self, key: Hashable, item: Any) -> None:
        raise NotImplementedError

    def _failure(self, key: Hashable, item: Any, exc: OSError) -> tuple[str, str, dict[str, Any]]:
        """(kind, message, fields) of the warning for a failed write."""
        raise NotImplementedError

    def _drop(self, key: Hashable, item: Any) -> None:
        """Count and log an item a full queue gave up while writes failed (under the lock)."""
        self.dropped += 1
        fields = {"writer": self.thread_name, "dropped": self.dropped, "max_pending": self.max_pending}
        self._warn.warning("dropped", "disk refusing writes, queue full: oldest dropped", fields=fields)

    def _run(self) -> None:
        pause = 0.0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closing, pause)  # no wait after a success
                self._changed.wait_for(lambda: self._pending or self._closing)
                if self._closing:
                    return
                key, item = self._pending.popitem(last=False)
                self._current = key
                self._changed.notify_all()
            try:
                self._write(key, item)
                self.written += 1
                self.failing, pause = False, 0.0
            except OSError as exc:
                self.failed += 1
                self.failing, pause = True, min(max(2 * pause, RETRY_MIN_S), RETRY_MAX_S)
                kind, message, fields = self._failure(key, item, exc)
                self._warn.warning(kind, message, fields={**fields, "retry_in_s": pause})
                with self._changed:
                    if key not in self._pending:  # not replaced meanwhile: first again
                        self._pending[key] = item
                        self._pending.move_to_end(key, last=False)
            finally:
                with self._changed:
                    self._current = None
                    self._changed.notify_all()
