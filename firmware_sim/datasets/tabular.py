"""A table of someone else's column names (a phone or watch export, a lab capture) as a recorded log.

Pure: an Arrow table in, a `RecordedLog` and its `Timing` out, no file touched (the importer reads
and writes). Every refusal names the column and the option that fixes it, in the log format's
`<where>: <what>. Fix: <how>.` form, because the person reading it has only the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge_ttt.recordlog import LogFormatError, RecordedLog
from edge_ttt.recordlog.checks import RESERVED_COLUMNS, contract_error
from edge_ttt.stream.topics import level_problem
from firmware_sim.datasets.timing import Timing, measure, steps_within_devices

TIME_UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}  # nanoseconds per unit
ISO = "iso"


@dataclass(frozen=True)
class ImportSpec:
    """Which columns are what. `channels` pairs (column, channel name); None takes every numeric
    column left over. Exactly one of `device_column` (a column of ids) and `device` (one id for
    every row) is set. `classes` fixes the label names' order (a model's class order)."""

    time: str
    time_unit: str | None = None  # s, ms, us, ns or iso; None: iso for timestamps and text
    channels: tuple[tuple[str, str], ...] | None = None
    device_column: str | None = None
    device: str | None = None
    label: str | None = None
    classes: tuple[str, ...] | None = None
    rate_hz: float | None = None


def parse_channels(text: str) -> tuple[tuple[str, str], ...]:
    """`--channels` as (column, channel) pairs: "acc_x=ax,acc_y=ay" renames, "ax,ay" keeps.

    >>> parse_channels("acc_x=ax, gz")
    (('acc_x', 'ax'), ('gz', 'gz'))
    """
    pairs = []
    for item in text.split(","):
        column, _, name = item.strip().partition("=")
        pairs.append((column.strip(), name.strip() or column.strip()))
    return tuple(pairs)


def decimal_commas(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Text numbers written with a decimal comma ("0,12", as a spreadsheet in such a locale saves a
    ';'-separated CSV) as float64; None when the column is not text or is not all such numbers."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return None
    try:
        return pc.replace_substring(column, ",", ".", max_replacements=1).cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


class _Table:
    """The table and where it came from, for messages that name both."""

    def __init__(self, table: pa.Table, where: str) -> None:
        self.table, self.where = table, where
        names = table.column_names
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise self.refuse(
                f"the header names column(s) {', '.join(map(repr, twice))} more than once",
                "give every column its own name in the file's header",
            )

    def refuse(self, what: str, fix: str) -> LogFormatError:
        return contract_error(self.where, what, fix)

    def column(self, name: str, option: str) -> pa.ChunkedArray:
        if name not in self.table.column_names:
            raise self.refuse(
                f"column '{name}' (given as {option}) is not in the table; its columns: "
                f"{', '.join(self.table.column_names)}",
                f"pass one of those to {option} (names are case-sensitive)",
            )
        return self.table.column(name)

    def no_nulls(self, name: str, column: pa.ChunkedArray, fix: str) -> None:
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]) + 1
            raise self.refuse(
                f"column '{name}' has {column.null_count} empty value(s), the first in row {row}", fix
            )


def _times(src: _Table, spec: ImportSpec) -> np.ndarray:
    """Sample times in ns since the Unix epoch; timestamps without a zone are taken as UTC."""
    option = "--time"
    column = src.column(spec.time, option)
    src.no_nulls(spec.time, column, "drop the rows without a time, or fill them in")
    if spec.time_unit in TIME_UNITS and (numbers := decimal_commas(column)) is not None:
        column = numbers
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if spec.time_unit not in (None, ISO):
            raise src.refuse(
                f"column '{spec.time}' holds timestamps or text, not numbers in {spec.time_unit}",
                f"use --time-unit {ISO} (or leave it out) for ISO 8601 times",
            )
        if not pa.types.is_timestamp(kind):
            column = _parse_iso(src, spec.time, column)
        return column.cast(pa.timestamp("ns", tz=column.type.tz)).cast(pa.int64()).to_numpy()
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise src.refuse(
            f"column '{spec.time}' has type {kind}, not a time", "pass the time column to --time"
        )
    if spec.time_unit not in TIME_UNITS:
        raise src.refuse(
            f"column '{spec.time}' holds numbers, and their unit is "
            + ("not given" if spec.time_unit is None else f"'{spec.time_unit}', not a number's unit"),
            f"say it with --time-unit {', '.join(TIME_UNITS)} (since the epoch or since the start)",
        )
    values = column.to_numpy().astype(np.float64 if pa.types.is_floating(kind) else np.int64)
    scale = TIME_UNITS[spec.time_unit]
    if not np.isfinite(values).all() or float(np.abs(values).max(initial=0)) * scale >= 2**63:
        raise src.refuse(
            f"column '{spec.time}' holds values that are not finite or not times in {spec.time_unit}",
            "check --time-unit and drop rows with NaN or infinite times",
        )
    if values.dtype == np.int64:
        return values * scale
    return np.round(values * scale).astype(np.int64)


ZONED, UNZONED = pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")


def _parses(column: pa.Array, kind: pa.DataType) -> bool:
    try:
        column.cast(kind)
    except pa.ArrowInvalid:
        return False
    return True


def _parse_iso(src: _Table, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO 8601 text, with a zone offset ('Z', '+01:00') on every row or on none (then UTC)."""
    for kind in (ZONED, UNZONED):
        if _parses(column, kind):
            return column.cast(kind)
    # The first row unlike the first one: bisect on prefixes (pyarrow names some bad value, not
    # the first), so that the message points at a row a person can find.
    rows = column.combine_chunks()
    kind = ZONED if _parses(rows[:1], ZONED) else UNZONED
    good, bad = 0, len(rows)  # rows[:good] parse, rows[:bad] do not
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if _parses(rows[:middle], kind) else (good, middle)
    raise src.refuse(
        f"column '{name}' holds {rows[bad - 1].as_py()!r} in row {bad}, which is not an ISO 8601 time"
        + (" like the rows before it" if bad > 1 else ""),
        "write times like 2024-01-01T12:00:00.020Z, all with a zone offset or all without one (UTC)",
    )


