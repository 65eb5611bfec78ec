"""The fleet dataset: summary rows as Parquet, Hive-partitioned by the UTC date of the interval
end (`date=YYYY-MM-DD/part-<uuid>.parquet`), on a local disk or any filesystem pyarrow opens.

Rows are the drift summary schema (edge_ttt/drift/schema.py) plus `device_id`, a copy of
`device` under the name fleet tools expect, and `received`, when the collector took the summary
(null in rows stored before it was kept: an agent's clock can be years off, the collector's is
the fleet's); `date` lives in the directory names only.

Files that cannot be read or are not the dataset's are left out of every read with a warning
(`edge_ttt.monitor.files`).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from edge_ttt import dirlock
from edge_ttt.atomic import atomic_write
from edge_ttt.dirlock import DirLock
from edge_ttt.drift.schema import TIMES, SchemaError, conform, readable_times
from edge_ttt.drift.validation import Invalid, first_line
from edge_ttt.monitor.files import (
    FILE_SCHEMA,
    RECEIVED,
    check_text,
    complete_rows,
    dataset_of,
    lacking,
    left_out,
    open_fs,
    read_file,
    stray_files,
    tolerant,
)

log = logging.getLogger(__name__)
NEWER = (
    "file not compacted: %s holds columns this version does not know (%s). "
    "Fix: compact with the newer edge-ttt that wrote it"
)


def hold(location: str, owner: str, shared: bool) -> DirLock | None:
    """A local dataset for this collector process (`dirlock.DirInUse` if another one writes into
    it): two collectors that do not split one subscription (`shared`) would each store every
    summary. None for object storage, which has no lock."""
    fs, root = open_fs(location)
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    key = "collector.dataset, or collector.share_group on both to share the load"
    return dirlock.hold(Path(root), owner, key, shared)


def rows(table: pa.Table) -> pa.Table:
    """Accepted summaries in the dataset's columns; `received` kept where the table has it. A row
    with a null in a required column is `Invalid` (it was written under `date=None/`, or failed the
    write and with it the whole batch, on every restart of the collector)."""
    received = (
        table.column(RECEIVED.name).cast(RECEIVED.type)
        if RECEIVED.name in table.column_names
        else pa.nulls(table.num_rows, RECEIVED.type)
    )
    table = conform(table)
    if complete_rows(table) is not None:
        raise Invalid(f"summaries without {', '.join(lacking(table))}: not stored")
    return table.append_column(FILE_SCHEMA.field("device_id"), table.column("device")).append_column(
        RECEIVED, received
    )


ROW_GROUP_ROWS = 16_384  # compacted files: row groups of devices in order, which a device filter skips


def write_file(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Atomic on a local disk (temporary file and rename); object stores publish a PUT whole."""

    def write(f) -> None:
        pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)

    if isinstance(fs, pafs.LocalFileSystem):
        atomic_write(path, write)
        return
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        write(f)


def append(location: str, table: pa.Table) -> list[str]:
    """One new file per date partition the batch touches; the paths written."""
    fs, root = open_fs(location)
    table = rows(table)
    dates = pc.strftime(table.column("interval_end"), format="%Y-%m-%d")
    written = []
    for date in sorted(set(dates.to_pylist())):
        part = table.filter(pc.equal(dates, date))
        path = f"{root}/date={date}/part-{uuid.uuid4().hex}.parquet"
        write_file(fs, path, part)
        written.append(path)
    return written


def open_dataset(location: str) -> ds.Dataset:
    """The whole dataset; files being written (hidden `.` temporaries) are not part of it."""
    fs, root = open_fs(location)
    return dataset_of(root, fs, root)


def exists(location: str) -> bool:
    fs, root = open_fs(location)
    return fs.get_file_info(root).type == pafs.FileType.Directory


def summary_ids(location: str) -> set[str]:
    """Ids already stored, reading that one column only: a restarted collector skips them."""
    if not exists(location):
        return set()
    table = tolerant(location, lambda data: check_text(data.to_table(columns=["summary_id"])))
    return set(pc.drop_null(table.column("summary_id")).to_pylist())


def reference_bins(location: str) -> dict[str, list[int]]:
    """Per model (`model_sha256`), the bins per channel of the reference its summaries were scored
    against, from one summary each: the reference is fixed at export, and reading `ref_share` for
    every row is most of the time a fleet report takes."""

    def bins(data: ds.Dataset) -> dict[str, list[int]]:
        models: set[str] = set()  # batch by batch: the column whole is 46 MB at 720,000 rows, read 0.4 GB
        for batch in data.to_batches(columns=["model_sha256"], batch_readahead=2, fragment_readahead=1):
            models.update(pc.drop_null(pc.unique(check_text(batch).column(0))).to_pylist())  # null: stray
        out = {}
        for model in sorted(models):
            first = data.head(
                1,
                columns=["ref_share"],
                filter=pc.field("model_sha256") == model,
                batch_readahead=1,
                fragment_readahead=1,
            )
            out[model] = [len(share) for share in first.column("ref_share")[0].as_py() or []]
        return out

    return tolerant(location, bins)


def once(table: pa.Table) -> pa.Table:
    """The first row of each `summary_id`; the table itself when no id repeats (the usual case: one
    count of distinct ids).

    >>> once(pa.table({"summary_id": ["a", "a", "b", "c", "b"], "x": [1, 2, 3, 4, 5]})).to_pydict()
    {'summary_id': ['a', 'b', 'c'], 'x': [1, 3, 4]}
    """
    ids = table.column("summary_id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    first = (
        pa.table({"summary_id": ids, "row": pa.array(range(table.num_rows), pa.int64())})
        .group_by("summary_id", use_threads=False)
        .aggregate([("row", "min")])
        .column("row_min")
        .to_numpy()
    )
    return table.take(np.sort(first))  # in the order they were stored


