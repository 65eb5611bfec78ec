"""One writer thread for work that must not stall the worker: items queue here (at most
`max_pending`, so memory stays bounded), are written one at a time, oldest first, and a stop
writes what it can within a time bound. `CheckpointWriter` and `SummarySpooler` are the two."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, ClassVar

from edge_ttt.logs import RateLimitedLog

log = logging.getLogger(__package__)


class BackgroundWriter:
    """Subclasses say what writing one item means (`_write`) and how a failure reads (`_failure`).

    Items are keyed: queuing under a key that is still pending replaces that item in its place.
    A failing write (a full or failing disk) is counted and logged, rate-limited, and the thread
    goes on."""

    thread_name: ClassVar[str]

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.written = 0
        self.failed = 0
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

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closing)
                if self._closing:
                    return
                key, item = self._pending.popitem(last=False)
                self._current = key
                self._changed.notify_all()
            try:
                self._write(key, item)
                self.written += 1
            except OSError as exc:
                self.failed += 1
                kind, message, fields = self._failure(key, item, exc)
                self._warn.warning(kind, message, fields=fields)
            finally:
                with self._changed:
                    self._current = None
                    self._changed.notify_all()
