"""Reading a v1 log: metadata and column types are checked before any row is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_ttt.recordlog.checks import (
    COL_DEVICE_ID,
    COL_LABEL,
    COL_T_NS,
    CONVERT_FIX,
    KEY_CHANNELS,
    contract_error,
    sort_and_check_rows,
)
from edge_ttt.recordlog.metadata import parse_metadata
from edge_ttt.recordlog.recorded import RecordedLog


def _is_string_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _type_ok(name: str, found: pa.DataType) -> bool:
    if name == COL_DEVICE_ID:
        return _is_string_type(found)
    if name == COL_T_NS:
        return found == pa.int64()
    if name == COL_LABEL:
        return found == pa.int32()
    return found == pa.float32()


def _check_column_types(path: Path, schema: pa.Schema, channels: tuple[str, ...]) -> bool:
    """Check required columns exist with the right types; return whether a label column exists."""
    expected: list[tuple[str, str, bool]] = [
        (COL_DEVICE_ID, "string (large_string and dictionary<string> also accepted)", True),
        (COL_T_NS, "int64", True),
        *((name, "float32", True) for name in channels),
        (COL_LABEL, "int32", False),
    ]
    has_label = False
    for name, type_text, required in expected:
        indices = schema.get_all_field_indices(name)
        if len(indices) > 1:
            raise contract_error(
                path, f"column '{name}' appears {len(indices)} times", "keep exactly one column per name"
            )
        if not indices:
            if not required:
                continue
            if name in channels:
                raise contract_error(
                    path,
                    f"channel '{name}' listed in metadata key '{KEY_CHANNELS}' has no column",
                    f"add a float32 column '{name}' or remove it from '{KEY_CHANNELS}'",
                )
            raise contract_error(
                path, f"required column '{name}' is missing", f"add a {type_text} column '{name}'"
            )
        found = schema.field(indices[0]).type
        if not _type_ok(name, found):
            raise contract_error(
                path,
                f"column '{name}' has type {found}, expected {type_text}",
                f"cast column '{name}' to {type_text}",
            )
        has_label = has_label or name == COL_LABEL
    return has_label


def read_log(path: str | os.PathLike[str]) -> RecordedLog:
    """Read and validate a v1 log; rows come back stably sorted by (device_id, t_ns)."""
    path = Path(path)
    if not path.is_file():
        raise contract_error(path, "log file does not exist (or is not a regular file)", "check the path")
    try:
        with pq.ParquetFile(path) as pf:
            schema = pf.schema_arrow
            channels, rate, class_names = parse_metadata(path, schema.metadata)
            has_label = _check_column_types(path, schema, channels)
            columns = [COL_DEVICE_ID, COL_T_NS, *channels, *([COL_LABEL] if has_label else [])]
            table = pf.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise contract_error(
            path, f"not a readable Parquet file ({str(exc).splitlines()[0]})", CONVERT_FIX
        ) from exc

    for name in (COL_DEVICE_ID, COL_T_NS):
        nulls = table.column(name).null_count
        if nulls:
            raise contract_error(
                path, f"column '{name}' has {nulls} null value(s)", f"every row needs a '{name}'"
            )
    device_id = table.column(COL_DEVICE_ID).cast(pa.string()).to_numpy()
    t_ns = table.column(COL_T_NS).to_numpy()
    # Nulls in channel columns read as NaN: a missing reading, handled like a sensor NaN downstream.
    values = np.empty((table.num_rows, len(channels)), dtype=np.float32)
    for j, name in enumerate(channels):
        values[:, j] = table.column(name).to_numpy()
    # A null label means "unknown", the same as -1.
    label = table.column(COL_LABEL).fill_null(-1).to_numpy().astype(np.int32) if has_label else None

    order = sort_and_check_rows(path, device_id, t_ns, label, class_names)
    return RecordedLog(
        device_id=device_id[order],
        t_ns=t_ns[order],
        values=values[order],
        label=None if label is None else label[order],
        channels=channels,
        sample_rate_hz=rate,
        class_names=class_names,
    )
