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


def test_a_publish_the_acl_refuses_does_not_cost_the_connection_with_the_fleet_queue(tmp_path: Path):
    """With `max_queued_messages 0`, mosquitto 2.0 closed the connection of a client whose QoS 1
    publish the ACL refused; an agent resending it reconnected twice a second. The fleet file's
    value must keep the connection (the refusal then comes back as a PUBACK reason code)."""
    fleet = (ROOT / "configs" / "mosquitto-fleet.conf").read_text()
    queue = next(line for line in fleet.splitlines() if line.startswith("max_queued_messages "))
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "pw"), AGENT, PASSWORD], check=True)
    (tmp_path / "acl").write_text(f"user {AGENT}\ntopic write edge-ttt/allowed\n")
    broker = Broker(
        tmp_path, f"password_file {tmp_path / 'pw'}\nacl_file {tmp_path / 'acl'}\n{queue}", anonymous=False
    )
    broker.start()
    drops: list[object] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="acl-queue", protocol=paho.MQTTv5)
    client.username_pw_set(AGENT, PASSWORD)
    client.on_disconnect = lambda *args: drops.append(args)
    try:
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        for _ in range(3):
            info = client.publish("edge-ttt/dev-a/drift", b"refused", qos=1)
            info.wait_for_publish(10)
            assert info.rc == 0 and info.is_published()
        client.publish("edge-ttt/allowed", b"fine", qos=1).wait_for_publish(10)
        assert drops == [], drops
    finally:
        client.disconnect()
        client.loop_stop()
        broker.stop()
