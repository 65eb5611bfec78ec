"""Smartwatch converter: split by subject, traceable rows, and recordings kept apart by the windower."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from edge_ttt.recordlog import read_log
from edge_ttt.stream.window import windows_from_log
from firmware_sim.datasets.watch import (
    SOURCE_SUBJECTS,
    TARGET_SUBJECTS,
    convert_watch,
    load_watch_raw,
    watch_logs,
)

if importlib.util.find_spec("seglearn") is None:
    pytest.skip("seglearn (which ships the smartwatch data) is not installed", allow_module_level=True)


TOTAL_SAMPLES = 244102
DEVICE_RE = re.compile(r"^watch-s(\d\d)-(left|right)$")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return convert_watch(tmp_path_factory.mktemp("watch"))


def test_writes_two_logs(converted: dict[str, Path]) -> None:
    assert set(converted) == {"source", "target"}
    assert converted["source"].name == "watch_source.parquet"
    assert converted["target"].name == "watch_target.parquet"
    assert all(p.is_file() for p in converted.values())


def test_splits_by_subject_and_keeps_every_sample(converted: dict[str, Path]) -> None:
    total = 0
    for split, subjects in (("source", SOURCE_SUBJECTS), ("target", TARGET_SUBJECTS)):
        log = read_log(converted[split])
        table = pq.read_table(converted[split], columns=["subject"])
        assert sorted(set(table.column("subject").to_pylist())) == list(subjects)
        assert log.channels == ("ax", "ay", "az", "wx", "wy", "wz")
        assert log.class_names == ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
        assert log.sample_rate_hz == 50.0 and log.period_ns == 20_000_000
        assert len(log.devices()) == 2 * len(subjects)
        assert log.label.min() >= 0
        total += len(log)
    assert total == TOTAL_SAMPLES


def test_device_ids_decode_to_subject_and_side(converted: dict[str, Path]) -> None:
    raw = load_watch_raw()
    for path in converted.values():
        table = pq.read_table(path, columns=["device_id", "subject", "recording"])
        device = table.column("device_id").to_numpy()
        subject = table.column("subject").to_numpy()
        recording = table.column("recording").to_numpy()
        for dev in np.unique(device):
            match = DEVICE_RE.match(dev)
            assert match, dev
            rows = device == dev
            assert np.all(subject[rows] == int(match.group(1)))
            side = {"left": 0, "right": 1}[match.group(2)]  # seglearn: 1 = right, 0 = left
            assert np.all(np.asarray(raw["side"])[recording[rows]] == side)
            assert np.all(np.asarray(raw["subject"])[recording[rows]] == int(match.group(1)))


def test_values_and_labels_trace_back_to_the_dataset(converted: dict[str, Path]) -> None:
    raw = load_watch_raw()
    path = converted["source"]
    log = read_log(path)
    recording = pq.read_table(path, columns=["recording"]).column("recording").to_numpy()
    for rec in np.unique(recording)[:5]:
        rows = recording == rec
        np.testing.assert_array_equal(log.values[rows], np.asarray(raw["X"][rec], dtype=np.float32))
        assert np.all(log.label[rows] == raw["y"][rec])
        assert np.all(np.diff(log.t_ns[rows]) == 20_000_000)


def test_every_device_starts_at_the_epoch(converted: dict[str, Path]) -> None:
    log = read_log(converted["target"])
    for dev in log.devices():
        assert log.t_ns[log.device_id == dev].min() == 1_704_067_200_000_000_000


def test_no_window_spans_two_recordings(converted: dict[str, Path]) -> None:
    length, hop = 128, 64
    for path in converted.values():
        log = read_log(path)  # sorted by (device_id, t_ns), same as the file
        table = pq.read_table(path, columns=["device_id", "t_ns", "recording"])
        assert table.column("device_id").to_numpy().tolist() == log.device_id.tolist()
        assert table.column("t_ns").to_numpy().tolist() == log.t_ns.tolist()
        recording = table.column("recording").to_numpy()

        batch, devices = windows_from_log(log, length, hop)
        assert len(batch) > 0
        for dev in log.devices():
            rows = np.flatnonzero(log.device_id == dev)
            mine = devices == dev
            end = rows[np.searchsorted(log.t_ns[rows], batch.t_end_ns[mine])]
            start = end - (length - 1)
            assert np.all(recording[start] == recording[end])
            assert np.all(log.t_ns[end] - log.t_ns[start] == (length - 1) * log.period_ns)
            np.testing.assert_array_equal(batch.x[mine][:, :, 0], log.values[start])

        # Each recording contributes exactly its closed-form number of windows.
        n = np.bincount(recording)[np.unique(recording)]
        assert len(batch) == int(np.sum(np.where(n >= length, (n - length) // hop + 1, 0)))


def test_watch_logs_match_the_files(converted: dict[str, Path]) -> None:
    logs = watch_logs()
    for split, path in converted.items():
        on_disk = read_log(path)
        np.testing.assert_array_equal(logs[split].t_ns, on_disk.t_ns)
        np.testing.assert_array_equal(logs[split].values, on_disk.values)
        assert logs[split].device_id.tolist() == on_disk.device_id.tolist()


def test_conversion_is_deterministic(converted: dict[str, Path], tmp_path: Path) -> None:
    again = convert_watch(tmp_path)
    for split, path in converted.items():
        assert pq.read_table(again[split]).equals(pq.read_table(path))
        assert pq.read_schema(again[split]).metadata == pq.read_schema(path).metadata


def test_missing_seglearn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'edge-ttt\[export\]'"):
        load_watch_raw()
