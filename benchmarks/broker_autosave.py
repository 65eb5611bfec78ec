"""Broker persistence benchmark: what mosquitto's autosave settings cost and what a crash keeps.

For each setting, a private mosquitto (persistence on, no queue limit) holds the persistent QoS 1
session of an absent agent; a publisher sends frames of 300 bytes (as fast as possible, or paced
at the 100-device load of 500 frames/s); the broker is SIGKILLed right after the last PUBACK and
restarted; the agent's session then receives what the broker's store kept. The numbers behind
docs/agent.md's "The broker side" and configs/mosquitto-fleet.conf's autosave choice.

    .venv/bin/python -m benchmarks.broker_autosave [--frames 5000] [--paced 10000] [--rate 500]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.broker import Broker

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # mosquitto lines
    "every 1800 s (default)": "autosave_interval 1800",
    "every change": "autosave_on_changes true\nautosave_interval 1",
    "every 1 s (fleet config)": "autosave_interval 1",
}
TOPIC = "edge-ttt/dev/dt/0"


def session(port: int, received: list | None = None) -> paho.Client:
    """The agent's persistent session (MQTT v5, no clean start, one hour's expiry), subscribed."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="agent", protocol=paho.MQTTv5)
    if received is not None:
        client.on_message = lambda *_: received.append(1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe("edge-ttt/+/dt/+", qos=1)[1]
    return client


def publish(port: int, frames: int, rate: float | None) -> float:
    """Frames/s accepted: all sent (paced at `rate` when given) and each acknowledged."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload, infos, start = os.urandom(300), [], time.monotonic()
    for k in range(frames):
        infos.append(client.publish(TOPIC, payload, qos=1))
        if rate is not None:
            time.sleep(max(0.0, start + (k + 1) / rate - time.monotonic()))
    for info in infos:
        info.wait_for_publish(600)
    elapsed = time.monotonic() - start
    client.disconnect()
    client.loop_stop()
    return frames / elapsed


def run(setting: str, frames: int, rate: float | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        broker = Broker(store)
        text = broker.config.read_text().replace("persistence false\n", "")
        lines = f"persistence true\npersistence_location {store}/\nmax_queued_messages 0\n{setting}\n"
        broker.config.write_text(text + lines)
        broker.start()
        agent = session(broker.port)
        time.sleep(0.5)  # the subscription is acknowledged
        agent.disconnect()
        agent.loop_stop()
        accepted = publish(broker.port, frames, rate)
        broker.restart(kill=True)
        received: list = []
        agent = session(broker.port, received)
        time.sleep(3.0)
        agent.disconnect()
        agent.loop_stop()
        broker.stop()
    return {"frames": frames, "offered_per_s": rate, "accepted_per_s": round(accepted), "kept": len(received)}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.broker_autosave", description=__doc__.partition("\n\n")[0]
    )
    parser.add_argument("--frames", type=int, default=5000, help="frames sent as fast as possible")
    parser.add_argument("--paced", type=int, default=10000, help="frames sent at --rate")
    parser.add_argument("--rate", type=float, default=500.0, help="frames per second of the paced part")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "broker_autosave.json",
        help="the result file",
    )
    args = parser.parse_args()
    results = {}
    for name, setting in SETTINGS.items():
        results[name] = {
            "fast": run(setting, args.frames, None),
            "paced": run(setting, args.paced, args.rate),
        }
        print(name, json.dumps(results[name]), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
