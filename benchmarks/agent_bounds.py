"""Bounded resources under hostile input (issue #19, targets 3 and 4), against `edge-ttt run` and a
private mosquitto, everything on this machine:

- flood: 2,000 payloads of 1 MiB at QoS 0; the agent's resident memory before, at its peak and
  after (default `queue.max_frame_bytes`, and raised to 2 MiB so that the inbox's byte bound holds);
- streams: N live streams (each a window every ~13 s, checkpoints every 10 s) and one live device at
  50 Hz whose prediction latency is measured (frame publish to prediction receipt), then SIGTERM:
  seconds to exit, and the agent's `stop:` line.

    .venv/bin/python -m benchmarks.agent_bounds --artifacts runs/cnn-bn [--streams 1000 3000]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.agent_load import Listener, _proc_stats, agent_parser
from edge_ttt.artifacts import load_bundle
from edge_ttt.stream.codec import Frame, encode
from firmware_sim.broker import Broker

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_704_067_200_000_000_000


class Agent:
    """`edge-ttt run` with a config for `broker`; its stderr (JSON log lines) kept."""

    def __init__(self, work: Path, port: int, artifacts: Path, extra: str = "") -> None:
        config = work / "agent.toml"
        config.write_text(
            f'[agent]\nid = "bounds"\n[mqtt]\nport = {port}\n'
            f'[model]\nartifacts = "{artifacts.resolve()}"\ndevice = "cpu"\n[status]\ninterval_s = 1.0\n'
            f'[drift]\nspool_dir = "{work / "spool"}"\n{extra}\n'
        )
        self.log = (work / "agent.log").open("w+")
        cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)]
        self.process = subprocess.Popen(cmd, cwd=ROOT, stderr=self.log)

    def rss_mb(self) -> float:
        return _proc_stats(self.process.pid)[1] / 2**20

    def stop(self) -> dict:
        """SIGTERM; seconds to exit and the agent's `stop:` line."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        took = time.monotonic() - start
        self.log.seek(0)
        stop = [json.loads(x) for x in self.log if '"stop:' in x]
        return {"exit_code": code, "exit_s": round(took, 2), "stop_line": stop[-1] if stop else None}


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def flood(args: argparse.Namespace, max_frame_bytes: int | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="agent-flood-"))
    broker = Broker(work)
    broker.start()
    extra = f'[state]\ndir = "{work / "state"}"\n'
    if max_frame_bytes is not None:
        extra += f"[queue]\nmax_frame_bytes = {max_frame_bytes}\n"
    agent = Agent(work, broker.port, args.artifacts, extra)
    listener = Listener(broker.port)
    while not listener.status.get("counters"):
        time.sleep(0.1)
    time.sleep(2.0)
    before = agent.rss_mb()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, agent.rss_mb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    publisher = _client(broker.port, "flood")
    payload = np.random.default_rng(0).bytes(2**20)
    start = time.monotonic()
    for i in range(args.payloads):
        publisher.publish(f"edge-ttt/flood{i % 10}/dt/0", payload, qos=0)
    while publisher.want_write():
        time.sleep(0.05)
    time.sleep(5.0)  # let the broker and the agent take it all
    done.set()
    sampler.join()
    counters = listener.status.get("counters", {})
    result = {
        "max_frame_bytes": max_frame_bytes or 65536,
        "payloads": args.payloads,
        "publish_s": round(time.monotonic() - start - 5.0, 1),
        "rss_mb_before": round(before, 1),
        "rss_mb_peak": round(peak, 1),
        "rss_mb_growth_peak": round(peak - before, 1),
        "rss_mb_after": round(agent.rss_mb(), 1),
        "decode_errors": counters.get("decode_errors"),
        "queue_dropped": counters.get("queue_dropped"),
    }
    result["stop"] = agent.stop()
    publisher.loop_stop()
    listener.client.loop_stop()
    broker.stop()
    return result


