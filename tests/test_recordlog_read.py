"""Log format v1 on read: one clear error per broken invariant, naming the file and how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_ttt.recordlog import (
    KEY_CHANNELS,
    KEY_CLASS_NAMES,
    KEY_LOG_FORMAT,
    KEY_SAMPLE_RATE_HZ,
    LogFormatError,
    read_log,
)
from tests.recordlog_factory import good_meta, good_table, write_raw

# ---- read errors: each names the file and the offending key/column --------------------------


def assert_read_error(path: Path, *needles: str) -> None:
    with pytest.raises(LogFormatError) as info:
        read_log(path)
    message = str(info.value)
    assert str(path) in message
    assert "Fix:" in message
    for needle in needles:
        assert needle in message, message


def test_missing_file(tmp_path: Path) -> None:
    assert_read_error(tmp_path / "nope.parquet", "does not exist")


def test_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    path.write_text("device_id,t_ns\n")
    assert_read_error(path, "Parquet")


IMPORT_COMMAND = (
    "Fix: pass a recorded log; convert a CSV or Parquet recording of your own with `edge-ttt datasets import"
)


def test_a_csv_or_a_foreign_parquet_file_is_told_to_import_it(tmp_path: Path) -> None:
    """A command-line user gets the command that converts the file, not a Python function's name."""
    csv = tmp_path / "phone.csv"
    csv.write_text("time,ax\n0,1.0\n")
    foreign = tmp_path / "phone.parquet"
    pq.write_table(pa.table({"time": [0], "ax": [1.0]}), foreign)
    for path in (csv, foreign):
        with pytest.raises(LogFormatError) as info:
            read_log(path)
        assert IMPORT_COMMAND in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("key", [KEY_LOG_FORMAT, KEY_CHANNELS, KEY_SAMPLE_RATE_HZ])
def test_missing_metadata_key(tmp_path: Path, key: str) -> None:
    meta = good_meta()
    del meta[key]
    assert_read_error(write_raw(tmp_path / "log.parquet", good_table(), meta), key, "missing")


def test_no_metadata_at_all(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(good_table(), path)
    assert_read_error(path, KEY_LOG_FORMAT)


def test_unsupported_version(tmp_path: Path) -> None:
    meta = good_meta() | {KEY_LOG_FORMAT: "2"}
    assert_read_error(
        write_raw(tmp_path / "log.parquet", good_table(), meta), KEY_LOG_FORMAT, "'2'", "supports"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (KEY_CHANNELS, "[ax, ay"),
        (KEY_CHANNELS, '{"ax": 1}'),
        (KEY_CHANNELS, "[]"),
        (KEY_CHANNELS, '["ax", "ax"]'),
        (KEY_CHANNELS, '["ax", "label"]'),
        (KEY_CLASS_NAMES, "walk,run"),
        (KEY_SAMPLE_RATE_HZ, "fifty"),
        (KEY_SAMPLE_RATE_HZ, "0"),
        (KEY_SAMPLE_RATE_HZ, "-50"),
        (KEY_SAMPLE_RATE_HZ, "nan"),
        (KEY_SAMPLE_RATE_HZ, "inf"),
    ],
)
def test_malformed_metadata(tmp_path: Path, key: str, value: str) -> None:
    table = good_table().append_column("label2", pa.array([0, 0, 0]))  # harmless extra column
    meta = good_meta() | {key: value}
    assert_read_error(write_raw(tmp_path / "log.parquet", table, meta), key)


def test_channel_without_column(tmp_path: Path) -> None:
    meta = good_meta() | {KEY_CHANNELS: json.dumps(["ax", "ay", "az"])}
    assert_read_error(write_raw(tmp_path / "log.parquet", good_table(), meta), "'az'", "has no column")


@pytest.mark.parametrize("column", ["device_id", "t_ns"])
def test_missing_required_column(tmp_path: Path, column: str) -> None:
    table = good_table().drop_columns([column])
    assert_read_error(write_raw(tmp_path / "log.parquet", table, good_meta()), f"'{column}'", "missing")


@pytest.mark.parametrize(
    ("column", "bad_type", "expected"),
    [
        ("device_id", pa.int64(), "string"),
        ("t_ns", pa.int32(), "int64"),
        ("t_ns", pa.timestamp("ns"), "int64"),
        ("ax", pa.float64(), "float32"),
        ("label", pa.int64(), "int32"),
    ],
)
def test_wrong_column_type(tmp_path: Path, column: str, bad_type: pa.DataType, expected: str) -> None:
    table = good_table()
    i = table.schema.get_field_index(column)
    if column == "device_id":
        replacement = pa.array([1, 1, 2], bad_type)
    else:
        replacement = pa.array([1, 2, 1], pa.int64()).cast(bad_type)
    table = table.set_column(i, column, replacement)
    path = write_raw(tmp_path / "log.parquet", table, good_meta())
    assert_read_error(path, f"'{column}'", f"expected {expected}", f"type {bad_type}")


def test_duplicate_column_name(tmp_path: Path) -> None:
    table = good_table().append_column("ax", pa.array([0.0, 0.0, 0.0], pa.float32()))
    assert_read_error(write_raw(tmp_path / "log.parquet", table, good_meta()), "'ax'", "2 times")


@pytest.mark.parametrize("column", ["device_id", "t_ns"])
def test_nulls_in_required_column(tmp_path: Path, column: str) -> None:
    table = good_table()
    i = table.schema.get_field_index(column)
    values = table.column(column).to_pylist()
    values[1] = None
    table = table.set_column(i, column, pa.array(values, table.schema.field(column).type))
    assert_read_error(write_raw(tmp_path / "log.parquet", table, good_meta()), f"'{column}'", "null")


@pytest.mark.parametrize("bad_label", [-2, 2])
def test_label_out_of_range(tmp_path: Path, bad_label: int) -> None:
    table = good_table()
    table = table.set_column(4, "label", pa.array([0, bad_label, 1], pa.int32()))
    assert_read_error(write_raw(tmp_path / "log.parquet", table, good_meta()), "'label'", str(bad_label))


def test_label_without_class_names_only_checks_lower_bound(tmp_path: Path) -> None:
    meta = good_meta()
    del meta[KEY_CLASS_NAMES]
    table = good_table().set_column(4, "label", pa.array([0, 99, -1], pa.int32()))
    assert read_log(write_raw(tmp_path / "log.parquet", table, meta)).label.max() == 99


def test_duplicate_time_within_device(tmp_path: Path) -> None:
    table = good_table().set_column(1, "t_ns", pa.array([5, 5, 5], pa.int64()))  # b@5 is fine
    assert_read_error(write_raw(tmp_path / "log.parquet", table, good_meta()), "'t_ns'", "5", "'a'")


def test_null_channel_and_label_read_as_nan_and_unknown(tmp_path: Path) -> None:
    table = good_table()
    table = table.set_column(2, "ax", pa.array([None, 1.0, 2.0], pa.float32()))
    table = table.set_column(4, "label", pa.array([None, 1, 0], pa.int32()))
    log = read_log(write_raw(tmp_path / "log.parquet", table, good_meta()))
    assert np.isnan(log.values[0, 0])
    assert log.label.tolist() == [-1, 1, 0]
