"""A full disk under the real processes: the agent's state and spool, or the collector's dataset, on
a small tmpfs that the test fills to the last byte and later frees. The promise: the agent goes on
predicting, nothing crashes, and every drift summary made is stored once the disk takes writes
again. Real mosquitto, `edge-ttt run` and `edge-ttt collect` as processes. Mounting needs root
(as CI runs); elsewhere the tests skip and say why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge_ttt.artifacts import load_bundle
from tests import delivery_harness as harness
from tests.agent_harness import Listener
from tests.conftest import wait_for
from tests.test_drift_delivery_faults import TOPICS, online
from tests.test_monitor_collector import Running, config, stored_ids

DEVICES = ["dev-a", "dev-b"]
ENOSPC = "No space left on device"


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte; the file, to delete later."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28, exc  # ENOSPC, not some other failure
    finally:
        os.close(fd)
    return filler


def windows(bundle_dir: Path, frames: int, samples: int = 25) -> int:
    """Windows the agent cuts from `frames` contiguous frames of one device."""
    model = load_bundle(bundle_dir).manifest.model
    return (frames * samples - model.window) // model.hop + 1


def counters(listener: Listener) -> dict:
    statuses = listener.of("/status")
    return statuses[-1]["counters"] if statuses else {}


def test_an_agent_whose_disk_is_full_keeps_predicting_and_loses_no_summary(
    tmp_path, bundle_dir, broker, small_disk
):
    disk = small_disk(tmp_path / "state", "4m")  # the agent's state dir; its spool inside it
    location = tmp_path / "fleet"
    collector = Running(config(broker.port, str(location)))
    listener = Listener(broker.port, [*TOPICS, "edge-ttt/+/pred"])
    drift = harness.DRIFT.replace('"spool"', '"state/spool"')
    log = tmp_path / "agent.log"
    agent = harness.agent_process(harness.agent_config(tmp_path, bundle_dir, broker.port, drift), log)
    try:
        assert wait_for(lambda: online(listener), 30)
        harness.send_frames(listener, DEVICES, 0, 12)
        assert wait_for(lambda: len(stored_ids(str(location))) >= 8, 30)  # 2 devices x 4 intervals
        filler = fill(disk)
        harness.send_frames(listener, DEVICES, 12, 24)  # made while nothing can be written
        expected = len(DEVICES) * windows(bundle_dir, 36)
        assert wait_for(lambda: len(listener.of("/pred")) >= expected, 30), "predictions stopped"
        assert wait_for(lambda: counters(listener).get("status_file_failures", 0) > 0, 10)
        c = counters(listener)
        assert agent.poll() is None and c["drift_spool_failures"] > 0 and c["drift_unspooled"] > 0
        assert ENOSPC in log.read_text()
        filler.unlink()  # the operator frees the disk
        closed = len(DEVICES) * (windows(bundle_dir, 36) // 2)  # intervals of 2 windows
        assert wait_for(lambda: len(stored_ids(str(location))) >= closed, 60)
        assert wait_for(lambda: not harness.spooled_ids(disk / "spool"), 20)
        assert counters(listener)["drift_dropped"] == 0
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        time.sleep(0.5)  # the collector's last batch
        counts = harness.ledger(listener, disk / "spool", location)
        assert counts["lost"] == 0 and counts["stored"] == counts["unique"] == counts["made"], counts
        assert len(listener.of("/pred")) == expected  # every window predicted, none twice
    finally:
        agent.kill()
        collector.stop()
        listener.close()


def test_a_collector_whose_disk_is_full_keeps_summaries_unacknowledged_until_it_can_write(
    tmp_path, bundle_dir, broker, small_disk
):
    disk = small_disk(tmp_path / "fleet-disk", "2m")
    location = disk / "fleet"
    collector = harness.collector_process(tmp_path, broker.port, location)
    listener = Listener(broker.port, TOPICS)
    log = tmp_path / "agent.log"
    agent = harness.agent_process(harness.agent_config(tmp_path, bundle_dir, broker.port), log)
    try:
        assert wait_for(lambda: online(listener), 30)
        harness.send_frames(listener, DEVICES, 0, 12)
        assert wait_for(lambda: len(stored_ids(str(location))) >= 8, 30)
        filler = fill(disk)
        harness.send_frames(listener, DEVICES, 12, 12)
        assert wait_for(lambda: counters(listener).get("windows", 0) >= 2 * windows(bundle_dir, 24), 30)
        time.sleep(2.0)  # several flushes tried and refused
        assert len(stored_ids(str(location))) == 8
        assert harness.spooled_ids(tmp_path / "spool")  # kept by the agent
        assert collector.poll() is None
        out = disk / "report.html"
        command = [sys.executable, "-m", "edge_ttt.cli", "monitor", "report"]
        command += ["--dataset", str(location), "--out", str(out)]
        report = subprocess.run(command, capture_output=True, text=True)
        assert report.returncode == 1 and report.stderr.count("\n") == 1  # one line, with the fix
        assert report.stderr.startswith(f"error: --out {out}: cannot write it there ({ENOSPC}). Fix: ")
        filler.unlink()
        closed = len(DEVICES) * (windows(bundle_dir, 24) // 2)  # intervals of 2 windows
        assert wait_for(lambda: len(stored_ids(str(location))) >= closed, 60)
        assert wait_for(lambda: not harness.spooled_ids(tmp_path / "spool"), 20)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(30) == 0
        errors = collector.stderr.read()
        assert ENOSPC in errors and "Traceback" not in errors  # one line that says why
        assert not list(disk.rglob("*.tmp"))  # no half-written file left behind
        counts = harness.ledger(listener, tmp_path / "spool", location)
        assert counts["lost"] == 0 and counts["stored"] == counts["unique"] == counts["made"], counts
    finally:
        agent.kill()
        collector.kill()
        listener.close()
