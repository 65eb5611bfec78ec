"""Recorded logs for the log-format tests: one built in memory, one valid table written by hand, so
that a test can break exactly one thing at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_ttt.recordlog import (
    KEY_CHANNELS,
    KEY_CLASS_NAMES,
    KEY_LOG_FORMAT,
    KEY_SAMPLE_RATE_HZ,
    RecordedLog,
)

CHANNELS = ("ax", "ay")


def make_log(with_label: bool = True) -> RecordedLog:
    """Two devices, rows deliberately interleaved and out of time order."""
    device_id = np.array(["b", "a", "b", "a", "a"], dtype=object)
    t_ns = np.array([20, 30, 10, 10, 20], dtype=np.int64)
    values = np.arange(10, dtype=np.float32).reshape(5, 2)
    values[1, 0] = np.nan
    values[2, 1] = np.inf
    return RecordedLog(
        device_id=device_id,
        t_ns=t_ns,
        values=values,
        label=np.array([0, 1, -1, 2, 0], dtype=np.int32) if with_label else None,
        channels=CHANNELS,
        sample_rate_hz=50.0,
        class_names=("walk", "run", "sit"),
    )


def good_table() -> pa.Table:
    """A valid v1 table, written by hand so tests can break exactly one thing at a time."""
    return pa.table(
        {
            "device_id": pa.array(["a", "a", "b"], pa.string()),
            "t_ns": pa.array([1, 2, 1], pa.int64()),
            "ax": pa.array([0.0, 1.0, 2.0], pa.float32()),
            "ay": pa.array([0.0, 1.0, 2.0], pa.float32()),
            "label": pa.array([0, 1, -1], pa.int32()),
        }
    )


def good_meta() -> dict[str, str]:
    return {
        KEY_LOG_FORMAT: "1",
        KEY_CHANNELS: json.dumps(list(CHANNELS)),
        KEY_SAMPLE_RATE_HZ: "50.0",
        KEY_CLASS_NAMES: json.dumps(["walk", "run"]),
    }


def write_raw(path: Path, table: pa.Table, meta: dict[str, str]) -> Path:
    pq.write_table(table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()}), path)
    return path
