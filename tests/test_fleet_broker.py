"""The broker side (issue #19, item 6): configs/mosquitto-fleet.conf is accepted by mosquitto, and
with it every frame published while the agent is down is processed when it is back, even across a
broker crash; with mosquitto's default queue limit the same outage loses frames."""

from __future__ import annotations

import getpass
import json
import re
import signal
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.broker import Broker
from tests.agent_harness import frames
from tests.conftest import wait_for
from tests.test_agent_health import ROOT, run_agent, status, stop
from tests.test_agent_tls import PASSWORD, make_pki, tls_config

FLEET = ROOT / "configs" / "mosquitto-fleet.conf"
DOWN_FRAMES = 3000  # three times mosquitto's default max_queued_messages
SAMPLES = 10  # per frame: 3000 frames give 30000 samples, under 1000 windows


def fleet_config(port: int, pki: Path, store: Path, **changed: str) -> str:
    """The shipped file with its port, paths and user for this test (and `changed` settings)."""
    text = FLEET.read_text()
    replace = {
        "listener": f"{port} 127.0.0.1",
        "password_file": str(pki / "passwd"),
        "cafile": str(pki / "ca.crt"),
        "certfile": str(pki / "server.crt"),
        "keyfile": str(pki / "server.key"),
        "persistence_location": f"{store}/",
        "log_dest": f"file {store / 'mosquitto.log'}",
        **changed,
    }
    for key, value in replace.items():
        text, n = re.subn(rf"^{key} .*$", f"{key} {value}", text, flags=re.M)
        assert n == 1, f"{key} is not set once in {FLEET}"
    # Started as root, mosquitto would switch to its own user and could not read the test's keys.
    return f"user {getpass.getuser()}\n{text}"


def test_the_shipped_config_keeps_what_the_agent_promises():
    settings = dict(line.split(" ", 1) for line in FLEET.read_text().splitlines() if line and line[0] != "#")
    assert int(settings["max_queued_messages"]) >= 10**8 and settings["max_queued_bytes"] == "0"
    assert settings["persistence"] == "true" and settings["autosave_interval"] == "1"
    assert settings["allow_anonymous"] == "false"


class Device:
    """A device on the fleet broker: TLS, a password, QoS 1 publishes each acknowledged."""

    def __init__(self, port: int, pki: Path) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="device-f")
        self.client.tls_set(ca_certs=str(pki / "ca.crt"))
        self.client.username_pw_set("edge", PASSWORD)
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, sent: list) -> None:
        from edge_ttt.stream.codec import encode

        infos = [self.client.publish("edge-ttt/dev-f/dt/0", encode(f), qos=1) for f in sent]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def frames_counted(tmp_path: Path, since: float) -> int | None:
    """The frames counter of a status written after `since` (a restarted agent's), else None."""
    doc = status(tmp_path)
    return doc["counters"]["frames"] if doc.get("time_unix", 0) > since else None


@pytest.mark.parametrize("queue", ["fleet", "mosquitto default"])
def test_frames_sent_while_the_agent_is_down_are_all_processed_with_the_fleet_config(
    tmp_path, bundle_dir, monkeypatch, queue
):
    pki, store = make_pki(tmp_path / "pki"), tmp_path / "store"
    store.mkdir()
    broker = Broker(tmp_path)
    changed = {} if queue == "fleet" else {"max_queued_messages": "1000"}
    broker.config.write_text(fleet_config(broker.port, pki, store, **changed))
    broker.start()  # fails with mosquitto's own message if it refuses the file
    monkeypatch.setenv("EDGE_TTT_TEST_PASSWORD", PASSWORD)
    config = tls_config(tmp_path, bundle_dir, broker.port, pki)
    sent = frames(4 + DOWN_FRAMES, samples=SAMPLES)
    device = Device(broker.port, pki)
    agent = run_agent(config, tmp_path / "agent.log")
    try:
        assert wait_for(lambda: status(tmp_path).get("state") == "online", timeout=30)
        time.sleep(1.0)  # its subscription (made on connect) is in place: the session exists from now
        device.send(sent[:4])
        assert wait_for(lambda: status(tmp_path).get("counters", {}).get("frames") == 4, timeout=30)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        device.send(sent[4:])  # the broker queues them for the agent's persistent session
        if queue == "fleet":  # a crash of the broker too, once its store has been saved
            time.sleep(3.0)  # autosave_interval 1: mosquitto saves within 2 s
            device.close()
            broker.restart(kill=True)
        back = time.time()
        agent = run_agent(config, tmp_path / "agent2.log")
        if queue == "fleet":
            assert wait_for(lambda: frames_counted(tmp_path, back) == DOWN_FRAMES, timeout=45), status(
                tmp_path
            )
            return
        assert wait_for(lambda: (frames_counted(tmp_path, back) or 0) > 0, timeout=30)
        time.sleep(3.0)  # whatever the broker kept has arrived by now
        processed = frames_counted(tmp_path, back)
        assert 1000 <= processed < DOWN_FRAMES, processed
        assert "Outgoing messages are being dropped" in (store / "mosquitto.log").read_text()
    finally:
        stop(agent)
        device.close()
        broker.stop()
    assert json.loads((tmp_path / "state" / "status.json").read_text())["state"] == "offline"
