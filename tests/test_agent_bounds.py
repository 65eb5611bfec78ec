"""Bounded resources under hostile input, against a real agent and mosquitto: payloads over the
limit refused before queueing, the inbox bounded in bytes, the live streams bounded (LRU), and a
prompt exit on SIGTERM with many streams."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge_ttt.agent import Agent
from edge_ttt.agent.config import load_config
from edge_ttt.stream.codec import encode
from tests.agent_harness import Listener, frames, start, write_config
from tests.conftest import wait_for


def test_a_payload_over_the_limit_is_refused_before_it_is_queued(tmp_path, bundle_dir, broker):
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port)))
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    try:
        for _ in range(3):
            listener.publish("edge-ttt/dev-x/dt/0", b"\0" * 100_000)  # over the default 65,536
        assert wait_for(lambda: agent.counters.rejected["too_large"] == 3)
        assert agent.inbox.counters.received == 0 and agent.inbox.counters.high_water_bytes == 0
        assert agent.status()["counters"]["decode_errors"] == {"too_large": 3}
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()


def test_the_inbox_is_bounded_in_bytes(tmp_path, bundle_dir, broker, monkeypatch):
    extra = "[queue]\nmax_frame_bytes = 200000\nmax_bytes = 500000\n"
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, broker.port, extra=extra)))
    busy = threading.Event()
    original = Agent.handle

    def stuck(self, message):  # the worker is busy until the test lets it go
        busy.wait(20)
        original(self, message)

    monkeypatch.setattr(Agent, "handle", stuck)
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    try:
        for _ in range(10):
            listener.publish("edge-ttt/dev-y/dt/0", b"\0" * 150_000)
        assert wait_for(lambda: agent.inbox.counters.received == 10)
        # one message held by the stuck worker, at most three queued (450,000 bytes and topics)
        assert agent.inbox.counters.high_water_bytes <= 500_000 and agent.inbox.bytes <= 500_000
        assert agent.inbox.counters.dropped >= 6
        assert agent.status()["counters"]["queue_dropped"] == agent.inbox.counters.dropped
    finally:
        busy.set()
        agent.stop_event.set()
        thread.join(10)
        listener.close()


def test_streams_beyond_max_streams_are_evicted_checkpointed_shipped_and_restored(
    tmp_path, bundle_dir, broker, caplog
):
    from edge_ttt.drift.shipper import device_of

    config = write_config(tmp_path, bundle_dir, broker.port, state="max_streams = 5")
    agent = Agent(load_config(config))
    listener = Listener(broker.port, ["edge-ttt/+/pred", "edge-ttt/+/drift"])
    thread = start(agent)
    sent = frames(3)  # 75 samples: one window each
    began = time.monotonic()
    try:
        for d in range(8):
            for frame in sent:
                listener.publish(f"edge-ttt/dev{d}/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.of("/pred")) == 8)
        assert len(agent.pipelines) == 5 and agent.pipelines.evicted == 3
        assert [k[0] for k in agent.pipelines] == [f"dev{d}" for d in range(3, 8)]  # least recent first
        state = tmp_path / "state"
        assert wait_for(lambda: all((state / f"dev{d}__0.npz").is_file() for d in range(3)))
        assert not (state / "dev3__0.npz").exists()  # live streams wait for their checkpoint
        # the evicted streams' open intervals were closed and shipped
        shipped = lambda: {device_of(p.split(b"\n", 1)[1]) for _, p in listener.raw}  # noqa: E731
        assert wait_for(lambda: shipped() == {"dev0", "dev1", "dev2"})
        # dev0 returns: dev3 is evicted and dev0 goes on from its checkpoint
        more = frames(6)[3:]
        for frame in more:
            listener.publish("edge-ttt/dev0/dt/0", encode(frame))
        # the worker counts the restore before it inserts the pipeline: wait for both
        assert wait_for(lambda: agent.pipelines.states_restored == 1 and ("dev0", "0") in agent.pipelines)
        assert agent.pipelines.evicted == 4
        assert agent.status()["counters"]["streams_evicted"] == 4
        evicted_lines = [r for r in caplog.records if r.getMessage().startswith("stream evicted")]
        # four evictions, one line per 10 s (rate-limited): one, unless a loaded machine took longer
        assert 1 <= len(evicted_lines) <= 1 + int((time.monotonic() - began) // 10)
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()


def test_sigterm_with_many_streams_exits_within_the_stop_timeout(tmp_path, bundle_dir, broker):
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    state = "stop_timeout_s = 1.0"
    spool = tmp_path / "spool"
    config = write_config(tmp_path, bundle_dir, broker.port, state=state, drift=f'spool_dir = "{spool}"')
    cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)]
    listener = Listener(broker.port, ["edge-ttt/agents/+/status"])
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stderr=subprocess.PIPE, text=True)
    n = 600  # unbounded, their last summaries and states took 5.3 s here
    try:
        assert wait_for(lambda: any(s["state"] == "online" for s in listener.of("/status")))
        sent = [encode(f) for f in frames(3)]
        windows = lambda: max(s.get("counters", {}).get("windows", 0) for s in listener.of("/status"))  # noqa: E731
        for batch in range(0, n, 100):  # paced: the broker's queue for the agent holds 1,000
            for d in range(batch, batch + 100):
                for payload in sent:
                    listener.client.publish(f"edge-ttt/dev{d}/dt/0", payload, qos=1)
            assert wait_for(lambda end=batch + 100: windows() == end, timeout=30), listener.of("/status")[-1]
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        took = time.monotonic() - start
        _, err = proc.communicate()
    finally:
        proc.kill()
        listener.close()
    stop = [json.loads(line) for line in err.splitlines() if '"stop:' in line]
    assert len(stop) == 1, err[-2000:]
    assert stop[0]["seconds"] <= 1.0 + 0.2
    assert took < 4.0, (took, stop[0])
    # every stream's last summary is on disk: one-summary files, and the rest in a batch file that
    # the next start unpacks (no collector here: nothing was acknowledged and deleted)
    assert stop[0]["summaries_lost"] == 0
    assert len(spooled_ids(spool)) == n
    assert stop[0]["states_written"] + stop[0]["states_left"] <= n  # the stop's own: each stream once


def spooled_ids(spool: Path) -> list[str]:
    """The summary ids in a spool, one-summary files and batch files alike."""
    from edge_ttt.drift.schema import read_table

    files = [*spool.glob("*.parquet"), *spool.glob("*.batch")]
    return [i for f in files for i in read_table(f).column("summary_id").to_pylist()]


def test_a_stops_batch_is_unpacked_at_the_next_start(tmp_path, bundle_dir, broker):
    spool = tmp_path / "spool"
    config = write_config(tmp_path, bundle_dir, broker.port, drift=f'spool_dir = "{spool}"')
    agent = Agent(load_config(config))
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    try:
        for d in range(20):
            for frame in frames(3):
                listener.publish(f"edge-ttt/dev{d}/dt/0", encode(frame))
        assert wait_for(lambda: len(listener.of("/pred")) == 20)
        agent.shipper.unpack = lambda deadline=None: len(agent.spool.batches())  # this stop leaves it
        agent.stop_event.set()
        thread.join(10)
    finally:
        listener.close()
    assert len([p for p in spool.iterdir() if p.suffix == ".batch"]) == 1  # the spooler's queue, in one file
    ids = spooled_ids(spool)
    assert len(ids) == 20
    again = Agent(load_config(config))  # the next start: its shipper unpacks the batch
    thread = start(again)
    try:
        assert wait_for(lambda: not again.spool.batches())
        assert sorted(spooled_ids(spool)) == sorted(ids) and len(set(ids)) == 20
        assert len(again.spool.pending()) == 20
    finally:
        again.stop_event.set()
        thread.join(10)


def test_frame_counters_are_there_from_the_start_and_survive_eviction(tmp_path, bundle_dir, broker):
    config = write_config(tmp_path, bundle_dir, broker.port, state="max_streams = 1")
    agent = Agent(load_config(config))
    before = agent.status()["counters"]
    assert before["frames_duplicates"] == before["frames_missing"] == before["gaps"] == 0
    assert before["adapt_steps"] == before["fallbacks"] == 0 and before["windows"] == 0
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    thread = start(agent)
    sent = frames(3)
    try:
        for frame in [*sent, sent[0]]:  # the first frame twice: one duplicate
            listener.publish("edge-ttt/dev0/dt/0", encode(frame))
        assert wait_for(lambda: agent.status()["counters"]["frames_duplicates"] == 1)
        for frame in sent:  # a second device: dev0 is evicted
            listener.publish("edge-ttt/dev1/dt/0", encode(frame))
        assert wait_for(lambda: agent.pipelines.evicted == 1)
        assert agent.status()["counters"]["frames_duplicates"] == 1
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()
