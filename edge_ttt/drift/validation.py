"""What a received summary file may hold, checked before the collector keeps it.

A payload that passes the SHA-256 is still whatever its sender made: a null in a required column
crashed the collector's writer on every restart (the broker delivers the poison again), a 38 KB
zstd file decoded to 400 MB, and negative counts or an infinite PSI printed nonsense in every
report. Each check names what is wrong, so the receiver refuses the summary (`corrupt`, or
`too_large` for the size limits) with a reason. Limits and rules: docs/drift-summaries.md.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edge_ttt.drift.schema import REQUIRED

MAX_ROWS = 1  # a shipped file is one summary
MAX_DECODED_BYTES = 4 * 2**20  # a summary decodes to kB (6 channels: 5 KB; 1,000 of 64 bins: 1.5 MB)
MAX_STRING_BYTES = 1024  # any one string (ids, names, channel and class names, `mounting`)

# float columns where NaN means "not measured" (docs/drift-summaries.md: "NaN without finite data")
NAN_ALLOWED = ("psi", "psi_limit", "mean_shift", "channel_var")
# float columns left as the agent measured them: ±inf while a channel is empty (min, max); the
# adaptation level of an adapted state that diverged (NaN) is worth seeing as it is
UNCHECKED = (
    "channel_min",
    "channel_max",
    "norm_mean_shift",
    "norm_log_var_ratio",
    "param_change",
    "param_change_rel",
)
SHARES = ("estimated_accuracy", "source_estimated_accuracy", "ref_accuracy", "noise_share", "ref_stay")  # 0-1
# divergences and their limits, expected counts: the report divides by them
NON_NEGATIVE = ("psi", "psi_limit", "stays_expected", "source_stays_expected")


class Invalid(ValueError):
    """A summary holding what no summary can: a null where a value is required, a negative count,
    a non-finite or out-of-range number."""


class TooLarge(Invalid):
    """A file that decodes to more than a summary can be (a decompression bomb, a huge string)."""


def check_footprint(data: bytes) -> None:
    """Raise `TooLarge` when the Parquet footer declares more rows or decoded bytes than a summary
    has, before anything is decompressed; `pa.ArrowException` when it is not Parquet."""
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    if meta.num_rows > MAX_ROWS or meta.num_row_groups > MAX_ROWS:
        raise TooLarge(f"{meta.num_rows} rows in {meta.num_row_groups} row groups (a summary is one)")
    declared = sum(
        meta.row_group(g).column(c).total_uncompressed_size
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
    )
    if declared > MAX_DECODED_BYTES:
        raise TooLarge(f"decodes to {declared} bytes (limit {MAX_DECODED_BYTES})")


def first_line(exc: BaseException) -> str:
    """An error's first line, for a one-line message about one payload or file."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _leaves(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The values of a column, lists flattened to their elements (nulls kept out of the way)."""
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_list(values.type):
        values = pc.list_flatten(values)
    return values


def null_required(table: pa.Table, names: tuple[str, ...] = tuple(f.name for f in REQUIRED)) -> list[str]:
    """The required columns (`names`, of those it has) with a null in some row: no reader can
    place such a row (no date, no model, no device)."""
    return [n for n in names if n in table.column_names and table.column(n).null_count]


def _check_numbers(name: str, values: pa.Array) -> str | None:
    """Why the numbers of column `name` cannot be (see the module's rules); None when they can."""
    if pa.types.is_integer(values.type):
        low = pc.min(values).as_py()
        return f"{name} is negative ({low})" if low is not None and low < 0 else None
    if not pa.types.is_floating(values.type) or name in UNCHECKED:
        return None
    finite = pc.is_finite(values)
    allowed = pc.or_(finite, pc.is_nan(values)) if name in NAN_ALLOWED else finite
    if not pc.all(allowed, min_count=0).as_py():
        return f"{name} holds a non-finite value"
    extremes = pc.min_max(pc.filter(values, finite))
    low, high = extremes["min"].as_py(), extremes["max"].as_py()
    if name in SHARES and low is not None and (low < 0.0 or high > 1.0):
        return f"{name} is outside 0 to 1 ({low} to {high})"
    if name in NON_NEGATIVE and low is not None and low < 0:
        return f"{name} is negative ({low})"
    return None


def check_table(table: pa.Table) -> None:
    """Raise `TooLarge` or `Invalid` (with what is wrong) unless this conformed summary table can
    be stored as it is."""
    if table.nbytes > MAX_DECODED_BYTES:  # a footer that understated its sizes
        raise TooLarge(f"decodes to {table.nbytes} bytes (limit {MAX_DECODED_BYTES})")
    missing = null_required(table)
    if missing:
        raise Invalid(f"null {', '.join(missing)}")
    for name in table.column_names:
        values = _leaves(table.column(name))
        if pa.types.is_string(values.type):
            longest = pc.max(pc.binary_length(values)).as_py()
            if longest is not None and longest > MAX_STRING_BYTES:
                raise TooLarge(f"{name} holds a string of {longest} bytes (limit {MAX_STRING_BYTES})")
        elif (why := _check_numbers(name, values)) is not None:
            raise Invalid(why)