def _read_once(data: ds.Dataset, columns: list[str] | None, where: pc.Expression | None = None) -> pa.Table:
    """`columns` (all when None) of the rows `where` selects, each summary once; rows without a
    required column (`_placed`) or whose times no reader can take are left out, with a warning."""
    extra = columns is not None and "summary_id" not in columns
    wanted = [*columns, "summary_id"] if extra else columns
    # one file and two batches ahead: a filtered read of a sixth of 720,000 rows peaked at 1.0 GB
    # with pyarrow's default readahead, 0.46 GB with this, in no more time
    read = data.to_table(columns=wanted, filter=where, batch_readahead=2, fragment_readahead=1)
    table = once(_placed(data, check_text(read)))
    ok = readable_times(table, (*TIMES, RECEIVED.name))
    if ok is not None:
        bad = table.filter(pc.invert(ok))
        log.warning(
            "%d summaries dated outside the years 1 to 9999 left out (devices: %s)",
            bad.num_rows,
            ", ".join(sorted(set(bad.column("device_id").to_pylist()))[:5])
            if "device_id" in bad.column_names
            else "?",
        )
        table = table.filter(ok)
    return table.drop_columns(["summary_id"]) if extra else table


def _placed(data: ds.Dataset, table: pa.Table) -> pa.Table:
    """The rows with every required column they were read with. The others are left out with a
    warning: a stray Parquet file's (read as rows of nulls under the dataset's schema: they made
    the report and the alerts fail), each such file named, or rows no collector stores any more."""
    ok = complete_rows(table)
    if ok is None:
        return table
    left_out(stray_files(data), "the dataset")
    kept = table.filter(ok)
    named = ", ".join(lacking(table))
    log.warning("%d rows without %s left out of the fleet dataset", table.num_rows - kept.num_rows, named)
    return kept


def read(location: str, columns: list[str] | None = None) -> pa.Table:
    return tolerant(location, lambda data: _read_once(data, columns))


def recent(since: float) -> pc.Expression:
    """Rows the collector received at or after `since` (Unix seconds); rows stored before it
    stamped them, by their interval end. Not by the interval end alone: a device whose clock is off
    would fall out of every window, or never leave it."""
    at = pa.scalar(round(since * 1e6), pa.int64()).cast(RECEIVED.type)
    received, end = pc.field(RECEIVED.name), pc.field("interval_end")
    return (received >= at) | (received.is_null() & (end >= at))


def read_since(location: str, columns: list[str], since: float) -> pa.Table:
    """`columns` of the rows `recent(since)` selects, and the newest row of each device it finds
    none for: a device that went silent before `since` must stay in the report, silent."""

    def read(data: ds.Dataset) -> pa.Table:
        table = _read_once(data, columns, recent(since))
        devices = pc.drop_null(pc.unique(data.to_table(columns=["device_id"]).column("device_id")))
        gone = pc.filter(devices, pc.invert(pc.is_in(devices, table.column("device_id").unique())))
        if not len(gone):
            return table
        keys = ["device_id", "interval_end", "summary_id"]
        last = (
            _read_once(data, keys, pc.field("device_id").isin(gone))
            .sort_by([("device_id", "ascending"), ("interval_end", "descending")])
            .group_by("device_id", use_threads=False)
            .aggregate([("summary_id", "first")])
            .column("summary_id_first")
        )
        return pa.concat_tables([table, _read_once(data, columns, pc.field("summary_id").isin(last))])

    return tolerant(location, read)


def read_devices(location: str, devices: list[str], columns: list[str]) -> pa.Table:
    """The rows of these devices only (the report's few plotted devices: their histograms)."""
    where = pc.field("device_id").isin(devices)
    return tolerant(location, lambda data: _read_once(data, columns, where))


def compact(location: str) -> dict[str, int]:
    """Per partition with several files: write one file with all their rows, then remove them. The
    rows go in device order, in row groups whose statistics let a filter on devices skip the rest
    (the report reads the histograms of its plotted devices: 0.3 s instead of 6 s for 500 devices).

    The new file is complete before any old one goes, so a crash in between leaves duplicates
    (rows in both), never a loss; the next run merges them again and writes each summary once.
    A file with columns this version does not know (a newer collector's) is left as it is: this
    version reads without them, and merging would have dropped them for good. Returns files merged
    per partition.
    """
    fs, root = open_fs(location)
    done = {}
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("date="):
            continue
        files = sorted(
            f.path
            for f in fs.get_file_info(pafs.FileSelector(info.path))
            if f.type == pafs.FileType.File
            and f.base_name.endswith(".parquet")
            and not f.base_name.startswith(".")
        )
        if len(files) < 2:
            continue
        tables, merged = [], []
        for p in files:
            try:
                newer = [n for n in pq.read_schema(p, filesystem=fs).names if n not in FILE_SCHEMA.names]
                if newer:  # merged here they would be dropped, and the file deleted: lost for good
                    log.warning(NEWER, p, ", ".join(newer))
                    continue
                tables.append(read_file(fs, p))
                merged.append(p)
            except (
                pa.ArrowException,
                OSError,
                SchemaError,
            ) as exc:  # left where it is: not merged, not deleted
                log.warning("unreadable file not compacted: %s (%s)", p, first_line(exc))
        if len(merged) < 2:
            continue
        table = once(pa.concat_tables(tables))
        table = table.sort_by([("device_id", "ascending"), ("interval_end", "ascending")])
        write_file(fs, f"{info.path}/part-{uuid.uuid4().hex}.parquet", table)
        for p in merged:
            fs.delete_file(p)
        done[info.base_name] = len(merged)
    return done
