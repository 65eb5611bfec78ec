"""Recorded sensor log format v1: one Parquet file, one row per sample.

The written contract lives in docs/log-format.md. Reader and writer share one set of
checks so that we never write a file we would refuse to read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_ttt.atomic import atomic_write

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

LOG_FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (LOG_FORMAT_VERSION,)

KEY_LOG_FORMAT = "edge_ttt.log_format"
KEY_CHANNELS = "edge_ttt.channels"
KEY_SAMPLE_RATE_HZ = "edge_ttt.sample_rate_hz"
KEY_CLASS_NAMES = "edge_ttt.class_names"

COL_DEVICE_ID = "device_id"
COL_T_NS = "t_ns"
COL_LABEL = "label"
RESERVED_COLUMNS = (COL_DEVICE_ID, COL_T_NS, COL_LABEL)


class LogFormatError(ValueError):
    """A log file (or a log about to be written) breaks the v1 contract.

    The message always names the file and the offending key or column and says how to fix it,
    because these errors surface on a field engineer's console, far from the code.
    """


def _fail(where: str | os.PathLike[str], what: str, fix: str) -> LogFormatError:
    return LogFormatError(f"{where}: {what}. Fix: {fix}.")


@dataclass(frozen=True, eq=False)
class RecordedLog:
    """All samples of one log file, sorted by (device_id, t_ns).

    `eq=False` because element-wise array comparison has no single truth value; compare fields.
    """

    device_id: np.ndarray
    t_ns: np.ndarray
    values: np.ndarray
    label: np.ndarray | None
    channels: tuple[str, ...]
    sample_rate_hz: float
    class_names: tuple[str, ...] | None

    def __post_init__(self) -> None:
        # Normalise dtypes once here so every consumer can rely on them; refuse lossy casts.
        t_ns = np.asarray(self.t_ns)
        values = np.asarray(self.values)
        if t_ns.ndim != 1 or not np.issubdtype(t_ns.dtype, np.integer):
            raise ValueError(f"t_ns must be a 1-D integer array, got {t_ns.dtype} with shape {t_ns.shape}")
        n = t_ns.shape[0]
        channels = tuple(str(c) for c in self.channels)
        if values.shape != (n, len(channels)) or not np.issubdtype(values.dtype, np.floating):
            raise ValueError(
                f"values must be a float array of shape ({n}, {len(channels)}), "
                f"got {values.dtype} with shape {values.shape}"
            )
        device_id = np.asarray(self.device_id, dtype=object)
        if device_id.shape != (n,):
            raise ValueError(f"device_id must have shape ({n},), got {device_id.shape}")
        label = self.label
        if label is not None:
            label = np.asarray(label)
            if label.shape != (n,) or not np.issubdtype(label.dtype, np.integer):
                raise ValueError(
                    f"label must be a 1-D integer array of shape ({n},), got {label.dtype} {label.shape}"
                )
            label = label.astype(np.int32, copy=False)
        class_names = None if self.class_names is None else tuple(str(c) for c in self.class_names)
        object.__setattr__(self, "device_id", device_id)
        object.__setattr__(self, "t_ns", t_ns.astype(np.int64, copy=False))
        object.__setattr__(self, "values", values.astype(np.float32, copy=False))
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "sample_rate_hz", float(self.sample_rate_hz))
        object.__setattr__(self, "class_names", class_names)

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])

    @property
    def period_ns(self) -> int:
        """Nominal sample period; windowing measures gaps in these units."""
        return round(1e9 / self.sample_rate_hz)

    def devices(self) -> list[str]:
        """Sorted unique device ids."""
        return sorted(set(self.device_id.tolist()))

    def select(self, mask: np.ndarray) -> RecordedLog:
        """Row subset (boolean mask over rows) with the same metadata."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != self.t_ns.shape:
            raise ValueError(
                f"mask must be a boolean array of shape {self.t_ns.shape}, got {mask.dtype} {mask.shape}"
            )
        return RecordedLog(
            device_id=self.device_id[mask],
            t_ns=self.t_ns[mask],
            values=self.values[mask],
            label=None if self.label is None else self.label[mask],
            channels=self.channels,
            sample_rate_hz=self.sample_rate_hz,
            class_names=self.class_names,
        )


# ---------------------------------------------------------------------------------------------
# Checks shared by reader and writer


