"""Log format v1: round trip, canonical row order, and what the writer refuses."""

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
    LOG_FORMAT_VERSION,
    LogFormatError,
    RecordedLog,
    read_log,
    write_log,
)
from tests.recordlog_factory import CHANNELS, good_meta, good_table, make_log, write_raw


def test_version_constant() -> None:
    assert LOG_FORMAT_VERSION == 1


def test_hand_written_table_is_valid(tmp_path: Path) -> None:
    log = read_log(write_raw(tmp_path / "ok.parquet", good_table(), good_meta()))
    assert log.devices() == ["a", "b"]
    assert log.class_names == ("walk", "run")


@pytest.mark.parametrize("with_label", [True, False])
def test_round_trip(tmp_path: Path, with_label: bool) -> None:
    log = make_log(with_label)
    path = tmp_path / "log.parquet"
    write_log(path, log)
    back = read_log(path)

    order = np.lexsort((log.t_ns, log.device_id.astype(str)))
    assert back.device_id.tolist() == log.device_id[order].tolist()
    np.testing.assert_array_equal(back.t_ns, log.t_ns[order])
    np.testing.assert_array_equal(back.values, log.values[order])  # NaN == NaN here
    assert back.values.dtype == np.float32 and back.t_ns.dtype == np.int64
    if with_label:
        np.testing.assert_array_equal(back.label, log.label[order])
        assert back.label.dtype == np.int32
    else:
        assert back.label is None
    assert back.channels == CHANNELS
    assert back.sample_rate_hz == 50.0
    assert back.period_ns == 20_000_000
    assert back.class_names == ("walk", "run", "sit")
    # Metadata as the contract spells it.
    meta = pq.read_schema(path).metadata
    assert meta[KEY_LOG_FORMAT.encode()] == b"1"
    assert json.loads(meta[KEY_CHANNELS.encode()]) == list(CHANNELS)
    assert meta[KEY_SAMPLE_RATE_HZ.encode()] == b"50.0"


