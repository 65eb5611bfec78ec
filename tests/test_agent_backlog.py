"""A broker's backlog bigger than the inbox: what the broker kept for the agent while it was away
arrives at reconnect as fast as the network takes it, paho acknowledges each message on arrival, and
`queue.when_full` drops what does not fit, for good (the broker will not send it again). Measured
with `edge-ttt run` and mosquitto: 20,000 frames kept while the agent was down (40 s of the
100-device load), 744 dropped at reconnect, and nothing in the log but a `frames missing` line;
the status counter `queue_dropped` alone said so. Now a warning (at most once per 10 s) names the
bound and the fix."""

from __future__ import annotations

import logging
import time

from edge_ttt.agent import Agent
from edge_ttt.agent.config import load_config
from edge_ttt.stream.codec import encode
from tests.agent_harness import Listener, frames, start, write_config
from tests.conftest import wait_for


def backlog(config, broker, monkeypatch, n: int, delay_s: float) -> tuple[Agent, Listener]:
    """An agent whose broker kept `n` frames while it was away, and whose engine takes `delay_s` a
    batch (so that the backlog outruns it); the listener that published them, to close."""
    from edge_ttt.adapt.engine import Engine

    first = Agent(config)  # its persistent session: the broker keeps what comes while it is away
    thread = start(first)
    first.stop_event.set()
    thread.join(20)
    listener = Listener(broker.port, ["edge-ttt/+/pred"])
    for frame in frames(n, samples=8):
        listener.client.publish("edge-ttt/dev-away/dt/0", encode(frame), qos=1).wait_for_publish(5)
    original = Engine.process
    monkeypatch.setattr(Engine, "process", lambda self, x: (time.sleep(delay_s), original(self, x))[1])
    return Agent(config), listener


def test_a_backlog_beyond_the_inbox_is_dropped_with_a_warning_naming_the_bound(
    tmp_path, bundle_dir, broker, monkeypatch, caplog
):
    config = load_config(write_config(tmp_path, bundle_dir, broker.port, extra="[queue]\nmax_frames = 50\n"))
    agent, listener = backlog(config, broker, monkeypatch, 400, 0.02)
    with caplog.at_level(logging.WARNING, logger="edge_ttt.agent"):
        thread = start(agent)
        try:
            assert wait_for(lambda: agent.inbox.counters.received >= 400)
            assert agent.inbox.counters.dropped > 0
            warnings = [r.getMessage() for r in caplog.records if "inbox full" in r.getMessage()]
            assert len(warnings) == 1 and "queue.max_frames" in warnings[0]
        finally:
            agent.stop_event.set()
            thread.join(20)
            listener.close()


def test_a_stop_says_how_many_received_frames_it_leaves_unprocessed(
    tmp_path, bundle_dir, broker, monkeypatch, caplog
):
    """Frames in the inbox at a stop were acknowledged to the broker on arrival: nothing sends them
    again. Measured with `edge-ttt run`: a SIGTERM 3 s after a restart into a backlog of 9,600 frames
    left 8,564 of them unprocessed, and the stop line said `summaries_lost=0` and nothing else."""
    config = load_config(write_config(tmp_path, bundle_dir, broker.port))
    agent, listener = backlog(config, broker, monkeypatch, 300, 0.1)
    with caplog.at_level(logging.INFO, logger="edge_ttt.agent"):
        thread = start(agent)
        try:
            assert wait_for(lambda: agent.inbox.counters.received >= 300)
        finally:
            agent.stop_event.set()
            thread.join(20)
            listener.close()
    (stop,) = [r for r in caplog.records if r.getMessage().startswith("stop:")]
    assert stop.levelno == logging.WARNING and stop.fields["frames_unprocessed"] > 0
    assert stop.fields["frames_unprocessed"] == len(agent.inbox)
