"""The demo's moving parts: a broker, agent processes with their configs, a predictions listener."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_ttt.stream.mqtt import connect_in_background, make_client
from edge_ttt.stream.mqtt_settings import MqttSection
from edge_ttt_demo import DemoError
from firmware_sim.broker import Broker, mosquitto_binary
from firmware_sim.children import child_options
from firmware_sim.embedded_broker import EmbeddedBroker
from firmware_sim.scoreboard import Scoreboard


@contextlib.contextmanager
def running_broker(given: tuple[str, int] | None, rundir: Path) -> Iterator[tuple[str, int, str, str]]:
    """(host, port, MQTT protocol for our clients, what it is) of the given or a started broker."""
    if given is not None:
        yield given[0], given[1], "v311", f"{given[0]}:{given[1]} (given)"
        return
    if mosquitto_binary() is not None:
        broker: Broker | EmbeddedBroker = Broker(rundir)
        protocol, what = "v5", "mosquitto"
    else:
        broker, protocol, what = (
            EmbeddedBroker(),
            "v311",
            "embedded amqtt (MQTT 3.1.1; mosquitto is not installed)",
        )
    broker.start()
    try:
        yield "127.0.0.1", broker.port, protocol, f"{what} on 127.0.0.1:{broker.port}"
    finally:
        broker.stop()


def _toml(value: Any) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)  # JSON strings are TOML strings


def agent_config(
    path: Path,
    *,
    agent: str,
    policy: str,
    bundle: Path,
    mqtt: dict[str, Any],
    drift_topic: str,
    collected: bool = True,
) -> Path:
    """An agent's TOML for this run: its own state and spool, summaries every 40 windows.
    `collected`: a collector acknowledges its summaries (else a stop does not wait for them)."""
    run = path.parent / agent
    sections = {
        "agent": {"id": agent},
        "mqtt": mqtt | {"reconnect_min_s": 0.5, "reconnect_max_s": 2.0, "session_expiry_s": 600},
        "model": {"artifacts": bundle, "policy": policy, "device": "cpu", "threads": 1},
        "status": {"interval_s": 2.0},
        "state": {"dir": run / "state", "checkpoint_interval_s": 600.0},
        "drift": {
            "topic": drift_topic,
            "interval_s": 60.0,
            "interval_windows": 40,
            "spool_dir": run / "spool",
            "stop_timeout_s": 10.0 if collected else 0.0,
        },
        "logging": {"level": "info", "json": False},
    }
    text = "".join(
        f"[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in table.items()) + "\n"
        for name, table in sections.items()
    )
    path.write_text(text)
    return path


class Agents:
    """The agent child processes: started in their own session, stopped with SIGTERM (then killed)."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, config: Path, log: Path) -> None:
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                **child_options(),
            )
        self.logs[name] = log

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.logs[name].read_text(errors="replace").strip().splitlines()[-5:]
                raise DemoError(f"agent {name} exited with {proc.returncode}:\n" + "\n".join(tail))

    def stop(self, timeout_s: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Listener:
    """Predictions into the scoreboard, and the agents' retained status, from one MQTT client."""

    def __init__(self, mqtt: MqttSection, client_id: str, prefix: str, board: Scoreboard) -> None:
        self.mqtt = mqtt
        self.board = board
        self.online: set[str] = set()
        self.subscribed = threading.Event()
        self.client = make_client(mqtt, client_id)
        topics = [(f"{prefix}/+/pred", 1), (f"{prefix}/agents/+/status", 1)]
        self.client.on_connect = lambda client, *_: client.subscribe(topics)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self._message(msg.topic, msg.payload)

    def start(self) -> None:
        connect_in_background(self.client, self.mqtt)

    def _message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/pred"):
            self.board.add(payload)
            return
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(payload)
            (self.online.add if doc.get("state") == "online" else self.online.discard)(str(doc.get("agent")))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
