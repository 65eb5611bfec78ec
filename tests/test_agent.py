"""The agent end to end against a real mosquitto: frames in, predictions and status out."""

from __future__ import annotations

import time
from pathlib import Path

from edge_ttt.agent import Agent, health
from edge_ttt.agent.config import load_config
from edge_ttt.stream.codec import encode, encode_json
from tests.agent_harness import PERIOD_NS, T0, Listener, frames, start, write_config
from tests.conftest import wait_for
from tests.model_factory import LENGTH


def test_two_devices_get_predictions_with_the_right_window_counts(tmp_path, bundle_dir, broker):
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port)))
    listener = Listener(broker.port, ["edge-ttt/+/pred", "edge-ttt/agents/+/status"])
    thread = start(agent)
    try:
        for device, seed in (("dev-a", 1), ("dev-b", 2)):
            for frame in frames(12, seed=seed):  # 300 samples
                listener.publish(f"edge-ttt/{device}/dt/0", encode(frame))
        expected = (300 - LENGTH) // (LENGTH // 2) + 1
        assert wait_for(lambda: len(listener.of("/pred")) >= 2 * expected)
        time.sleep(0.3)  # nothing more should come
        preds = listener.of("/pred")
        assert sorted(p["device"] for p in preds) == ["dev-a"] * expected + ["dev-b"] * expected
        for device in ("dev-a", "dev-b"):
            ends = [p["t_end_ns"] for p in preds if p["device"] == device]
            assert ends == [T0 + (LENGTH - 1 + k * LENGTH // 2) * PERIOD_NS for k in range(expected)]
        p = preds[0]
        assert p["policy"] == "steady" and p["model"] == agent.model.bundle_sha256
        assert 0 < p["confidence"] <= 1 and p["entropy"] >= 0 and p["class"].startswith("c")
        statuses = lambda: listener.of("/status")  # noqa: E731
        assert wait_for(lambda: any(s.get("counters", {}).get("windows") == 2 * expected for s in statuses()))
    finally:
        agent.stop_event.set()
        thread.join(10)
    assert not thread.is_alive()
    # the explicit offline of a clean stop (it may still be on its way to the listener)
    assert wait_for(lambda: listener.of("/status")[-1]["state"] == "offline")
    assert sorted(f.name for f in (tmp_path / "state").iterdir()) == [
        "dev-a__0.npz",
        "dev-b__0.npz",
        "status.json",
    ]
    listener.close()


def test_json_frames_and_duplicates(tmp_path, bundle_dir, broker):
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port)))
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    try:
        sent = frames(8, samples=16)  # 128 samples: 3 windows
        for frame in sent + sent[2:5]:  # QoS 1 redelivery: three duplicates
            listener.publish("edge-ttt/dev-j/dt/0", encode_json(frame))
        assert wait_for(lambda: len(listener.of("/pred")) >= 3)
        time.sleep(0.3)
        assert len(listener.of("/pred")) == 3
        assert agent.status()["counters"]["frames_duplicates"] == 3
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()


def listener_reconnecting(port: int, topics: list[str]) -> Listener:
    listener = Listener(port, topics)
    listener.client.reconnect_delay_set(min_delay=1, max_delay=1)
    return listener


