"""Drift summaries into the spool on a thread of their own.

Encoding a summary (Parquet) and writing it to the spool (two fsyncs) costs milliseconds, and the
intervals of many streams end together (they started together): on the worker, that stalls every
prediction behind it, and a stop with thousands of streams takes minutes. The worker only closes
intervals (an in-memory summary) and puts them here, oldest first; memory stays bounded, since
`put` waits while `max_pending` summaries wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edge_ttt.drift.summary import DriftSummary
from edge_ttt.logs import RateLimitedLog

log = logging.getLogger(__package__)


class SummarySpooler:
    def __init__(self, submit: Callable[[DriftSummary], Any], max_pending: int = 10_000) -> None:
        """`submit`: what spools one summary (the shipper's `submit`)."""
        self.submit = submit
        self.max_pending = max_pending
        self.spooled = 0
        self.failed = 0  # summaries the spool refused (a full or failing disk)
        self._queue: deque[DriftSummary] = deque()
        self._busy = False
        self._closing = False
        self._changed = threading.Condition()
        self._warn = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name="drift-spooler", daemon=True)
        self._thread.start()

    def put(self, summary: DriftSummary, timeout: float | None = None) -> bool:
        """Queue `summary` for the spool, waiting (at most `timeout` s) while the queue is full."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._queue) < self.max_pending, timeout):
                return False
            self._queue.append(summary)
            self._changed.notify_all()
            return True

    def pending(self) -> int:
        with self._changed:
            return len(self._queue) + self._busy

    def close(self, timeout: float) -> int:
        """Spool what is queued for at most `timeout` s, then stop; how many summaries were left."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._changed.wait_for(lambda: not self._queue and not self._busy, timeout)
            self._closing = True
            left = len(self._queue)
            self._queue.clear()
            self._changed.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return left

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if self._closing:
                    return
                summary = self._queue.popleft()
                self._busy = True
                self._changed.notify_all()
            try:
                self.submit(summary)
                self.spooled += 1
            except OSError as exc:
                self.failed += 1
                fields = {"device": summary.device, "stream": summary.stream, "error": str(exc)}
                self._warn.warning("spool", "drift summary not spooled", fields=fields)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
