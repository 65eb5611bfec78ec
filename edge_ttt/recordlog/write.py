"""Writing a v1 log: checked like a read, then replaced atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_ttt.atomic import atomic_write
from edge_ttt.recordlog.checks import (
    COL_DEVICE_ID,
    COL_LABEL,
    COL_T_NS,
    RESERVED_COLUMNS,
    check_metadata,
    contract_error,
    sort_and_check_rows,
)
from edge_ttt.recordlog.metadata import encode_metadata
from edge_ttt.recordlog.recorded import RecordedLog


def write_log(
    path: str | os.PathLike[str],
    log: RecordedLog,
    *,
    extra_columns: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Validate `log` and write it atomically, rows sorted by (device_id, t_ns).

    `extra_columns` (row-parallel to `log`) are stored alongside for traceability; readers
    ignore them. Atomic (temp file in the same directory, fsync, os.replace) so a crash or a
    concurrent reader never sees a half-written log.
    """
    path = Path(path)
    check_metadata(path, log.channels, log.sample_rate_hz, log.class_names)
    order = sort_and_check_rows(path, log.device_id, log.t_ns, log.label, log.class_names)

    # sort_and_check_rows has already refused non-string (and None) ids.
    device_col = pa.array(log.device_id[order], type=pa.string())
    columns: dict[str, pa.Array] = {
        COL_DEVICE_ID: device_col,
        COL_T_NS: pa.array(log.t_ns[order], type=pa.int64()),
    }
    for j, name in enumerate(log.channels):
        columns[name] = pa.array(log.values[order, j], type=pa.float32())
    if log.label is not None:
        columns[COL_LABEL] = pa.array(log.label[order], type=pa.int32())
    for name, data in (extra_columns or {}).items():
        if name in columns or name in RESERVED_COLUMNS:
            raise contract_error(
                path, f"extra column '{name}' clashes with a format column", "rename the extra column"
            )
        data = np.asarray(data)
        if data.shape != (len(log),):
            raise contract_error(
                path,
                f"extra column '{name}' has shape {data.shape}, expected ({len(log)},)",
                "pass one value per row",
            )
        columns[name] = pa.array(data[order])

    table = pa.table(columns).replace_schema_metadata(encode_metadata(log))

    atomic_write(path, lambda f: pq.write_table(table, f))