class Imported(NamedTuple):
    """A table as a log: the log, its timing, and, when the channels were not named, the columns
    left out of them for holding something else than numbers (a stray text cell in a sensor
    column does that)."""

    log: RecordedLog
    timing: Timing
    left_out: tuple[str, ...]


def _channels(src: _Table, spec: ImportSpec) -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]:
    used = {spec.time, spec.device_column, spec.label}
    pairs, left_out = spec.channels, ()
    if pairs is None:
        kinds = dict(zip(src.table.column_names, src.table.schema.types, strict=True))
        numeric = {n for n, k in kinds.items() if pa.types.is_integer(k) or pa.types.is_floating(k)}
        numeric |= {n for n in kinds if n not in used and decimal_commas(src.table.column(n)) is not None}
        pairs = tuple((name, name) for name in kinds if name in numeric and name not in used)
        left_out = tuple(n for n in kinds if n not in used and n not in numeric)
        if not pairs:
            raise src.refuse("no numeric column is left for channels", "name them with --channels")
    names = tuple(name for _, name in pairs)
    for column, name in pairs:
        if name in RESERVED_COLUMNS:
            raise src.refuse(
                f"channel name '{name}' (column '{column}') is reserved in the log format",
                f"rename the channel: --channels {column}=<new name>",
            )
        if column in used:
            raise src.refuse(
                f"column '{column}' is both a channel and --time, --device-column or --label", "use it once"
            )
        if names.count(name) > 1:
            raise src.refuse(
                f"channel name '{name}' is given more than once", "give every channel its own name"
            )
    values = np.empty((src.table.num_rows, len(pairs)), dtype=np.float32)
    for j, (column, _) in enumerate(pairs):
        data = src.column(column, "--channels")
        if not (
            pa.types.is_integer(data.type) or pa.types.is_floating(data.type) or pa.types.is_null(data.type)
        ):
            try:
                data = data.cast(pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                if (numbers := decimal_commas(data)) is not None:
                    values[:, j] = numbers.fill_null(np.nan).to_numpy()
                    continue
                raise src.refuse(
                    f"column '{column}' (a channel) holds {data.type} values that are not numbers ({exc})",
                    "leave it out of --channels, or clean the values (empty cells read as NaN)",
                ) from None
        values[:, j] = data.cast(pa.float64()).fill_null(np.nan).to_numpy()
    return names, values, left_out


def _devices(src: _Table, spec: ImportSpec) -> np.ndarray:
    if (spec.device_column is None) == (spec.device is None):
        raise src.refuse("the device is not said", "pass --device-column COLUMN or --device NAME, not both")
    if spec.device is not None:
        if why := level_problem(spec.device):
            raise src.refuse(
                f"--device {spec.device!r} cannot be a level of the devices' MQTT topics ({why})",
                "name the device without '/', '+' or '#', or leave --device out (the file's name)",
            )
        return np.full(src.table.num_rows, spec.device, dtype=object)
    column = src.column(spec.device_column, "--device-column")
    src.no_nulls(
        spec.device_column, column, "give every row a device, or import one device with --device NAME"
    )
    ids = column.cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
    if (ids == "").any():
        raise src.refuse(f"column '{spec.device_column}' has an empty device id", "give every row a device")
    for device in np.unique(ids):  # replay and the agent put the id in a topic: refused there, later
        if why := level_problem(device):
            raise src.refuse(
                f"column '{spec.device_column}' holds device id {device!r}, which cannot be a level of the "
                f"devices' MQTT topics ({why})",
                "rename it in the file, without '/', '+' or '#'",
            )
    return ids


def _labels(src: _Table, spec: ImportSpec) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Class indices (-1 unknown) and the names they index: text labels are mapped to indices in
    the order of --classes, or sorted when it is not given."""
    if spec.label is None:
        if spec.classes is not None:
            raise src.refuse("--classes is given without --label", "name the label column with --label")
        return None, None
    if spec.classes is not None:
        twice = sorted({c for c in spec.classes if spec.classes.count(c) > 1})
        if twice or "" in spec.classes:
            what = f"lists class(es) {twice} twice" if twice else "holds an empty class name"
            raise src.refuse(f"--classes {what}", "list each class once, in the model's order")
    name = spec.label
    column = src.column(name, "--label")
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = column.fill_null("").to_numpy(zero_copy_only=False).astype(object)
        found = sorted(set(text.tolist()) - {""})
        classes = spec.classes if spec.classes is not None else tuple(found)
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise src.refuse(
                f"column '{name}' holds class(es) {unknown} that --classes does not list",
                f"add them to --classes (now {', '.join(classes)}), or leave --classes out",
            )
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index.get(t, -1) for t in text], dtype=np.int32), classes
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        raise src.refuse(
            f"column '{name}' holds text that is not UTF-8 (class names)",
            'save the file as UTF-8 (a spreadsheet\'s "CSV UTF-8"; or iconv -f latin1 -t utf-8)',
        )
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise src.refuse(
            f"column '{name}' has type {kind}, not class names or indices", "pass the label column to --label"
        )
    numbers = column.cast(pa.float64()).fill_null(-1).to_numpy()
    if not (np.isfinite(numbers) & (numbers == np.round(numbers)) & (numbers >= -1)).all():
        raise src.refuse(
            f"column '{name}' holds numbers that are not class indices (whole numbers >= -1)",
            "use 0, 1, ... for classes and -1 or an empty cell for unknown",
        )
    labels = numbers.astype(np.int32)
    if spec.classes is not None and labels.max(initial=-1) >= len(spec.classes):
        raise src.refuse(
            f"column '{name}' holds index {labels.max()}, but --classes lists {len(spec.classes)} names",
            "list a name for every index in --classes",
        )
    return labels, spec.classes


def table_to_log(table: pa.Table, spec: ImportSpec, where: str) -> Imported:
    """The log of `table` under `spec`, the timing of its samples and the columns left out;
    `where` names the source in messages. Rows are sorted by (device, time); two samples of a
    device at one time are refused."""
    src = _Table(table, where)
    if not table.num_rows:
        raise src.refuse("the table has no rows", "import a file with samples")
    t_ns = _times(src, spec)
    device_id = _devices(src, spec)
    channels, values, left_out = _channels(src, spec)
    label, classes = _labels(src, spec)
    uniques, codes = np.unique(device_id, return_inverse=True)
    order = np.lexsort((t_ns, codes))
    steps = steps_within_devices(t_ns[order], codes[order])
    if (steps <= 0).any():
        later = codes[order][1:]  # the second sample of each step
        device = uniques[later[later == codes[order][:-1]][np.argmax(steps <= 0)]]
        repeats = int((steps <= 0).sum())
        raise src.refuse(
            f"column '{spec.time}' repeats a time for device '{device}' ({repeats} time(s) in all)",
            "drop duplicate rows; if the times are rounded, check --time-unit, or split the devices "
            "with --device-column",
        )
    if spec.rate_hz is not None and not (np.isfinite(spec.rate_hz) and spec.rate_hz > 0):
        raise src.refuse(
            f"--rate is {spec.rate_hz}, not a positive number of Hz", "pass the sample rate in Hz"
        )
    timing = measure(steps, spec.rate_hz)
    if timing is None:
        raise src.refuse(
            "every device has a single sample, so there is no period to infer the sample rate from",
            "pass --rate HZ",
        )
    log = RecordedLog(
        device_id=device_id[order],
        t_ns=t_ns[order],
        values=values[order],
        label=None if label is None else label[order],
        channels=channels,
        sample_rate_hz=timing.rate_hz,
        class_names=classes,
    )
    return Imported(log, timing, left_out)
