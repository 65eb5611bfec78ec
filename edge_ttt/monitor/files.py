"""The files of the fleet dataset: its schema and layout, and which files are its own.

A file that cannot be read (truncated or corrupted on its disk) or that is not the dataset's (a
stray Parquet file someone put there: it read as rows of nulls under the dataset's schema; one
whose required columns have other types, or whose text is not UTF-8: it crashed the commands) must
not hide the rest of the fleet: every read tries the whole dataset first (no extra cost), and only
when that fails, or finds rows without the required columns, looks for such files, names each in
a warning and reads the others. A dataset of nothing but such files is still an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from edge_ttt.drift.schema import REQUIRED, SCHEMA, SchemaError
from edge_ttt.drift.validation import first_line, null_required

log = logging.getLogger(__name__)
T = TypeVar("T")
_named: set[str] = set()  # files left out already warned of by this process: once each

RECEIVED = pa.field("received", pa.timestamp("us", tz="UTC"))
FILE_SCHEMA = SCHEMA.append(pa.field("device_id", pa.string(), nullable=False)).append(RECEIVED)
PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
REQUIRED_COLUMNS = (*(f.name for f in REQUIRED), "device_id")  # a row without one cannot be placed
TEMPORARY = ".part-*.parquet.*.tmp"  # `atomic_write`'s temporary files of this module's files


def open_fs(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path inside it) of a local path or a URI such as s3://bucket/fleet."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def lacking(table: pa.Table) -> list[str]:
    """The dataset's required columns (of those `table` has) with a null somewhere."""
    return null_required(table, REQUIRED_COLUMNS)


def complete_rows(table: pa.Table) -> pa.Array | None:
    """Per row, whether it has every required column it was read with; None when all rows do."""
    names = lacking(table)
    if not names:
        return None
    ok = pc.is_valid(table.column(names[0]))
    for name in names[1:]:
        ok = pc.and_(ok, pc.is_valid(table.column(name)))
    return ok


def dataset_of(source: str | list[str], fs: pafs.FileSystem, root: str) -> ds.Dataset:
    """The dataset of `source`: the root directory, or a list of its files."""
    return ds.dataset(
        source,
        schema=FILE_SCHEMA.append(pa.field("date", pa.string())),
        filesystem=fs,
        format="parquet",
        partitioning=PARTITIONING,
        partition_base_dir=root,
    )


def read_file(fs: pafs.FileSystem, path: str) -> pa.Table:
    """One file of the dataset in its schema; `SchemaError` for a file without the required
    columns or with other types in them (a stray Parquet file would read as rows of nulls),
    `pa.ArrowInvalid` for text that is not UTF-8 (`check_text`)."""
    check_columns(pq.read_schema(path, filesystem=fs))
    return check_text(pq.read_table(path, filesystem=fs, schema=FILE_SCHEMA))


def check_columns(schema: pa.Schema) -> None:
    """`SchemaError` unless the file has the required columns, each of the type the collector
    writes: a device id written as binary (or as a number) is another program's file."""
    missing = [n for n in REQUIRED_COLUMNS if n not in schema.names]
    if missing:
        raise SchemaError(f"not a file of the fleet dataset: no {', '.join(missing)}")
    wrong = [
        f"{name} is {schema.field(name).type}, not {FILE_SCHEMA.field(name).type}"
        for name in REQUIRED_COLUMNS
        if not schema.field(name).type.equals(FILE_SCHEMA.field(name).type)
    ]
    if wrong:
        raise SchemaError(f"not a file of the fleet dataset: {', '.join(wrong)}")


def _text(kind: pa.DataType) -> bool:
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _text(kind.value_type)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


Rows = TypeVar("Rows", pa.Table, pa.RecordBatch)


def check_text(rows: Rows) -> Rows:
    """`rows`, or `pa.ArrowInvalid` where a text column holds bytes that are not UTF-8 (a file
    written by another program): pyarrow reads them unchecked, and they crashed the commands
    later, wherever a Python string was made of them."""
    for field, column in zip(rows.schema, rows.columns, strict=True):
        if _text(field.type):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid as exc:
                why = f"{field.name} holds text that is not UTF-8 ({first_line(exc)})"
                raise pa.ArrowInvalid(why) from None
    return rows


def unreadable(fs: pafs.FileSystem, files: list[str]) -> dict[str, str]:
    """The files that do not read as summary rows, each with why (its error's first line)."""
    bad = {}
    for path in files:
        try:
            read_file(fs, path)
        except (pa.ArrowException, OSError, SchemaError) as exc:
            bad[path] = first_line(exc)
    return bad


def stray_files(data: ds.Dataset) -> dict[str, str]:
    """The files of `data` without the required columns, each with why: footers only, read when
    a read found rows without them."""
    bad = {}
    for fragment in data.get_fragments():
        try:
            check_columns(fragment.physical_schema)
        except SchemaError as exc:
            bad[fragment.path] = str(exc)
        except (pa.ArrowException, OSError):
            continue  # unreadable: `tolerant` names those
    return bad


def foreign(location: str) -> str | None:
    """Why `location` is not a fleet dataset: it holds files and none is the dataset's (the first
    one's path and why); None when one is, or when it holds none yet. Reads footers, and only up
    to the first file of the dataset's."""
    fs, root = open_fs(location)
    why = None
    for fragment in dataset_of(root, fs, root).get_fragments():
        try:
            check_columns(fragment.physical_schema)
            return None
        except (pa.ArrowException, OSError, SchemaError) as exc:
            why = why or f"{fragment.path}: {first_line(exc)}"
    return why


def left_out(bad: dict[str, str], location: str) -> None:
    """A warning per file left out of the reads, once per process."""
    for path, why in bad.items():
        if path in _named:
            continue
        _named.add(path)
        log.warning(
            "unreadable file left out of the fleet dataset: %s (%s). Fix: move it out of %s",
            path,
            why,
            location,
            extra={"fields": {"file": path, "error": why}},
        )


def tolerant(
    location: str,
    read: Callable[[ds.Dataset], T],
    errors: tuple[type[BaseException], ...] = (pa.ArrowException, OSError),
) -> T:
    """`read(dataset)`; when it fails with one of `errors` because some files cannot be read,
    `read` of the others, each left-out file named in a warning (once per process). Anything else
    is raised."""
    fs, root = open_fs(location)
    data = dataset_of(root, fs, root)
    try:
        return read(data)
    except errors:
        bad = unreadable(fs, data.files)
        if not bad or len(bad) == len(data.files):
            raise
    left_out(bad, location)
    return read(dataset_of([f for f in data.files if f not in bad], fs, root))


def remove_temporaries(location: str, older_than_s: float = 0.0) -> list[str]:
    """Delete the temporary files (`TEMPORARY`) that a writer killed mid-write left in a local
    dataset: never read, they stayed forever. Only those not modified for `older_than_s` (a
    collector sharing the directory may be writing one now). Returns the paths removed."""
    fs, root = open_fs(location)
    if not isinstance(fs, pafs.LocalFileSystem):
        return []  # object stores publish a PUT whole: no temporaries
    removed = []
    for path in Path(root).glob(f"date=*/{TEMPORARY}"):
        try:
            if time.time() - path.stat().st_mtime >= older_than_s:
                path.unlink()
                removed.append(str(path))
        except FileNotFoundError:  # its writer finished or removed it meanwhile
            continue
    if removed:
        log.warning("removed %d temporary files of interrupted writes from %s", len(removed), location)
    return removed