def streams(args: argparse.Namespace, n: int) -> dict:
    bundle = load_bundle(args.artifacts)
    info = bundle.manifest.model
    period = round(1e9 / info.sample_rate_hz)
    work = Path(tempfile.mkdtemp(prefix="agent-streams-"))
    broker = Broker(work, "max_queued_messages 100000\nset_tcp_nodelay true\n")
    broker.start()
    extra = f'[state]\ndir = "{work / "state"}"\ncheckpoint_interval_s = 10.0\nmax_streams = {n + 1}\n'
    agent = Agent(work, broker.port, args.artifacts, extra)
    listener = Listener(broker.port)
    while not listener.status.get("counters"):
        time.sleep(0.1)
    pub = _client(broker.port, "streams")
    rng = np.random.default_rng(0)
    nxt = {d: [0, T0] for d in range(n)}  # seq, next sample time

    def send(device: str, state: list[int], samples: int) -> float:
        x = rng.standard_normal((samples, len(info.channels))).astype(np.float32)
        pub.publish(f"edge-ttt/{device}/dt/0", encode(Frame(0, state[0], state[1], period, x)), qos=1)
        state[0] += 1
        state[1] += samples * period
        return state[1] - period  # the frame's last sample time

    for batch in range(0, n, 100):  # every stream gets a window, paced for the broker's queue
        for d in range(batch, min(n, batch + 100)):
            for _ in range(-(-info.window // 25)):  # frames of 25 samples up to one window
                send(f"s{d}", nxt[d], 25)
        while listener.status.get("counters", {}).get("windows", 0) < min(n, batch + 100):
            time.sleep(0.1)
    live = [0, T0]
    published: dict[int, float] = {}
    tick, per_tick = 0.2, max(1, round(n * 0.2 / 10.0))  # each stream a frame of 32 samples per 10 s
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < args.duration:
        published[send("live", live, 10)] = time.monotonic()
        for _ in range(per_tick):
            d = k % n
            send(f"s{d}", nxt[d], 32)
            k += 1
        pause = start + (int((time.monotonic() - start) / tick) + 1) * tick - time.monotonic()
        time.sleep(max(0.0, pause))
    time.sleep(2.0)
    with listener.lock:
        arrivals = [(t, r) for dev, t, r in listener.arrivals if dev == "live"]
    ends = sorted(published)
    lat = []
    for t_end, received in arrivals:
        i = int(np.searchsorted(ends, t_end))
        if i < len(ends):
            lat.append(1000 * (received - published[ends[i]]))
    counters = listener.status.get("counters", {})
    rss = agent.rss_mb()
    stop = agent.stop()
    pub.loop_stop()
    listener.client.loop_stop()
    broker.stop()
    a = np.asarray(lat)
    return {
        "streams": n,
        "duration_s": args.duration,
        "checkpoint_interval_s": 10.0,
        "live_predictions": len(lat),
        "live_latency_ms_p50": round(float(np.percentile(a, 50)), 1) if len(a) else None,
        "live_latency_ms_p99": round(float(np.percentile(a, 99)), 1) if len(a) else None,
        "live_latency_ms_max": round(float(a.max()), 1) if len(a) else None,
        "windows": counters.get("windows"),
        "queue_dropped": counters.get("queue_dropped"),
        "checkpoints_failed": counters.get("checkpoints_failed"),
        "agent_rss_mb": round(rss, 1),
        "stop": stop,
    }


def main(argv: list[str] | None = None) -> None:
    p = agent_parser("agent_bounds", __doc__)
    p.add_argument("--payloads", type=int, default=2000, help="1 MiB payloads of the flood")
    p.add_argument("--streams", type=int, nargs="*", default=[1000, 3000], help="live streams, one run each")
    p.add_argument("--duration", type=float, default=60.0, help="seconds each streams run lasts")
    p.add_argument("--skip-flood", action="store_true", help="run the streams part only")
    args = p.parse_args(argv)
    result: dict = {"flood": [], "streams": []}
    if not args.skip_flood:
        for limit in (None, 2 * 2**20):
            result["flood"].append(flood(args, limit))
            print(json.dumps(result["flood"][-1]), flush=True)
    for n in args.streams:
        result["streams"].append(streams(args, n))
        print(json.dumps(result["streams"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