def test_broker_restart_mid_stream_the_agent_reconnects_and_misses_nothing_sent_after(
    tmp_path, bundle_dir, broker
):
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port)))
    listener = listener_reconnecting(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    try:
        sent = frames(24, samples=16)  # 384 samples: 11 windows in all
        for frame in sent[:12]:
            listener.publish("edge-ttt/dev-r/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.of("/pred")) == 5)  # 192 samples: 5 windows
        broker.restart(kill=True)  # a crash: no clean disconnect for anyone
        assert wait_for(lambda: agent.transport.connects >= 2 and agent.transport.subscribed.is_set())
        assert wait_for(listener.subscribed.is_set)
        for frame in sent[12:]:
            listener.publish("edge-ttt/dev-r/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.of("/pred")) >= 11)
        assert agent.counters.frames == 24 and agent.transport.disconnects >= 1
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()


def test_a_hang_up_stops_the_agent_cleanly(tmp_path, bundle_dir, broker):
    """SIGHUP (the terminal of an agent started by hand went away) ends it as SIGTERM does: its
    states written, `offline` said with its counters. By default it would end like SIGKILL."""
    import signal
    import subprocess
    import sys

    config = write_config(tmp_path, bundle_dir, broker.port)  # checkpoints every 300 s: only the stop's
    cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)]
    listener = Listener(broker.port, ["edge-ttt/+/pred", "edge-ttt/agents/+/status"])
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: any(s["state"] == "online" for s in listener.of("/status")))
        for frame in frames(12):
            listener.publish("edge-ttt/dev-h/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.of("/pred")) == 8)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    assert wait_for(lambda: listener.of("/status")[-1]["state"] == "offline")
    assert "counters" in listener.of("/status")[-1]  # a clean stop, not the Last Will
    assert (tmp_path / "state" / "dev-h__0.npz").is_file()
    listener.close()


def test_sigkill_leaves_offline_by_last_will_and_a_restart_restores_the_state(tmp_path, bundle_dir, broker):
    import signal
    import subprocess
    import sys

    config = write_config(tmp_path, bundle_dir, broker.port, checkpoint_s=0.2)
    cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)]
    root = Path(__file__).parents[1]
    listener = Listener(broker.port, ["edge-ttt/+/pred", "edge-ttt/agents/+/status"])
    proc = subprocess.Popen(cmd, cwd=root, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: any(s["state"] == "online" for s in listener.of("/status")))
        for frame in frames(12):
            listener.publish("edge-ttt/dev-k/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.of("/pred")) == 8)
        assert wait_for(lambda: (tmp_path / "state" / "dev-k__0.npz").is_file())
        time.sleep(0.5)  # a checkpoint after the last window
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: listener.of("/status")[-1]["state"] == "offline")  # the Last Will
        assert "counters" not in listener.of("/status")[-1]  # the will, not a clean stop
        # While the agent is down, the device goes on: 4 more frames (100 samples, 3 more windows);
        # the broker keeps them for the agent's persistent session.
        for frame in frames(16)[12:]:
            listener.publish("edge-ttt/dev-k/dt/0", encode(frame))
    finally:
        proc.kill()
    restarted = subprocess.Popen(cmd, cwd=root, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: listener.of("/status")[-1]["state"] == "online")
        # The frames sent while it was down arrive; the device's saved state is loaded for them.
        # Samples buffered for an unfinished window die with the process: the 100 new samples
        # start a new run and give (100 - 64) // 32 + 1 = 2 windows.
        assert wait_for(lambda: len(listener.of("/pred")) == 8 + 2)
        assert wait_for(
            lambda: any(s.get("counters", {}).get("states_restored") == 1 for s in listener.of("/status"))
        )
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(20) == 0
        assert wait_for(lambda: listener.of("/status")[-1]["state"] == "offline")
        assert "counters" in listener.of("/status")[-1]  # a clean stop, not the will
    finally:
        restarted.kill()
        listener.close()


def test_a_slow_engine_keeps_memory_bounded_and_the_connection_alive(
    tmp_path, bundle_dir, broker, monkeypatch
):
    from edge_ttt.adapt.engine import Engine

    extra = "[queue]\nmax_frames = 50\n"
    agent = Agent(
        load_config(write_config(tmp_path, bundle_dir, broker.port, mqtt="keepalive_s = 1", extra=extra))
    )
    original = Engine.process

    def slow(self, x):
        time.sleep(0.05)
        return original(self, x)

    monkeypatch.setattr(Engine, "process", slow)
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    try:
        for frame in frames(600, samples=8):  # far more than the worker can take
            listener.client.publish("edge-ttt/dev-s/dt/0", encode(frame), qos=1)
        time.sleep(3)  # three keepalive periods while the worker is busy
        assert agent.inbox.counters.high_water <= 50
        assert agent.inbox.counters.dropped > 0
        assert agent.transport.connected.is_set() and agent.transport.disconnects == 0
    finally:
        agent.stop_event.set()
        thread.join(20)
        listener.close()


