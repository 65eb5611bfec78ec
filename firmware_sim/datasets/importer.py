"""`datasets import`'s file side: read a CSV or Parquet file, write the recorded log.

The mapping of columns lives in `tabular` (no files there); this module only opens and writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from edge_ttt.recordlog import LogFormatError, write_log
from edge_ttt.recordlog.checks import contract_error
from firmware_sim.datasets.tabular import Imported, ImportSpec, table_to_log

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": ","}
PARQUET_SUFFIXES = (".parquet", ".pq")
NEWLINE = b"\n"


def first_non_utf8(path: Path, chunk: int = 1 << 20) -> str | None:
    """Where a file first holds bytes that are not UTF-8 ("line 3, byte 0xe9"); None if it holds
    none. Read in chunks: a large file is not held twice."""
    line, pending = 1, b""
    with path.open("rb") as f:
        while block := f.read(chunk):
            data, pending = pending + block, b""
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data" or exc.end < len(data):
                    return f"line {line + data.count(NEWLINE, 0, exc.start)}, byte 0x{data[exc.start]:02x}"
                data, pending = data[: exc.start], data[exc.start :]  # a character the chunk splits
            line += data.count(NEWLINE)
    return f"line {line}, at its end" if pending else None


def not_utf8(path: Path, where: str) -> LogFormatError:
    return contract_error(
        path,
        f"the file is not UTF-8 text ({where})",
        f'save it as UTF-8 (a spreadsheet\'s "CSV UTF-8"; or iconv -f latin1 -t utf-8 {path.name} > '
        f"{path.stem}-utf8{path.suffix})",
    )


def delimiter(path: Path, default: str) -> str:
    """The separator of a CSV file's header line: of ',', ';' and tab, the one it holds most
    (spreadsheets set to a locale with decimal commas write ';'); `default` when it holds none.
    A header that is not UTF-8 is refused: Arrow reads it unchecked and fails on its names later."""
    with path.open("rb") as f:
        raw = f.readline(65536)
    try:
        header = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path, first_non_utf8(path) or "line 1") from None
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else default


def read_table(path: Path, text_columns: tuple[str, ...] = ()) -> pa.Table:
    """The file as an Arrow table, by its suffix. A CSV's `text_columns` are read as text, so that
    a device id such as 007 keeps its zeros; other types are inferred (ISO times become timestamps)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise contract_error(path, "file does not exist (or is not a regular file)", "check the path")
    try:
        if suffix in PARQUET_SUFFIXES:
            return pq.read_table(path)
        if suffix in CSV_SUFFIXES:
            parse = pacsv.ParseOptions(delimiter=delimiter(path, CSV_SUFFIXES[suffix]))
            convert = pacsv.ConvertOptions(column_types=dict.fromkeys(text_columns, pa.string()))
            return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, OSError) as exc:
        if suffix in CSV_SUFFIXES and "UTF8" in str(exc) and (where := first_non_utf8(path)):
            raise not_utf8(path, where) from exc
        kind = "Parquet" if suffix in PARQUET_SUFFIXES else "CSV"
        raise contract_error(
            path, f"not a readable {kind} file ({str(exc).splitlines()[0]})", "check the file and its suffix"
        ) from exc
    raise contract_error(
        path,
        f"unknown suffix '{path.suffix}'",
        f"name CSV files {', '.join(CSV_SUFFIXES)} and Parquet files {', '.join(PARQUET_SUFFIXES)}",
    )


def check_out(source: Path, out: Path) -> None:
    """Refuse an `out` that would replace the input (the same file, also through a link) or that
    is not named as the Parquet file it becomes, before anything is read or written."""
    if out.exists() and source.exists() and os.path.samefile(source, out):
        raise contract_error(
            out,
            f"--out is the input file {source} itself, which the log would replace",
            f"name a new file for the log, e.g. --out {source.with_name(source.stem + '-log.parquet')}",
        )
    if out.is_dir() or out.suffix.lower() not in PARQUET_SUFFIXES:
        what = (
            "is a directory"
            if out.is_dir()
            else f"names a '{out.suffix}' file"
            if out.suffix
            else "has no suffix"
        )
        name = out / f"{source.stem}.parquet" if out.is_dir() else out.with_suffix(".parquet").name
        raise contract_error(
            out,
            f"--out {what}, but a recorded log is a Parquet file",
            f"name it {name} ({', '.join(PARQUET_SUFFIXES)})",
        )


def import_file(source: Path, out: Path, spec: ImportSpec) -> Imported:
    """Write `source` as the recorded log `out`; the log written, its timing, the columns left out."""
    source, out = Path(source), Path(out)
    check_out(source, out)
    text = (spec.device_column,) if spec.device_column is not None else ()
    imported = table_to_log(read_table(source, text), spec, str(source))
    write_log(out, imported.log)
    return imported
