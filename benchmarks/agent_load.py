"""Agent load benchmark: N simulated devices through a real local mosquitto into `edge-ttt run`.

Measures what the agent sustains on this machine with the default policy: frames and windows per
second, drops, and latency from the publish of the frame that completes a window to the arrival
of its prediction, plus the agent process's CPU and memory. Everything runs here: the broker, a
publisher pacing frames in real time, a listener for predictions, and the agent as its own
process (so its CPU time is its own).

    .venv/bin/python -m benchmarks.agent_load --artifacts runs/cnn-bn [--devices 100] [--duration 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.artifacts import load_bundle
from edge_ttt.stream.codec import Frame, encode
from firmware_sim.broker import Broker

ROOT = Path(__file__).resolve().parents[1]


def _proc_stats(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, resident bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


class Listener:
    """Receives predictions and status; latency is matched to the frame that ended each window."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, int, float]] = []  # device, t_end_ns, receive time
        self.status: dict = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="load-listener")
        self.client.on_connect = lambda c, *_: (
            c.subscribe("edge-ttt/+/pred", 1),
            c.subscribe("edge-ttt/agents/+/status", 1),
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        now = time.monotonic()
        body = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/status"):
                self.status = body
            else:
                self.arrivals.append((body["device"], body["t_end_ns"], now))


def run(args: argparse.Namespace) -> dict:
    bundle = load_bundle(args.artifacts)
    info = bundle.manifest.model
    period_ns = round(1e9 / info.sample_rate_hz)
    channels = len(info.channels)
    work = Path(tempfile.mkdtemp(prefix="agent-load-"))
    broker = Broker(work)
    broker.start()
    config = work / "agent.toml"
    config.write_text(
        f'[agent]\nid = "load"\n[mqtt]\nport = {broker.port}\n'
        f'[model]\nartifacts = "{Path(args.artifacts).resolve()}"\npolicy = "{args.policy}"\ndevice = "cpu"\n'
        f'[status]\ninterval_s = 1.0\n[state]\ndir = "{work / "state"}"\n[logging]\nlevel = "warning"\n'
    )
    agent = subprocess.Popen([sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)], cwd=ROOT)
    listener = Listener(broker.port)
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="load-publisher")
    publisher.max_queued_messages_set(0)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    while not listener.status:
        time.sleep(0.1)
    rng = np.random.default_rng(0)
    frame_s = args.samples / info.sample_rate_hz
    published: dict[tuple[str, int], float] = {}  # (device, last sample time) -> publish time
    seq = 0
    t0 = time.time_ns()
    start = time.monotonic()
    cpu0, _ = _proc_stats(agent.pid)
    while time.monotonic() - start < args.duration:
        for d in range(args.devices):
            device = f"dev{d:03d}"
            frame = Frame(
                0,
                seq,
                t0 + seq * args.samples * period_ns,
                period_ns,
                rng.standard_normal((args.samples, channels)).astype(np.float32),
            )
            publisher.publish(f"edge-ttt/{device}/dt/0", encode(frame), qos=1)
            published[(device, int(frame.times()[-1]))] = time.monotonic()
            # spread the devices over the frame period, like unsynchronized sensors
            target = start + seq * frame_s + (d + 1) * frame_s / args.devices
            if (pause := target - time.monotonic()) > 0:
                time.sleep(pause)
        seq += 1
    wall = time.monotonic() - start
    time.sleep(2.0)  # let the last windows come back
    cpu1, rss = _proc_stats(agent.pid)
    status = listener.status
    agent.terminate()
    agent.wait(30)
    publisher.loop_stop()
    listener.client.loop_stop()
    broker.stop()
    with listener.lock:
        arrivals = list(listener.arrivals)
    # the window's last sample lies inside a frame; the frame's publish time is keyed by its last sample
    frame_ends = sorted(published)
    latencies = []
    by_device: dict[str, list[int]] = {}
    for device, end in frame_ends:
        by_device.setdefault(device, []).append(end)
    for device, t_end, received in arrivals:
        ends = by_device.get(device, [])
        i = int(np.searchsorted(ends, t_end))
        if i < len(ends):
            latencies.append(1000 * (received - published[(device, ends[i])]))
    counters = status.get("counters", {})
    frames_sent = seq * args.devices
    lat = np.asarray(latencies)
    return {
        "devices": args.devices,
        "sample_rate_hz": info.sample_rate_hz,
        "samples_per_frame": args.samples,
        "channels": channels,
        "policy": args.policy,
        "duration_s": round(wall, 2),
        "frames_sent": frames_sent,
        "frames_per_s_sent": round(frames_sent / wall, 1),
        "frames_processed": counters.get("frames"),
        "windows": counters.get("windows"),
        "windows_per_s": round((counters.get("windows") or 0) / wall, 1),
        "predictions_received": len(arrivals),
        "queue_dropped": counters.get("queue_dropped"),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "agent_cpu_share_of_one_core": round((cpu1 - cpu0) / wall, 3),
        "agent_rss_mb": round(rss / 2**20, 1),
        "cpus": os.cpu_count(),
    }


def agent_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark of the live agent takes: the bundle, and where the result goes."""
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}", description=(doc or "").partition("\n\n")[0]
    )
    p.add_argument("--artifacts", type=Path, required=True, help="the bundle the agent runs")
    results = ROOT / "benchmarks" / "results" / f"{name}.json"
    p.add_argument("--out", type=Path, default=results, help="the result file")
    return p


def main(argv: list[str] | None = None) -> None:
    p = agent_parser("agent_load", __doc__)
    p.add_argument("--devices", type=int, default=100, help="simulated devices publishing at once")
    p.add_argument("--samples", type=int, default=10, help="samples per frame (50 Hz: 5 frames/s per device)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds the devices publish")
    p.add_argument("--policy", default="steady", help="the agent's policy")
    args = p.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
