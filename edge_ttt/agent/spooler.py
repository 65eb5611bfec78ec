"""Drift summaries into the spool on a thread of their own.

Encoding a summary (Parquet) and writing it to the spool (two fsyncs) costs milliseconds, and the
intervals of many streams end together (they started together): on the worker, that stalls every
prediction behind it. The worker only closes intervals (an in-memory summary) and puts them here,
oldest first; memory stays bounded, since `put` waits while `max_pending` summaries wait. A
summary the disk refuses stays here and is tried again; while the disk refuses, a full queue drops
its oldest summary (counted with the spool's drops, which the next summary carries to the fleet). A stop
does not write them one by one: whatever is still queued goes into one batch file (a few
milliseconds per hundred summaries), which the shipper unpacks into one-summary files while the
stop's budget lasts, and at the next start for the rest.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from edge_ttt.agent.background import BackgroundWriter
from edge_ttt.drift.summary import DriftSummary

log = logging.getLogger(__package__)


class SummarySink(Protocol):
    """Where summaries go: the shipper (edge_ttt.drift.shipper.Shipper)."""

    def submit(self, summary: DriftSummary) -> Path: ...

    def submit_batch(self, summaries: list[DriftSummary]) -> Path: ...

    def count_dropped(self, summaries: int) -> None: ...


class SummarySpooler(BackgroundWriter):
    thread_name = "drift-spooler"

    def __init__(self, sink: SummarySink, max_pending: int = 10_000) -> None:
        self.sink = sink
        self._ids = itertools.count()
        super().__init__(max_pending)

    def put(self, summary: DriftSummary, timeout: float | None = None) -> bool:
        """Queue `summary` for the spool, waiting (at most `timeout` s) while the queue is full."""
        return self._queue(next(self._ids), summary, timeout)

    def close(self, timeout: float) -> int:
        """Stop, and write every summary still queued in one batch file; how many were lost
        (those of a batch that could not be written). `timeout` bounds the wait for a write in
        progress, not the batch's."""
        left = self._stop(time.monotonic() + timeout)
        if not left:
            return 0
        try:
            self.sink.submit_batch(left)
        except OSError as exc:
            log.error(
                "drift summaries lost at stop", extra={"fields": {"summaries": len(left), "error": str(exc)}}
            )
            return len(left)
        return 0

    def _write(self, key: int, summary: DriftSummary) -> None:
        self.sink.submit(summary)

    def _drop(self, key: int, summary: DriftSummary) -> None:
        super()._drop(key, summary)
        self.sink.count_dropped(1)  # the fleet learns of it with the next summary spooled

    def _failure(self, key: int, summary: DriftSummary, exc: OSError) -> tuple[str, str, dict[str, Any]]:
        fields = {"device": summary.device, "stream": summary.stream, "error": str(exc)}
        return "spool", "drift summary not spooled", fields
