"""Summaries in many chunks reach the dataset. The collector held every chunk of a summary not yet
complete unacknowledged, and mosquitto sends a client nothing more while 20 QoS 1 messages wait
for its acknowledgement: a summary of 20 chunks or more (`drift.chunk_bytes = 1024`, the smallest
allowed, cuts the six-channel summary of about 21 kB into 21), or the first chunks of 20 devices'
summaries arriving before their second ones, stopped the collector for good. It stored nothing
more from any device, the agents re-sent every `ack_timeout_s` into the same wall, and a restart
got the same 20 messages again (found with `edge-ttt run` and `edge-ttt collect` processes: 18
summaries spooled, 105 re-sends, 0 stored, the collector's counters `"messages": 20`)."""

from __future__ import annotations

from tests.conftest import wait_for
from tests.test_monitor_collector import (
    T0,
    Running,
    config,
    make_summary,
    messages,
    publish,
    publisher,
    stored_ids,
)


def test_a_summary_of_more_chunks_than_the_broker_lets_wait_is_stored(broker, tmp_path):
    location = str(tmp_path / "fleet")
    running = Running(config(broker.port, location))
    agents = publisher(broker.port)
    try:
        big = make_summary("dev-big", T0, seed=1)
        chunks = messages(big, chunk_bytes=100)
        assert len(chunks) >= 30
        publish(agents, "dev-big", chunks)
        later = make_summary("dev-other", T0, seed=2)  # and the fleet's other summaries still arrive
        publish(agents, "dev-other", messages(later))
        assert wait_for(lambda: sorted(stored_ids(location)) == sorted([big.summary_id, later.summary_id]))
    finally:
        running.stop()
        agents.disconnect()
        agents.loop_stop()


def test_first_chunks_of_many_devices_before_their_last_ones_are_all_stored(broker, tmp_path):
    location = str(tmp_path / "fleet")
    running = Running(config(broker.port, location))
    agents = publisher(broker.port)
    made = {f"dev-{d}": make_summary(f"dev-{d}", T0, seed=d) for d in range(24)}
    cut = {device: messages(s) for device, s in made.items()}
    try:
        assert min(map(len, cut.values())) >= 2
        rounds = max(map(len, cut.values()))
        for index in range(rounds):  # every device's chunk 0, then every device's chunk 1, ...
            for device, chunks in cut.items():
                if index < len(chunks):
                    publish(agents, device, [chunks[index]])
        expected = sorted(s.summary_id for s in made.values())
        assert wait_for(lambda: sorted(stored_ids(location)) == expected)
        assert running.collector.receiver.counters.accepted == len(made)
    finally:
        running.stop()
        agents.disconnect()
        agents.loop_stop()