def test_predictions_can_be_batched(tmp_path, bundle_dir, broker):
    extra = "[predictions]\nbatch = 4\n"
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port, extra=extra)))
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    try:
        for frame in frames(12):  # 300 samples: 8 windows, two messages of four
            listener.publish("edge-ttt/dev-b/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.of("/pred")) == 2)
        first, second = listener.of("/pred")
        assert [len(m["predictions"]) for m in (first, second)] == [4, 4]
        ends = [p["t_end_ns"] for m in (first, second) for p in m["predictions"]]
        assert ends == sorted(ends) and len(set(ends)) == 8
        assert agent.status()["device"] == agent.model.device in ("cpu", "cuda")
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()


def test_drift_summaries_are_spooled_and_shipped_per_device(tmp_path, bundle_dir, broker):
    from edge_ttt.drift.receiver import Receiver
    from edge_ttt.drift.schema import from_table
    from tests.test_monitor_collector import Running
    from tests.test_monitor_collector import config as monitor_config

    drift = 'interval_windows = 4\nspool_dir = "spool"\n'
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port, drift=drift)))
    listener = Listener(broker.port, ["edge-ttt/+/drift"])
    collector = Running(monitor_config(broker.port, str(tmp_path / "fleet")))
    thread = start(agent)
    try:
        for device in ("dev-d", "dev-e"):
            for frame in frames(12):  # 8 windows: two summaries of 4 each
                listener.publish(f"edge-ttt/{device}/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.raw) >= 4)
        # the collector stored them and said so: they leave the spool
        assert wait_for(lambda: agent.spool.counters.shipped == 4 and not agent.spool.pending())
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()
        collector.stop()
    receiver = Receiver()
    tables = [t for _, payload in listener.raw if (t := receiver.accept(payload)) is not None]
    summaries = [s for t in tables for s in from_table(t)]
    assert sorted(s.device for s in summaries) == ["dev-d", "dev-d", "dev-e", "dev-e"]
    assert all(s.windows == 4 and s.samples == 4 * LENGTH for s in summaries)  # sample rows
    assert {t.split("/")[1] for t, _ in listener.raw} == {"dev-d", "dev-e"}  # each on its device's topic
    assert len({s.summary_id for s in summaries}) == 4
    assert not list((tmp_path / "spool").glob("*.parquet"))  # acknowledged, so gone from the spool
    assert agent.status()["counters"]["drift_shipped"] == 4


def test_health_reads_the_local_status_file(tmp_path, bundle_dir, broker):
    from typer.testing import CliRunner

    from edge_ttt.cli import app

    config = write_config(tmp_path, bundle_dir, broker.port)
    cfg = load_config(config)
    assert "no readable status" in health(cfg)
    agent = Agent(cfg)
    thread = start(agent)
    try:
        assert wait_for(lambda: health(cfg) is None)
        result = CliRunner().invoke(app, ["health", "--config", str(config)])
        assert result.exit_code == 0 and "healthy" in result.output
        assert "old" in health(cfg, max_age_s=-1.0)  # a status that stopped coming
    finally:
        agent.stop_event.set()
        thread.join(10)
    assert health(cfg) == "agent is offline"
    result = CliRunner().invoke(app, ["health", "--config", str(config)])
    assert result.exit_code == 1 and "offline" in result.output


def test_frames_given_up_on_are_logged_and_travel_in_the_drift_summary(tmp_path, bundle_dir, broker, caplog):
    from edge_ttt.drift.receiver import Receiver
    from edge_ttt.drift.schema import from_table

    drift = 'interval_windows = 100\nspool_dir = "spool"\n'
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port, drift=drift)))
    listener = Listener(broker.port, ["edge-ttt/+/drift"])
    thread = start(agent)
    try:
        sent = [f for f in frames(16) if f.seq not in (3, 9)]  # two never arrive
        for frame in sent:
            listener.publish("edge-ttt/dev-g/dt/0", encode(frame))
        assert wait_for(lambda: agent.status()["counters"].get("frames_missing") == 2)
    finally:
        agent.stop_event.set()
        thread.join(10)
    assert wait_for(lambda: len(listener.raw) >= 1)
    listener.close()
    receiver = Receiver()
    summaries = [s for _, p in listener.raw if (t := receiver.accept(p)) is not None for s in from_table(t)]
    assert sum(s.frames_missing for s in summaries) == 2
    assert any("frames missing" in r.getMessage() for r in caplog.records)
