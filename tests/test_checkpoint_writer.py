"""The checkpoint writer: states written off the worker, one pending snapshot per file, bounded,
a returning stream goes on from a snapshot not written yet, a stop bounded in time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_ttt.adapt.snapshot import load_state
from edge_ttt.agent import background, checkpoints
from edge_ttt.agent.checkpoints import CheckpointWriter
from tests.conftest import wait_for


def snap(value: float) -> checkpoints.Snapshot:
    return {"w": np.full(3, value)}, {"policy": "p"}


@pytest.fixture
def gate(monkeypatch) -> threading.Event:
    """Writes wait until the gate opens (a slow disk)."""
    opened = threading.Event()
    original = checkpoints.save_state

    def slow(path, arrays, meta):
        opened.wait(20)
        original(path, arrays, meta)

    monkeypatch.setattr(checkpoints, "save_state", slow)
    return opened


def test_snapshots_are_written_on_the_writers_thread(tmp_path):
    writer = CheckpointWriter(tmp_path, 100)
    assert writer.submit(tmp_path / "a.npz", snap(1.0))
    assert wait_for(lambda: writer.written == 1)
    arrays, meta = load_state(tmp_path / "a.npz")
    assert arrays["w"].tolist() == [1.0, 1.0, 1.0] and meta["policy"] == "p"
    assert writer.close(1.0) == 0


def test_a_newer_snapshot_replaces_a_pending_one_and_take_returns_it(tmp_path, gate):
    writer = CheckpointWriter(tmp_path, 100, max_pending=2)
    writer.submit(tmp_path / "busy.npz", snap(0.0))  # held by the gate
    assert wait_for(lambda: writer.pending() == 1 and writer.has_room())
    writer.submit(tmp_path / "a.npz", snap(1.0))
    writer.submit(tmp_path / "a.npz", snap(2.0))
    assert writer.pending() == 2  # the one being written, one pending for a.npz
    taken = writer.take(tmp_path / "a.npz")
    assert taken is not None and taken[0]["w"][0] == 2.0
    assert writer.take(tmp_path / "a.npz") is None
    gate.set()
    assert writer.close(5.0) == 0
    assert not (tmp_path / "a.npz").exists()  # taken: the returning stream has it in memory


def test_pending_snapshots_are_bounded_and_a_stop_is_bounded_in_time(tmp_path, gate):
    writer = CheckpointWriter(tmp_path, 100, max_pending=2)
    for name in "abc":
        assert writer.submit(tmp_path / f"{name}.npz", snap(1.0))
    assert wait_for(lambda: writer.pending() == 3)  # one being written, two pending: full
    assert not writer.has_room()
    start = time.monotonic()
    assert not writer.submit(tmp_path / "d.npz", snap(1.0), timeout=0.2)
    assert writer.close(0.3) == 2  # the two pending are left; the one being written ends later
    assert time.monotonic() - start < 2
    gate.set()


def test_a_snapshot_the_disk_refuses_is_written_later_unless_a_newer_one_replaced_it(tmp_path, monkeypatch):
    monkeypatch.setattr(background, "RETRY_MIN_S", 0.05)
    refusing = threading.Event()
    refusing.set()
    original = checkpoints.save_state

    def full(path, arrays, meta):
        if refusing.is_set():
            raise OSError(28, "No space left on device")
        original(path, arrays, meta)

    monkeypatch.setattr(checkpoints, "save_state", full)
    writer = CheckpointWriter(tmp_path, 100)
    writer.submit(tmp_path / "a.npz", snap(1.0))
    writer.submit(tmp_path / "b.npz", snap(2.0))
    assert wait_for(lambda: writer.failed >= 2 and writer.failing)
    writer.submit(tmp_path / "a.npz", snap(3.0))  # newer than the refused one
    refusing.clear()
    assert wait_for(lambda: writer.written == 2)
    assert load_state(tmp_path / "a.npz")[0]["w"][0] == 3.0
    assert load_state(tmp_path / "b.npz")[0]["w"][0] == 2.0
    assert writer.close(1.0) == 0 and writer.written == 2  # the refused a=1.0 was never written


def test_the_state_files_are_bounded_in_number_the_least_recently_written_go(tmp_path):
    (tmp_path / "old__0.npz").write_bytes(b"an older agent's")  # found at the start, oldest
    (tmp_path / ".a__0.npz.x1y2.tmp").write_bytes(b"a killed agent's half-written file")
    (tmp_path / "status.json").write_text("{}")  # not a state file
    (tmp_path / "data.npz").write_bytes(b"a user's arrays")  # not the agent's: never pruned
    writer = CheckpointWriter(tmp_path, max_files=3)
    assert not (tmp_path / ".a__0.npz.x1y2.tmp").exists()
    for name in ("a", "b", "a", "c", "d"):  # a rewritten: newer than b
        writer.submit(tmp_path / f"{name}__0.npz", snap(1.0))
        assert wait_for(lambda: writer.pending() == 0)
    assert writer.close(1.0) == 0
    kept = ["a__0.npz", "c__0.npz", "d__0.npz", "data.npz", "status.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    assert writer.pruned == 2  # old__0.npz, then b__0.npz
    again = CheckpointWriter(tmp_path, max_files=2)  # a restart reads the order from the files' times
    again.submit(tmp_path / "e__0.npz", snap(1.0))
    assert wait_for(lambda: again.pruned == 2)
    assert again.close(1.0) == 0
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["d__0.npz", "data.npz", "e__0.npz"]
