"""Each (device, stream) keeps a state file of its own, whatever its ids hold, and a restart gives
every stream back its own state, never another's."""

from __future__ import annotations

import shutil
import time

import pytest

from edge_ttt.adapt.engine import Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.snapshot import load_state, save_state
from edge_ttt.agent import Agent
from edge_ttt.agent.checkpoints import restore, stamped, state_path
from edge_ttt.agent.config import load_config
from edge_ttt.artifacts import load_bundle
from edge_ttt.stream.codec import encode
from tests.agent_harness import Listener, frames, start, write_config
from tests.conftest import wait_for

# Pairs that one file name held before: ids reduced to [A-Za-z0-9._-] with '_' for the rest.
ALIKE = [
    (("node 1", "imu"), ("node:1", "imu")),
    (("ノード1", "imu"), ("アイウ1", "imu")),  # every non-Latin letter was '_'
    (("a__b", "c"), ("a", "b__c")),  # the separator inside an id
    (("a_", "b"), ("a", "_b")),
]


@pytest.mark.parametrize(("one", "other"), ALIKE)
def test_ids_that_looked_alike_get_files_of_their_own(tmp_path, one, other):
    assert state_path(tmp_path, *one) != state_path(tmp_path, *other)


def test_plain_ids_keep_the_readable_name_and_long_ids_fit_a_file_name(tmp_path):
    assert state_path(tmp_path, "watch-s06-left", "0").name == "watch-s06-left__0.npz"
    assert state_path(tmp_path, "dev_1.a", "imu_2").name == "dev_1.a__imu_2.npz"
    long_one, long_other = "d" * 300, "d" * 299 + "e"
    name = state_path(tmp_path, long_one, "0").name
    assert len(name) <= 100 and name.startswith("ddd") and "~" in name
    assert name != state_path(tmp_path, long_other, "0").name
    for device in ("node 1", "ノード1", long_one):  # a hashed name is never a plain one
        assert "~" in state_path(tmp_path, device, "0").name


def test_a_state_file_of_another_stream_is_not_restored(tmp_path, bundle_dir):
    """A file copied over another stream's name (by hand, or an older version's shared name) is
    refused: that stream starts from source; its own stream still restores it."""
    engine = Engine(OrtModel(load_bundle(bundle_dir)), "steady")
    mine = state_path(tmp_path, "dev-a", "0")
    save_state(mine, *stamped(engine.snapshot(), "dev-a", "0"))
    shutil.copy(mine, state_path(tmp_path, "dev-b", "0"))
    assert not restore(engine, tmp_path, "dev-b", "0")
    assert restore(engine, tmp_path, "dev-a", "0")
    unstamped = state_path(tmp_path, "dev-c", "0")  # a file from before the stamp: its name decides
    save_state(unstamped, *engine.snapshot())
    assert restore(engine, tmp_path, "dev-c", "0")


def test_agent_keeps_one_state_per_stream_and_restores_each_its_own(tmp_path, bundle_dir, broker):
    devices = ["ノード1", "アイウ1", "node 1", "node:1", "d" * 300]
    config = load_config(write_config(tmp_path, bundle_dir, broker.port))
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    try:
        agent = Agent(config)
        thread = start(agent)
        try:
            for seed, device in enumerate(devices):
                for frame in frames(12, seed=seed):
                    listener.publish(f"edge-ttt/{device}/dt/0", encode(frame))
            assert wait_for(lambda: len(listener.of("/pred")) >= 8 * len(devices))
        finally:
            agent.stop_event.set()
            thread.join(10)
        assert not thread.is_alive()
        files = sorted((tmp_path / "state").glob("*.npz"))
        assert len(files) == len(devices)
        owners = {load_state(f)[1]["device"] for f in files}
        assert owners == set(devices)
        for device in devices:
            assert load_state(state_path(tmp_path / "state", device, "0"))[1]["device"] == device
        # A second agent on the same directory: every stream's first frame restores its own state.
        again = Agent(config)
        thread = start(again)
        try:
            for seed, device in enumerate(devices):
                for frame in frames(16, seed=seed)[12:]:
                    listener.publish(f"edge-ttt/{device}/dt/0", encode(frame))
            assert wait_for(lambda: again.status()["counters"]["states_restored"] == len(devices))
            time.sleep(0.2)
            assert again.status()["counters"]["states_restored"] == len(devices)
        finally:
            again.stop_event.set()
            thread.join(10)
    finally:
        listener.close()


def test_agent_keeps_at_most_max_files_state_files(tmp_path, bundle_dir, broker):
    """Ids that come and go cannot fill the disk: beyond `state.max_files` the least recently
    written state files go, counted in the status."""
    config = load_config(write_config(tmp_path, bundle_dir, broker.port, state="max_files = 2"))
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    agent = Agent(config)
    thread = start(agent)
    try:
        for seed, device in enumerate(["dev-a", "dev-b", "dev-c", "dev-d"]):
            for frame in frames(12, seed=seed):
                listener.publish(f"edge-ttt/{device}/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.of("/pred")) >= 8 * 4)
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()
    assert not thread.is_alive()
    assert len(list((tmp_path / "state").glob("*.npz"))) == 2
    assert agent.status()["counters"]["checkpoints_pruned"] == 2
