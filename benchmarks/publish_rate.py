"""Publish-rate benchmark: how many frames per second `firmware-sim devices` pushes from one core.

Two runs through a private local mosquitto, each device with its own MQTT connection (QoS 1):
paced at the target (default 100 devices x 50 Hz, 10 samples per frame = 500 frames/s), and as
fast as possible for a fixed number of frames, which ends when the last frame is acknowledged.
The publisher process is pinned to one core; the broker and a counting subscriber (`mosquitto_sub`,
one line per frame received) are processes of their own, so only the simulator's work is measured.

    .venv/bin/python -m benchmarks.publish_rate [--devices 100] [--rate 50] [--duration 10] [--frames 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from firmware_sim.broker import Broker
from firmware_sim.devices import Link, SimDevice, fleet_schedule, pump
from firmware_sim.scenarios import BUILTINS
from firmware_sim.signals import ImuSource

ROOT = Path(__file__).resolve().parents[1]


def fleet(port: int, n: int, rate: float, samples_per_frame: int, tag: str) -> tuple[list, list, list]:
    devices, links, topics = [], [], []
    for i in range(n):
        device = f"{tag}-{i:03d}"
        drift = BUILTINS["clean"].for_device(i, device, ImuSource.channels)
        devices.append(SimDevice(device, ImuSource(rate, 0, device), drift, rate, samples_per_frame, 0))
        links.append(Link("127.0.0.1", port, device))
        topics.append(f"edge-ttt/{device}/dt/0")
    for link in links:
        link.open()
    for link in links:
        link.connected.wait(10)
    return devices, links, topics


def received(log: Path) -> int:
    return log.read_bytes().count(b"\n")


def run(args: argparse.Namespace, port: int, log: Path, paced: bool) -> dict:
    tag = "paced" if paced else "max"
    devices, links, topics = fleet(port, args.devices, args.rate, args.samples_per_frame, tag)
    before = received(log)
    schedule = fleet_schedule(devices, links, topics, args.duration if paced else None)
    if not paced:
        schedule = (item for _, item in zip(range(args.frames), schedule, strict=False))
    cpu = time.process_time()
    summary = pump(schedule, links, paced=paced)
    cpu = time.process_time() - cpu
    deadline = time.monotonic() + 20
    while received(log) - before < summary.published and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "mode": "paced" if paced else "as fast as possible",
        "frames_published": summary.published,
        "frames_received": received(log) - before,
        "dropped": summary.dropped,
        "elapsed_s": round(summary.elapsed_s, 2),
        "frames_per_s": round(summary.published / summary.elapsed_s, 1),
        "publisher_cpu_share_of_one_core": round(cpu / summary.elapsed_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--samples-per-frame", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the paced run")
    parser.add_argument("--frames", type=int, default=20000, help="frames of the as-fast-as-possible run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/publish_rate.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The counting subscriber is Python too; mosquitto would drop what it queues for it beyond
        # 1,000 messages (its default) during the burst, and that is not the publisher's doing.
        broker = Broker(Path(tmp), listener_options="max_queued_messages 0")
        broker.start()
        log = Path(tmp) / "received.txt"
        with log.open("wb") as sink:
            counter = subprocess.Popen(
                ["mosquitto_sub", "-p", str(broker.port), "-t", "edge-ttt/+/dt/0", "-q", "1", "-F", "%t"],
                stdout=sink,
            )
        time.sleep(1.0)  # mosquitto_sub has no readiness signal; it subscribes well within this
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # children started before keep both cores
        try:
            results = [run(args, broker.port, log, paced) for paced in (True, False)]
        finally:
            counter.terminate()
            counter.wait(5)
            broker.stop()
    report = {
        "devices": args.devices,
        "sample_rate_hz": args.rate,
        "samples_per_frame": args.samples_per_frame,
        "target_frames_per_s": args.devices * args.rate / args.samples_per_frame,
        "qos": 1,
        "cpus": os.cpu_count(),
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
