"""The agent end to end against a real mosquitto: frames in, predictions and status out."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.agent import Agent, Message, health
from edge_ttt.agent.config import load_config
from edge_ttt.stream.codec import Frame, encode, encode_json
from tests.conftest import CHANNELS, wait_for
from tests.model_factory import LENGTH

PERIOD_NS = 20_000_000
T0 = 1_704_067_200_000_000_000


def write_config(
    tmp_path: Path, bundle_dir: Path, port: int, mqtt: str = "", checkpoint_s: float = 300.0, extra: str = ""
) -> Path:
    """An agent config for the test broker; `mqtt` adds keys to [mqtt], `extra` whole sections."""
    text = f"""
[agent]
id = "test-agent"
[mqtt]
port = {port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
{mqtt}
[model]
artifacts = "{bundle_dir}"
[status]
interval_s = 0.3
[state]
dir = "{tmp_path / "state"}"
checkpoint_interval_s = {checkpoint_s}
{extra}
"""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


class Listener:
    """A test client that records what the agent publishes."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.raw: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{port}")
        self.client.on_message = self._on_message
        # Frames and predictions are only delivered once the broker has acknowledged the
        # subscription: wait for that, not for the connection, or a busy machine loses the first ones.
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_disconnect = lambda *_: self.subscribed.clear()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the listener did not subscribe"

    def _on_message(self, _c, _u, msg) -> None:
        with self.lock:
            if msg.topic.endswith("/drift"):  # a header line and Parquet bytes, not JSON
                self.raw.append((msg.topic, msg.payload))
            else:
                self.messages.append((msg.topic, json.loads(msg.payload)))

    def of(self, suffix: str) -> list[dict]:
        with self.lock:
            return [m for t, m in self.messages if t.endswith(suffix)]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def frames(n_frames: int, samples: int = 25, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [
        Frame(
            0,
            seq,
            T0 + seq * samples * PERIOD_NS,
            PERIOD_NS,
            rng.standard_normal((samples, len(CHANNELS))).astype(np.float32),
        )
        for seq in range(n_frames)
    ]


def start(agent: Agent) -> threading.Thread:
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    assert agent.transport.subscribed.wait(10), "the agent did not subscribe"
    return thread


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


@pytest.fixture
def offline_agent(tmp_path, bundle_dir) -> Agent:
    """An agent whose worker is driven by hand (no broker needed for `handle`)."""
    return Agent(load_config(write_config(tmp_path, bundle_dir, 1)))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300))
def test_malformed_payloads_never_stop_the_worker_and_are_counted(offline_agent: Agent, payload: bytes):
    before = offline_agent.counters.frames + sum(offline_agent.counters.rejected.values())
    offline_agent.handle(Message("edge-ttt/fuzz/dt/0", payload, time.monotonic()))
    after = offline_agent.counters.frames + sum(offline_agent.counters.rejected.values())
    assert after == before + 1  # every payload is either a frame or a counted rejection


def test_frames_that_do_not_fit_the_model_are_rejected_by_reason(offline_agent: Agent):
    good = frames(1)[0]
    cases = {
        "channels": Frame(0, 1, T0, PERIOD_NS, np.zeros((10, 3), np.float32)),
        "rate": Frame(0, 2, T0, PERIOD_NS // 2, np.zeros((10, len(CHANNELS)), np.float32)),
        "stream": Frame(7, 3, T0, PERIOD_NS, np.zeros((10, len(CHANNELS)), np.float32)),
    }
    for frame in cases.values():
        offline_agent.handle(Message("edge-ttt/dev/dt/0", encode(frame), time.monotonic()))
    offline_agent.handle(Message("not/a/sensor/topic/at/all", encode(good), time.monotonic()))
    assert dict(offline_agent.counters.rejected) == dict.fromkeys(cases, 1)
    assert offline_agent.counters.unknown_topic == 1 and offline_agent.counters.frames == 0


def test_run_refuses_a_bad_config_or_bundle_before_starting_anything(tmp_path, bundle_dir):
    import shutil
    import subprocess
    import sys

    def run(config: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])

    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nid = "x"\n[mqtt]\nprot = 1\n[model]\nartifacts = "a"\n')
    result = run(bad)
    assert result.returncode == 2 and "mqtt.prot" in result.stderr
    art = tmp_path / "art"
    shutil.copytree(bundle_dir, art)
    (art / "checkpoint").write_bytes(b"tampered")
    result = run(write_config(tmp_path, art, 1))
    assert result.returncode == 2 and "checkpoint" in result.stderr and "SHA-256" in result.stderr
    assert not (tmp_path / "state").exists()  # nothing half-started
    result = run(write_config(tmp_path, tmp_path / "no-such-bundle", 1))
    assert result.returncode == 2 and "no-such-bundle does not exist" in result.stderr


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

    extra = '[drift]\ninterval_windows = 4\nspool_dir = "spool"\n'
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port, extra=extra)))
    listener = Listener(broker.port, ["edge-ttt/+/drift"])
    thread = start(agent)
    try:
        for device in ("dev-d", "dev-e"):
            for frame in frames(12):  # 8 windows: two summaries of 4 each
                listener.publish(f"edge-ttt/{device}/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.raw) >= 4)
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()
    receiver = Receiver()
    tables = [t for _, payload in listener.raw if (t := receiver.accept(payload)) is not None]
    summaries = [s for t in tables for s in from_table(t)]
    assert sorted(s.device for s in summaries) == ["dev-d", "dev-d", "dev-e", "dev-e"]
    assert all(s.windows == 4 and s.samples == 4 * LENGTH for s in summaries)  # sample rows
    assert {t.split("/")[1] for t, _ in listener.raw} == {"dev-d", "dev-e"}  # each on its device's topic
    assert len({s.summary_id for s in summaries}) == 4
    assert not list((tmp_path / "spool").glob("*.parquet"))  # acknowledged, so gone from the spool


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
