"""Recorded sensor log format v1: one Parquet file, one row per sample.

The written contract lives in docs/log-format.md. `checks` holds the contract's names and the
checks that reader (`read`) and writer (`write`) share, `metadata` the file's key-value metadata
both ways, `recorded` the in-memory log.
"""

from __future__ import annotations

from edge_ttt.recordlog.checks import (
    KEY_CHANNELS,
    KEY_CLASS_NAMES,
    KEY_LOG_FORMAT,
    KEY_SAMPLE_RATE_HZ,
    LOG_FORMAT_VERSION,
    LogFormatError,
)
from edge_ttt.recordlog.read import read_log
from edge_ttt.recordlog.recorded import RecordedLog
from edge_ttt.recordlog.write import write_log

__all__ = [
    "KEY_CHANNELS",
    "KEY_CLASS_NAMES",
    "KEY_LOG_FORMAT",
    "KEY_SAMPLE_RATE_HZ",
    "LOG_FORMAT_VERSION",
    "LogFormatError",
    "RecordedLog",
    "read_log",
    "write_log",
]