def test_nan_and_inf_survive(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    write_log(path, make_log())
    back = read_log(path)
    assert np.isnan(back.values).sum() == 1
    assert np.isinf(back.values).sum() == 1


def test_rows_sorted_on_read(tmp_path: Path) -> None:
    table = good_table().take([2, 1, 0])  # b@1, a@2, a@1
    log = read_log(write_raw(tmp_path / "shuffled.parquet", table, good_meta()))
    assert log.device_id.tolist() == ["a", "a", "b"]
    assert log.t_ns.tolist() == [1, 2, 1]
    assert log.values[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert log.label.tolist() == [0, 1, -1]


def test_extra_columns_ignored_and_string_variants_accepted(tmp_path: Path) -> None:
    table = good_table()
    table = table.set_column(0, "device_id", table.column("device_id").cast(pa.large_string()))
    table = table.append_column("note", pa.array(["x", "y", "z"]))
    log = read_log(write_raw(tmp_path / "large.parquet", table, good_meta()))
    assert log.devices() == ["a", "b"]

    table = table.set_column(0, "device_id", pa.array(["a", "a", "b"]).dictionary_encode())
    log = read_log(write_raw(tmp_path / "dict.parquet", table, good_meta()))
    assert log.device_id.tolist() == ["a", "a", "b"]


def test_write_extra_columns_follow_sorted_rows(tmp_path: Path) -> None:
    log = make_log()
    path = tmp_path / "log.parquet"
    write_log(path, log, extra_columns={"row": np.arange(len(log), dtype=np.int32)})
    table = pq.read_table(path)
    back = read_log(path)
    rows = table.column("row").to_numpy()
    np.testing.assert_array_equal(log.t_ns[rows], back.t_ns)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    path.write_bytes(b"old")
    write_log(path, make_log())
    assert [p.name for p in tmp_path.iterdir()] == ["log.parquet"]
    with pytest.raises(LogFormatError):
        write_log(path, make_log_with(t_ns=np.array([20, 30, 10, 30, 20])))
    assert read_log(path).devices() == ["a", "b"]  # untouched by the refused write
    assert [p.name for p in tmp_path.iterdir()] == ["log.parquet"]


def test_select_and_devices() -> None:
    log = make_log()
    sub = log.select(log.device_id == "a")
    assert sub.devices() == ["a"]
    assert len(sub.t_ns) == 3
    assert sub.channels == log.channels and sub.class_names == log.class_names
    with pytest.raises(ValueError):
        log.select(np.array([0, 1]))


# ---- write errors: we never write what we would refuse to read ------------------------------


def make_log_with(**changes: object) -> RecordedLog:
    base = make_log()
    fields = {
        "device_id": base.device_id,
        "t_ns": base.t_ns,
        "values": base.values,
        "label": base.label,
        "channels": base.channels,
        "sample_rate_hz": base.sample_rate_hz,
        "class_names": base.class_names,
    }
    return RecordedLog(**(fields | changes))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"t_ns": np.array([20, 30, 10, 30, 20])}, "t_ns"),
        ({"label": np.array([0, 1, -1, 3, 0], dtype=np.int32)}, "label"),
        ({"label": np.array([0, 1, -5, 2, 0], dtype=np.int32)}, "label"),
        ({"sample_rate_hz": 0.0}, KEY_SAMPLE_RATE_HZ),
        ({"sample_rate_hz": float("nan")}, KEY_SAMPLE_RATE_HZ),
        ({"channels": ("ax", "ax")}, KEY_CHANNELS),
        ({"channels": ("ax", "t_ns")}, KEY_CHANNELS),
        ({"class_names": ()}, KEY_CLASS_NAMES),
        ({"device_id": np.array(["a", None, "b", "a", "a"], dtype=object)}, "device_id"),
        ({"device_id": np.array(["a", 3, "b", "a", "a"], dtype=object)}, "device_id"),
    ],
)
def test_write_refuses_invalid_log(tmp_path: Path, changes: dict, needle: str) -> None:
    path = tmp_path / "log.parquet"
    with pytest.raises(LogFormatError) as info:
        write_log(path, make_log_with(**changes))
    assert str(path) in str(info.value) and needle in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channels": ("ax", "ax")}, f"'{KEY_CHANNELS}' repeats channel(s) ['ax']. Fix: give each channel"),
        ({"class_names": ("x", "x", "y")}, f"'{KEY_CLASS_NAMES}' repeats class(es) ['x']. Fix: make class"),
    ],
)
def test_repeated_names_are_named(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(LogFormatError) as info:
        write_log(tmp_path / "log.parquet", make_log_with(**changes))
    assert message in str(info.value)


def test_write_refuses_clashing_extra_column(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="'ax'"):
        write_log(tmp_path / "log.parquet", make_log(), extra_columns={"ax": np.zeros(5)})
    with pytest.raises(LogFormatError, match="'row'"):
        write_log(tmp_path / "log.parquet", make_log(), extra_columns={"row": np.zeros(4)})


def test_recorded_log_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        make_log_with(values=np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        make_log_with(t_ns=np.zeros(5, dtype=np.float64))
    with pytest.raises(ValueError):
        make_log_with(label=np.zeros(4, dtype=np.int32))


def test_empty_log_round_trips(tmp_path: Path) -> None:
    log = make_log().select(np.zeros(5, dtype=bool))
    path = tmp_path / "empty.parquet"
    write_log(path, log)
    back = read_log(path)
    assert len(back) == 0 and back.values.shape == (0, 2) and back.devices() == []


def test_written_log_gets_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from tests.conftest import synthetic_log

    path = tmp_path / "perm.parquet"
    umask = os.umask(0o022)
    try:
        write_log(path, synthetic_log(devices=1, seconds=2))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