def _check_metadata(
    where: str | os.PathLike[str],
    channels: tuple[str, ...],
    sample_rate_hz: float,
    class_names: tuple[str, ...] | None,
) -> None:
    if not channels:
        raise _fail(
            where, f"metadata key '{KEY_CHANNELS}' lists no channels", "list at least one channel name"
        )
    for name in channels:
        if not name:
            raise _fail(
                where, f"metadata key '{KEY_CHANNELS}' contains an empty channel name", "name every channel"
            )
        if name in RESERVED_COLUMNS:
            raise _fail(
                where,
                f"metadata key '{KEY_CHANNELS}' uses the reserved column name '{name}' as a channel",
                f"rename the channel; {', '.join(RESERVED_COLUMNS)} are reserved",
            )
    duplicates = sorted({c for c in channels if channels.count(c) > 1})
    if duplicates:
        raise _fail(
            where,
            f"metadata key '{KEY_CHANNELS}' repeats channel(s) {duplicates}",
            "give each channel a unique name",
        )
    if not (math.isfinite(sample_rate_hz) and sample_rate_hz > 0):
        raise _fail(
            where,
            f"metadata key '{KEY_SAMPLE_RATE_HZ}' is {sample_rate_hz!r}, not a positive finite number",
            'store the nominal rate in Hz as a decimal string, e.g. "50.0"',
        )
    if class_names is not None:
        if not class_names:
            raise _fail(
                where,
                f"metadata key '{KEY_CLASS_NAMES}' is an empty list",
                "omit the key when there are no classes",
            )
        duplicates = sorted({c for c in class_names if class_names.count(c) > 1})
        if duplicates:
            raise _fail(
                where,
                f"metadata key '{KEY_CLASS_NAMES}' repeats class(es) {duplicates}",
                "make class names unique",
            )


def _sort_and_check_rows(
    where: str | os.PathLike[str],
    device_id: np.ndarray,
    t_ns: np.ndarray,
    label: np.ndarray | None,
    class_names: tuple[str, ...] | None,
) -> np.ndarray:
    """Validate row invariants and return the stable (device_id, t_ns) sort order."""
    if label is not None and label.size:
        low, high = int(label.min()), int(label.max())
        if low < -1:
            raise _fail(
                where,
                f"column '{COL_LABEL}' has value {low} < -1",
                "use -1 for unknown labels and 0.. for classes",
            )
        if class_names is not None and high >= len(class_names):
            raise _fail(
                where,
                f"column '{COL_LABEL}' has value {high} but metadata key '{KEY_CLASS_NAMES}' "
                f"lists only {len(class_names)} classes",
                f"extend '{KEY_CLASS_NAMES}' or fix the labels (valid: -1..{len(class_names) - 1})",
            )
    if not t_ns.size:
        return np.zeros(0, dtype=np.intp)
    try:
        # np.unique sorts by Python string order, so codes order like the ids themselves.
        uniques, codes = np.unique(device_id, return_inverse=True)
    except TypeError as exc:
        raise _fail(
            where, f"column '{COL_DEVICE_ID}' holds non-string values ({exc})", "store ids as strings"
        ) from exc
    if not all(isinstance(u, str) for u in uniques):
        bad = next(u for u in uniques if not isinstance(u, str))
        raise _fail(
            where, f"column '{COL_DEVICE_ID}' holds a non-string value {bad!r}", "store ids as strings"
        )
    order = np.lexsort((t_ns, codes))
    sorted_codes, sorted_t = codes[order], t_ns[order]
    clash = (sorted_codes[1:] == sorted_codes[:-1]) & (sorted_t[1:] <= sorted_t[:-1])
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise _fail(
            where,
            f"column '{COL_T_NS}' repeats time {int(sorted_t[i])} for device '{uniques[sorted_codes[i]]}' "
            f"({int(clash.sum())} duplicate row(s) in total)",
            "each device may have at most one sample per timestamp; drop or re-time duplicates",
        )
    return order


# ---------------------------------------------------------------------------------------------
# Reading


