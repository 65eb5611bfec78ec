"""A broker that takes only small packets (mosquitto `max_packet_size`): it closes the connection on
a larger one, and paho sends a queued QoS 1 message again after every reconnect, so one drift
summary in a single 18 KB chunk put the agent into a reconnect loop that also stopped its
predictions (and the log blamed a duplicate client id). The agent reads the limit from MQTT v5's
CONNACK and cuts its chunks to fit."""

from __future__ import annotations

import pytest

from edge_ttt.agent import Agent
from edge_ttt.agent.config import load_config
from edge_ttt.stream.codec import encode
from tests.agent_harness import Listener, frames, start, write_config
from tests.conftest import wait_for

LIMIT = 4000  # bytes; a summary of the test model is several times this


@pytest.fixture
def small_broker(tmp_path):
    from firmware_sim.broker import Broker

    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker", listener_options=f"max_packet_size {LIMIT}")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_summaries_reach_the_fleet_through_a_broker_that_takes_small_packets(
    tmp_path, bundle_dir, small_broker
):
    from tests.test_monitor_collector import Running
    from tests.test_monitor_collector import config as monitor_config

    drift = 'interval_windows = 4\nspool_dir = "spool"\n'
    agent = Agent(load_config(write_config(tmp_path, bundle_dir, small_broker.port, drift=drift)))
    listener = Listener(small_broker.port, ["edge-ttt/+/pred", "edge-ttt/+/drift"])
    collector = Running(monitor_config(small_broker.port, str(tmp_path / "fleet")))
    thread = start(agent)
    try:
        for frame in frames(12):  # 8 windows: two summaries
            listener.publish("edge-ttt/dev-s/dt/0", encode(frame))
        assert wait_for(lambda: agent.spool.counters.shipped == 2 and not agent.spool.pending(), 20)
        assert len(listener.of("/pred")) == 8
        assert agent.transport.max_packet == LIMIT and agent.transport.connects == 1  # never dropped
        drift = [payload for topic, payload in listener.raw if topic.endswith("/drift")]
        assert len(drift) > 2 and all(len(p) <= LIMIT for p in drift)  # each summary in several chunks
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()
        collector.stop()
