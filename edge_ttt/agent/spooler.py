"""Drift summaries into the spool on a thread of their own.

Encoding a summary (Parquet) and writing it to the spool (two fsyncs) costs milliseconds, and the
intervals of many streams end together (they started together): on the worker, that stalls every
prediction behind it, and a stop with thousands of streams takes minutes. The worker only closes
intervals (an in-memory summary) and puts them here, oldest first; memory stays bounded, since
`put` waits while `max_pending` summaries wait.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from edge_ttt.agent.background import BackgroundWriter
from edge_ttt.drift.summary import DriftSummary


class SummarySpooler(BackgroundWriter):
    thread_name = "drift-spooler"

    def __init__(self, submit: Callable[[DriftSummary], Any], max_pending: int = 10_000) -> None:
        """`submit`: what spools one summary (the shipper's `submit`)."""
        self.submit = submit
        self._ids = itertools.count()
        super().__init__(max_pending)

    def put(self, summary: DriftSummary, timeout: float | None = None) -> bool:
        """Queue `summary` for the spool, waiting (at most `timeout` s) while the queue is full."""
        return self._queue(next(self._ids), summary, timeout)

    def _write(self, key: int, summary: DriftSummary) -> None:
        self.submit(summary)

    def _failure(self, key: int, summary: DriftSummary, exc: OSError) -> tuple[str, str, dict[str, Any]]:
        fields = {"device": summary.device, "stream": summary.stream, "error": str(exc)}
        return "spool", "drift summary not spooled", fields