def _parse_metadata(
    path: Path, metadata: Mapping[bytes, bytes] | None
) -> tuple[tuple[str, ...], float, tuple[str, ...] | None]:
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (metadata or {}).items()}

    def required(key: str, fix: str) -> str:
        if key not in meta:
            raise _fail(path, f"metadata key '{key}' is missing", fix)
        return meta[key]

    version = required(
        KEY_LOG_FORMAT, f"add '{KEY_LOG_FORMAT}' = \"{LOG_FORMAT_VERSION}\" (write files with write_log)"
    )
    if version.strip() not in {str(v) for v in SUPPORTED_VERSIONS}:
        raise _fail(
            path,
            f"metadata key '{KEY_LOG_FORMAT}' is {version!r}, an unsupported log format version",
            f"this reader supports version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}; convert the file or "
            "upgrade edge-ttt",
        )

    def json_strings(key: str, raw: str) -> tuple[str, ...]:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _fail(
                path,
                f"metadata key '{key}' is not valid JSON ({exc})",
                'store a JSON list, e.g. ["ax", "ay"]',
            ) from exc
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise _fail(
                path,
                f"metadata key '{key}' is {raw!r}, not a JSON list of strings",
                "store a list of strings",
            )
        return tuple(parsed)

    channels = json_strings(KEY_CHANNELS, required(KEY_CHANNELS, "add the JSON list of channel column names"))
    raw_rate = required(KEY_SAMPLE_RATE_HZ, 'add the nominal sample rate as a decimal string, e.g. "50.0"')
    try:
        rate = float(raw_rate)
    except ValueError:
        raise _fail(
            path,
            f"metadata key '{KEY_SAMPLE_RATE_HZ}' is {raw_rate!r}, not a number",
            'use a decimal string, e.g. "50.0"',
        ) from None
    class_names = json_strings(KEY_CLASS_NAMES, meta[KEY_CLASS_NAMES]) if KEY_CLASS_NAMES in meta else None
    _check_metadata(path, channels, rate, class_names)
    return channels, rate, class_names


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
            raise _fail(
                path, f"column '{name}' appears {len(indices)} times", "keep exactly one column per name"
            )
        if not indices:
            if not required:
                continue
            if name in channels:
                raise _fail(
                    path,
                    f"channel '{name}' listed in metadata key '{KEY_CHANNELS}' has no column",
                    f"add a float32 column '{name}' or remove it from '{KEY_CHANNELS}'",
                )
            raise _fail(path, f"required column '{name}' is missing", f"add a {type_text} column '{name}'")
        found = schema.field(indices[0]).type
        if not _type_ok(name, found):
            raise _fail(
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
        raise _fail(path, "log file does not exist (or is not a regular file)", "check the path")
    try:
        with pq.ParquetFile(path) as pf:
            schema = pf.schema_arrow
            channels, rate, class_names = _parse_metadata(path, schema.metadata)
            has_label = _check_column_types(path, schema, channels)
            columns = [COL_DEVICE_ID, COL_T_NS, *channels, *([COL_LABEL] if has_label else [])]
            table = pf.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise _fail(
            path, f"not a readable Parquet file ({exc})", "pass a Parquet file written by write_log"
        ) from exc

    for name in (COL_DEVICE_ID, COL_T_NS):
        nulls = table.column(name).null_count
        if nulls:
            raise _fail(path, f"column '{name}' has {nulls} null value(s)", f"every row needs a '{name}'")
    device_id = table.column(COL_DEVICE_ID).cast(pa.string()).to_numpy()
    t_ns = table.column(COL_T_NS).to_numpy()
    # Nulls in channel columns read as NaN: a missing reading, handled like a sensor NaN downstream.
    values = np.empty((table.num_rows, len(channels)), dtype=np.float32)
    for j, name in enumerate(channels):
        values[:, j] = table.column(name).to_numpy()
    # A null label means "unknown", the same as -1.
    label = table.column(COL_LABEL).fill_null(-1).to_numpy().astype(np.int32) if has_label else None

    order = _sort_and_check_rows(path, device_id, t_ns, label, class_names)
    return RecordedLog(
        device_id=device_id[order],
        t_ns=t_ns[order],
        values=values[order],
        label=None if label is None else label[order],
        channels=channels,
        sample_rate_hz=rate,
        class_names=class_names,
    )


# ---------------------------------------------------------------------------------------------
# Writing


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
    _check_metadata(path, log.channels, log.sample_rate_hz, log.class_names)
    order = _sort_and_check_rows(path, log.device_id, log.t_ns, log.label, log.class_names)

    # _sort_and_check_rows has already refused non-string (and None) ids.
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
            raise _fail(
                path, f"extra column '{name}' clashes with a format column", "rename the extra column"
            )
        data = np.asarray(data)
        if data.shape != (len(log),):
            raise _fail(
                path,
                f"extra column '{name}' has shape {data.shape}, expected ({len(log)},)",
                "pass one value per row",
            )
        columns[name] = pa.array(data[order])

    metadata = {
        KEY_LOG_FORMAT: str(LOG_FORMAT_VERSION),
        KEY_CHANNELS: json.dumps(list(log.channels)),
        KEY_SAMPLE_RATE_HZ: repr(log.sample_rate_hz),
    }
    if log.class_names is not None:
        metadata[KEY_CLASS_NAMES] = json.dumps(list(log.class_names))
    table = pa.table(columns).replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})

    atomic_write(path, lambda f: pq.write_table(table, f))
