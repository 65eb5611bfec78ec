"""A harness for the agent tests: a config for a test broker, a listening client, frames, a started agent."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.agent import Agent
from edge_ttt.stream.codec import Frame
from tests.conftest import CHANNELS

PERIOD_NS = 20_000_000
T0 = 1_704_067_200_000_000_000


def write_config(
    tmp_path: Path,
    bundle_dir: Path,
    port: int,
    mqtt: str = "",
    checkpoint_s: float = 300.0,
    extra: str = "",
    drift: str = "",
    state: str = "",
) -> Path:
    """An agent config for the test broker; `mqtt`, `drift` and `state` add keys to [mqtt], [drift]
    and [state] (a stop waits at most 0.5 s for acknowledgements unless `drift` says otherwise),
    `extra` whole sections."""
    if "stop_timeout_s" not in drift:
        drift = f"stop_timeout_s = 0.5\n{drift}"
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
{state}
[drift]
{drift}
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
