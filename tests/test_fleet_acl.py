"""configs/mosquitto-fleet.acl in a real mosquitto: each role gets what it needs and nothing that
would let it lie for another (frames of another device, drift summaries, acknowledgements)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.broker import Broker
from tests.conftest import wait_for
from tests.test_agent_health import ROOT

ACL = ROOT / "configs" / "mosquitto-fleet.acl"
AGENT, COLLECTOR, SENSOR = "jetson-line3-01", "edge-ttt-collector-1", "dev-a"
PASSWORD = "not-a-secret"


class Role:
    """A login that subscribes to `topics` and records what the broker delivers to it."""

    def __init__(self, port: int, user: str, topics: list[str]) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}")
        self.client.username_pw_set(user, PASSWORD)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if topics:
            self.client.subscribe([(t, 1) for t in topics])
            assert self.subscribed.wait(10)

    def _message(self, _c, _u, msg) -> None:
        with self.lock:
            self.got.append((msg.topic, msg.payload))

    def seen(self, payload: bytes) -> bool:
        with self.lock:
            return any(p == payload for _, p in self.got)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_shipped_acl_lets_each_role_do_its_part_and_no_one_forge_another_s(tmp_path: Path):
    for i, user in enumerate((AGENT, COLLECTOR, SENSOR)):
        flag = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *flag, str(tmp_path / "pw"), user, PASSWORD], check=True)
    (tmp_path / "pw").chmod(0o600)
    acl = tmp_path / "acl"
    acl.write_text(ACL.read_text())
    acl.chmod(0o600)
    broker = Broker(tmp_path, f"password_file {tmp_path / 'pw'}\nacl_file {acl}", anonymous=False)
    broker.start()
    roles: list[Role] = []
    try:
        agent = Role(broker.port, AGENT, ["edge-ttt/+/dt/+", "edge-ttt/+/drift/ack"])
        collector = Role(broker.port, COLLECTOR, ["edge-ttt/+/drift"])
        sensor = Role(broker.port, SENSOR, ["edge-ttt/+/pred"])
        roles += [agent, collector, sensor]
        # refused first: a broker handles one connection's packets in order, so once the allowed
        # message sent after them has arrived, the refused ones would have too
        sensor.publish("edge-ttt/dev-b/dt/0", b"frame for another device")
        sensor.publish("edge-ttt/dev-a/drift", b"summary filed by a sensor")
        sensor.publish("edge-ttt/dev-a/drift/ack", b"acknowledgement forged by a sensor")
        agent.publish("edge-ttt/dev-a/drift/ack", b"acknowledgement forged by an agent")
        agent.publish("edge-ttt/dev-b/pred", b"prediction for another device")
        sensor.publish("edge-ttt/dev-a/dt/0", b"own frame")
        agent.publish("edge-ttt/dev-a/drift", b"summary")
        agent.publish("edge-ttt/dev-a/pred", b"own prediction")
        collector.publish("edge-ttt/dev-a/drift/ack", b"acknowledgement")
        assert wait_for(lambda: agent.seen(b"own frame") and agent.seen(b"acknowledgement"))
        assert wait_for(lambda: collector.seen(b"summary") and sensor.seen(b"own prediction"))
        assert not agent.seen(b"frame for another device")
        assert not collector.seen(b"summary filed by a sensor")
        assert not agent.seen(b"acknowledgement forged by a sensor")
        assert not agent.seen(b"acknowledgement forged by an agent")
        assert not sensor.seen(b"prediction for another device")
    finally:
        for role in roles:
            role.close()
        broker.stop()
