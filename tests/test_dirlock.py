"""One process per directory: a second agent on a state or spool directory, or a second collector
on a dataset (unless both share one subscription), is refused at start with the holder and the
fix; the lock goes with its process, however it ends. Real processes where it matters."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_ttt.dirlock import LOCK_NAME, DirInUse, hold
from tests.agent_harness import write_config
from tests.conftest import wait_for
from tests.test_agent_health import run_agent, status, stop

ROOT = Path(__file__).parents[1]


def test_a_second_holder_is_refused_with_the_holders_name_and_the_key(tmp_path):
    first = hold(tmp_path / "d", "agent 'a'", "state.dir")
    with pytest.raises(DirInUse) as refused:
        hold(tmp_path / "d", "agent 'b'", "state.dir")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'd'} is in use by agent 'a' (pid ")
    assert message.endswith("stop that one, or give this one a directory of its own (state.dir)")
    first.release()
    hold(tmp_path / "d", "agent 'b'", "state.dir").release()


def test_shared_holders_keep_out_an_exclusive_one_and_it_keeps_them_out(tmp_path):
    a = hold(tmp_path, "collector 'a'", "collector.dataset", shared=True)
    b = hold(tmp_path, "collector 'b'", "collector.dataset", shared=True)
    with pytest.raises(DirInUse, match="collector 'b'"):  # the latest shared holder is named
        hold(tmp_path, "collector 'c'", "collector.dataset")
    a.release()
    b.release()
    c = hold(tmp_path, "collector 'c'", "collector.dataset")
    with pytest.raises(DirInUse, match="collector 'c'"):
        hold(tmp_path, "collector 'a'", "collector.dataset", shared=True)
    c.release()


def test_the_lock_goes_with_a_process_killed_with_sigkill(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from edge_ttt.dirlock import hold; "
        "hold(Path(sys.argv[1]), 'agent \\'k\\'', 'state.dir'); print('held', flush=True); time.sleep(60)"
    )
    cmd = [sys.executable, "-c", code, str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(DirInUse, match=f"agent 'k' \\(pid {proc.pid}\\)"):
            hold(tmp_path, "agent 'b'", "state.dir")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        hold(tmp_path, "agent 'b'", "state.dir").release()  # nothing stale to clear by hand
    finally:
        proc.kill()


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    """A command expected to end by itself; one that runs on instead is killed and fails the test."""
    cmd = [sys.executable, "-m", "edge_ttt.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_a_second_agent_on_a_state_or_spool_dir_in_use_is_refused_and_the_first_runs_on(
    tmp_path, bundle_dir, broker
):
    first = run_agent(write_config(tmp_path, bundle_dir, broker.port), tmp_path / "first.log")
    try:
        assert wait_for(lambda: status(tmp_path).get("state") == "online", 30)
        (tmp_path / "same_state").mkdir()
        same_state = write_config(tmp_path / "same_state", bundle_dir, broker.port)
        text = same_state.read_text().replace(str(tmp_path / "same_state" / "state"), str(tmp_path / "state"))
        same_state.write_text(text.replace('id = "test-agent"', 'id = "second"'))
        refused = _run(["run", "--config", str(same_state)])
        assert refused.returncode == 2, refused.stderr
        holder = f"is in use by agent 'test-agent' (pid {first.pid})"
        assert f"error: {tmp_path / 'state'} {holder}" in refused.stderr
        assert "(state.dir)" in refused.stderr

        (tmp_path / "same_spool").mkdir()
        spool = f'spool_dir = "{tmp_path / "drift-spool"}"'  # the first one's: relative to its config
        same_spool = write_config(tmp_path / "same_spool", bundle_dir, broker.port, drift=spool)
        same_spool.write_text(same_spool.read_text().replace('id = "test-agent"', 'id = "third"'))
        refused = _run(["run", "--config", str(same_spool)])
        assert refused.returncode == 2, refused.stderr
        assert f"error: {tmp_path / 'drift-spool'} {holder}" in refused.stderr
        assert "(drift.spool_dir)" in refused.stderr

        assert first.poll() is None  # untouched: still connected, still writing its status
        before = status(tmp_path)["time_unix"]
        assert wait_for(lambda: status(tmp_path).get("time_unix", 0) > before, 10)
        assert (tmp_path / "state" / LOCK_NAME).read_text() == f"agent 'test-agent' (pid {first.pid})\n"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(20)
    again = run_agent(write_config(tmp_path, bundle_dir, broker.port), tmp_path / "again.log")
    try:  # killed, the first left no lock behind
        assert wait_for(lambda: status(tmp_path).get("state") == "online" and again.poll() is None, 30)
    finally:
        stop(again)


def _collector(tmp_path: Path, port: int, name: str, group: str | None) -> Path:
    toml = tmp_path / f"{name}.toml"
    share = f'share_group = "{group}"\n' if group else ""
    toml.write_text(
        f"[mqtt]\nport = {port}\nreconnect_min_s = 1.0\nreconnect_max_s = 1.0\n"
        f'[collector]\ndataset = "{tmp_path / "fleet"}"\nclient_id = "{name}"\n{share}'
    )
    return toml


def test_a_second_collector_on_one_dataset_is_refused_unless_both_share_the_load(tmp_path, broker):
    def start(name: str, group: str | None) -> subprocess.Popen:
        toml = _collector(tmp_path, broker.port, name, group)
        cmd = [sys.executable, "-m", "edge_ttt.cli", "collect", "--config", str(toml)]
        return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)

    first = start("one", None)
    try:
        assert "collecting" in first.stderr.readline()
        refused = _run(["collect", "--config", str(_collector(tmp_path, broker.port, "two", None))])
        assert refused.returncode == 2
        assert f"error: {tmp_path / 'fleet'} is in use by collector 'one' (pid {first.pid})" in refused.stderr
        assert "collector.share_group on both" in refused.stderr
        shared = _run(["collect", "--config", str(_collector(tmp_path, broker.port, "three", "g"))])
        assert shared.returncode == 2 and "in use by collector 'one'" in shared.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(20)

    members = [start(name, "g") for name in ("a", "b")]
    try:
        assert all("collecting" in p.stderr.readline() for p in members)
        time.sleep(0.5)
        assert all(p.poll() is None for p in members)  # both run, splitting the subscription
    finally:
        for p in members:
            p.send_signal(signal.SIGTERM)
        for p in members:
            assert p.wait(20) == 0


def test_a_dataset_named_by_path_or_file_uri_is_one_directory_and_object_storage_has_no_lock(tmp_path):
    from edge_ttt.monitor import dataset

    first = dataset.hold(f"file://{tmp_path / 'fleet'}", "collector 'a'", shared=False)
    with pytest.raises(DirInUse, match="collector 'a'"):
        dataset.hold(str(tmp_path / "fleet"), "collector 'b'", shared=False)
    first.release()
    assert dataset.hold("mock://fleet", "collector 'c'", shared=False) is None
