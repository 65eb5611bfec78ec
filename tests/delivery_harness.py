"""What the delivery fault tests share: an agent or a collector as its own process, frames for
several devices, and the ledger of summaries made, stored and lost."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from edge_ttt.drift.receiver import MessageError, parse_message
from edge_ttt.drift.spool import summary_id_of
from edge_ttt.stream.codec import encode
from tests.agent_harness import Listener, frames, write_config
from tests.test_monitor_collector import stored_ids

ROOT = Path(__file__).resolve().parents[1]
DRIFT = 'interval_windows = 2\nspool_dir = "spool"\nack_timeout_s = 2.0\n'  # 8 windows: 4 summaries


def agent_config(tmp_path: Path, bundle_dir: Path, port: int, drift: str = DRIFT) -> Path:
    return write_config(tmp_path, bundle_dir, port, drift=drift)


def agent_process(config: Path, log: Path) -> subprocess.Popen:
    """`edge-ttt run` as its own process, its log appended to `log`."""
    cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)]
    with log.open("a") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stderr=out, stdout=out)


def collector_process(tmp_path: Path, port: int, location: Path) -> subprocess.Popen:
    """`edge-ttt collect` as its own process (a persistent session under one client id)."""
    toml = tmp_path / "monitor.toml"
    toml.write_text(
        f"[mqtt]\nport = {port}\nreconnect_min_s = 1.0\nreconnect_max_s = 1.0\n"
        f'[collector]\ndataset = "{location}"\nclient_id = "fleet"\nflush_summaries = 3\nflush_s = 0.3\n'
    )
    cmd = [sys.executable, "-m", "edge_ttt.cli", "collect", "--config", str(toml)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and "collecting" in proc.stderr.readline()  # subscribed
    return proc


def send_frames(listener: Listener, devices: list[str], first: int, count: int) -> None:
    """Frames `first` to `first + count` of each device's sequence, at QoS 1."""
    for device in devices:
        for frame in frames(first + count)[first:]:
            listener.publish(f"edge-ttt/{device}/dt/0", encode(frame))


def wire_ids(listener: Listener) -> set[str]:
    """Summary ids seen on the drift topics (the listener subscribes to them)."""
    ids = set()
    with listener.lock:
        raw = list(listener.raw)
    for _, payload in raw:
        with contextlib.suppress(MessageError):  # the listener sees only drift messages; be safe
            ids.add(parse_message(payload).summary_id)
    return ids


def spooled_ids(spool_dir: Path) -> set[str]:
    return {summary_id_of(p) for p in spool_dir.glob("*.parquet")}  # never a `.tmp` being written


def ledger(listener: Listener, spool_dir: Path, location: Path) -> dict[str, int]:
    """Made: every id that was ever sent or is still spooled. Stored: rows in the dataset (a
    duplicate row would show as stored > made). Lost: made, not stored and not spooled."""
    made = wire_ids(listener) | spooled_ids(spool_dir)
    stored = stored_ids(str(location))
    lost = made - set(stored) - spooled_ids(spool_dir)
    return {"made": len(made), "stored": len(stored), "unique": len(set(stored)), "lost": len(lost)}
