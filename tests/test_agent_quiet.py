"""An agent that hears nothing says so: a broker whose ACL lets it subscribe to the sensor topics
but not read them (mosquitto accepts the subscription and drops every message without a word)."""

from __future__ import annotations

import logging
import subprocess
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.agent import Agent
from edge_ttt.agent.config import load_config
from edge_ttt.stream.codec import encode
from firmware_sim.broker import Broker
from tests.agent_harness import frames, start, write_config
from tests.conftest import wait_for

PASSWORD = "not-a-secret"


def test_an_agent_not_allowed_to_read_the_sensors_warns_once(tmp_path, bundle_dir, monkeypatch, caplog):
    (tmp_path / "acl").write_text(
        "user agent\ntopic write edge-ttt/#\ntopic read edge-ttt/+/drift/ack\n"  # no read on dt/
        "user device\ntopic readwrite edge-ttt/#\n"
    )
    (tmp_path / "acl").chmod(0o600)
    for user in ("agent", "device"):
        flag = ["-c"] if user == "agent" else []
        subprocess.run(["mosquitto_passwd", "-b", *flag, str(tmp_path / "pw"), user, PASSWORD], check=True)
    (tmp_path / "pw").chmod(0o600)
    broker = Broker(
        tmp_path, f"password_file {tmp_path / 'pw'}\nacl_file {tmp_path / 'acl'}", anonymous=False
    )
    broker.start()
    monkeypatch.setenv("EDGE_TTT_TEST_PASSWORD", PASSWORD)
    mqtt = 'username = "agent"\npassword_env = "EDGE_TTT_TEST_PASSWORD"'
    config = write_config(tmp_path, bundle_dir, broker.port, mqtt=mqtt)
    config.write_text(config.read_text().replace("[status]\n", "[status]\nquiet_warning_s = 2.0\n"))
    agent = Agent(load_config(config))
    device = paho.Client(CallbackAPIVersion.VERSION2, client_id="device")
    device.username_pw_set("device", PASSWORD)
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    thread: threading.Thread | None = None
    try:
        with caplog.at_level(logging.WARNING, logger="edge_ttt.agent"):
            thread = start(agent)
            for frame in frames(40):
                device.publish("edge-ttt/dev-1/dt/0", encode(frame), qos=1).wait_for_publish(5)
            said = lambda: [r for r in caplog.records if r.getMessage().startswith("no sensor message")]  # noqa: E731
            assert wait_for(said, 15)
            time.sleep(2.5)
            (record,) = said()  # once
        assert agent.counters.frames == 0  # the broker delivered none of the 40
        assert record.fields["subscription"] == "edge-ttt/+/dt/+"
        assert "lets this client read it" in record.getMessage()
    finally:
        agent.stop_event.set()
        if thread is not None:
            thread.join(10)
        device.disconnect()
        device.loop_stop()
        broker.stop()
