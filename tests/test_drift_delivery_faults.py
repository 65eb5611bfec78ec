"""Issue #19, target 1: no drift summary lost when the broker refuses the topic, the broker crashes
while the collector is away, the agent or the collector is killed, or the agent stops cleanly and
restarts. Real mosquitto on a free loopback port; agents and collectors as processes where they
are killed. Each test prints its figures (made / stored / lost) for docs/agent.md."""

from __future__ import annotations

import logging
import signal
import time

import pytest

from edge_ttt.agent import Agent
from edge_ttt.agent.config import load_config
from edge_ttt.monitor import dataset
from firmware_sim.broker import Broker
from tests.agent_harness import Listener, start
from tests.conftest import wait_for
from tests.delivery_harness import (
    agent_config,
    agent_process,
    collector_process,
    ledger,
    send_frames,
    spooled_ids,
    wire_ids,
)
from tests.test_monitor_collector import Running, config, stored_ids

TOPICS = ["edge-ttt/+/drift", "edge-ttt/agents/+/status"]
ACL = """topic readwrite edge-ttt/+/dt/+
topic readwrite edge-ttt/+/pred
topic readwrite edge-ttt/agents/#
topic readwrite edge-ttt/+/drift/ack
topic {drift} edge-ttt/+/drift
"""


def figures(name: str, counts: dict[str, int]) -> None:
    print(f"\nFIGURES {name}: {counts}")
    assert counts["lost"] == 0 and counts["stored"] == counts["unique"] == counts["made"], counts


def online(listener: Listener) -> bool:
    with listener.lock:
        return any(t.endswith("/status") and m.get("state") == "online" for t, m in listener.messages)


@pytest.fixture
def private_broker(tmp_path):
    made: list[Broker] = []

    def make(options: str) -> Broker:
        made.append(Broker(tmp_path, options))
        made[-1].start()
        return made[-1]

    yield make
    for b in made:
        b.stop()


def test_summaries_refused_by_the_acl_are_kept_reported_and_delivered_once_allowed(
    tmp_path, bundle_dir, private_broker, caplog
):
    acl = tmp_path / "acl"
    acl.write_text(ACL.format(drift="read"))  # the collector may subscribe, nobody may publish
    broker = private_broker(f"acl_file {acl}")
    location = tmp_path / "fleet"
    collector = Running(config(broker.port, str(location)))
    agent = Agent(load_config(agent_config(tmp_path, bundle_dir, broker.port)))
    listener = Listener(broker.port, TOPICS)
    thread = start(agent)
    try:
        with caplog.at_level(logging.WARNING):
            send_frames(listener, ["dev-a", "dev-b", "dev-c"], 0, 12)
            c = agent.spool.counters
            assert wait_for(lambda: c.written == 12 and c.refused >= 12)
        assert stored_ids(str(location)) == [] and len(agent.spool.pending()) == 12 and c.dropped == 0
        assert agent.status()["counters"]["drift_refused"] >= 12
        warned = [r for r in caplog.records if "refused" in r.getMessage()]
        assert warned and "Not authorized" in warned[0].fields["reason"]
        acl.write_text(ACL.format(drift="readwrite"))
        broker.restart()  # the new ACL: what was kept goes again at the reconnect or the timeout
        assert wait_for(lambda: not agent.spool.pending(), 30)
        figures("acl", ledger(listener, tmp_path / "spool", location))
    finally:
        agent.stop_event.set()
        thread.join(10)
        collector.stop()
        listener.close()


def test_predictions_and_acknowledgements_the_acl_refuses_are_counted_and_said(
    tmp_path, bundle_dir, private_broker, caplog
):
    """Before, the broker's PUBACK "Not authorized" for predictions and for the collector's
    acknowledgements went unnoticed: the status counted the predictions as published."""
    acl = tmp_path / "acl"
    refusing = ACL.format(drift="readwrite").replace("readwrite edge-ttt/+/pred", "read edge-ttt/+/pred")
    acl.write_text(refusing.replace("readwrite edge-ttt/+/drift/ack", "read edge-ttt/+/drift/ack"))
    broker = private_broker(f"acl_file {acl}")
    collector = Running(config(broker.port, str(tmp_path / "fleet")))
    agent = Agent(load_config(agent_config(tmp_path, bundle_dir, broker.port)))
    listener = Listener(broker.port, TOPICS)
    thread = start(agent)
    try:
        with caplog.at_level(logging.WARNING):
            send_frames(listener, ["dev-a", "dev-b"], 0, 12)
            status = lambda: agent.status()["counters"]  # noqa: E731
            assert wait_for(lambda: status()["publishes_refused"] >= status()["predictions_published"] > 0)
            assert wait_for(lambda: collector.collector.link.publishes_refused > 0)
        said = [r.getMessage() for r in caplog.records if "refused a message" in r.getMessage()]
        assert said and all("Not authorized" in m and "ACL" in m for m in said)
    finally:
        agent.stop_event.set()
        thread.join(10)
        collector.stop()
        listener.close()


def test_a_broker_killed_while_the_collector_is_away_loses_nothing(tmp_path, bundle_dir, private_broker):
    """Persistence on with the default autosave_interval (1800 s): the broker's memory of what it
    PUBACKed dies with it; the agent still holds every unacknowledged summary and sends it again."""
    store = tmp_path / "mosquitto-db"
    store.mkdir()
    broker = private_broker(f"persistence true\npersistence_location {store}/")
    location = tmp_path / "fleet"
    Running(config(broker.port, str(location))).stop()  # the collector's session exists, it is away
    agent = Agent(load_config(agent_config(tmp_path, bundle_dir, broker.port)))
    listener = Listener(broker.port, TOPICS)
    thread = start(agent)
    try:
        send_frames(listener, ["dev-a", "dev-b", "dev-c"], 0, 12)
        assert wait_for(lambda: len(wire_ids(listener)) == 12)  # all sent, PUBACKed, queued for the collector
        assert len(agent.spool.pending()) == 12  # none acknowledged: the collector is away
        broker.stop(kill=True)
        broker.start()
        collector = Running(config(broker.port, str(location)))
        try:
            assert wait_for(lambda: not agent.spool.pending(), 30)
            assert agent.spool.counters.resent > 0  # the broker lost them; the agent sent them again
        finally:
            collector.stop()
        figures("broker SIGKILL, collector away", ledger(listener, tmp_path / "spool", location))
    finally:
        agent.stop_event.set()
        thread.join(10)
        listener.close()


def test_an_agent_killed_mid_stream_loses_no_summary(tmp_path, bundle_dir, broker):
    location = tmp_path / "fleet"
    collector = Running(config(broker.port, str(location)))
    listener = Listener(broker.port, TOPICS)
    cfg, log = agent_config(tmp_path, bundle_dir, broker.port), tmp_path / "agent.log"
    first = agent_process(cfg, log)
    try:
        assert wait_for(lambda: online(listener), 30)
        send_frames(listener, ["dev-a", "dev-b"], 0, 12)
        assert wait_for(lambda: len(wire_ids(listener) | spooled_ids(tmp_path / "spool")) >= 4, 30)
        first.send_signal(signal.SIGKILL)  # with summaries spooled, in flight and unmade
        first.wait(10)
        send_frames(listener, ["dev-a", "dev-b"], 12, 12)  # kept by the broker for the agent's session
        second = agent_process(cfg, log)
        try:
            assert wait_for(lambda: len(stored_ids(str(location))) >= 12, 45)  # 2 x 6 full intervals
            assert wait_for(lambda: not spooled_ids(tmp_path / "spool"), 20)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        time.sleep(0.5)  # the collector's last batch
        figures("agent SIGKILL", ledger(listener, tmp_path / "spool", location))
    finally:
        first.kill()
        collector.stop()
        listener.close()


def test_a_collector_killed_while_summaries_flow_loses_none(tmp_path, bundle_dir, broker):
    location = tmp_path / "fleet"
    first = collector_process(tmp_path, broker.port, location)
    agent = Agent(load_config(agent_config(tmp_path, bundle_dir, broker.port)))
    listener = Listener(broker.port, TOPICS)
    thread = start(agent)
    try:
        send_frames(listener, ["dev-a", "dev-b"], 0, 12)
        assert wait_for(lambda: len(wire_ids(listener)) >= 2)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        send_frames(listener, ["dev-c"], 0, 12)  # made while no collector runs
        assert wait_for(lambda: agent.spool.counters.written == 12)
        second = collector_process(tmp_path, broker.port, location)
        try:
            assert wait_for(lambda: not agent.spool.pending(), 30)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
        figures("collector SIGKILL", ledger(listener, tmp_path / "spool", location))
    finally:
        first.kill()
        agent.stop_event.set()
        thread.join(10)
        listener.close()


def test_a_clean_stop_ships_the_open_interval_and_a_restart_stores_nothing_twice(
    tmp_path, bundle_dir, broker
):
    location = tmp_path / "fleet"
    collector = Running(config(broker.port, str(location)))
    listener = Listener(broker.port, TOPICS)
    drift = 'interval_windows = 4\nspool_dir = "spool"\nack_timeout_s = 2.0\nstop_timeout_s = 10.0\n'
    cfg, log = agent_config(tmp_path, bundle_dir, broker.port, drift), tmp_path / "agent.log"
    try:
        for run in range(2):
            proc = agent_process(cfg, log)
            try:
                assert wait_for(lambda: online(listener), 30)
                listener.messages.clear()
                send_frames(listener, ["dev-a", "dev-b"], 10 * run, 10)  # 6 windows: 1 interval and 2 open
                full = 2 + 4 * run  # the closed intervals so far (and the open ones of the last stop)
                assert wait_for(lambda n=full: len(wire_ids(listener)) >= n, 30)
                proc.send_signal(signal.SIGTERM)
                start_stop = time.monotonic()
                assert proc.wait(30) == 0
                assert time.monotonic() - start_stop < 12  # bounded by stop_timeout_s
            finally:
                proc.kill()
        assert '"spooled": 0' in log.read_text()  # each stop said how many stayed: none
        windows = sum(dataset.read(str(location), ["windows"]).column("windows").to_pylist())
        assert windows == 2 * 2 * 6  # the open intervals were closed and shipped at each stop
        figures("clean stop and restart", ledger(listener, tmp_path / "spool", location))
    finally:
        collector.stop()
        listener.close()


def test_the_collector_acknowledges_a_resent_summary_again_without_a_second_row(tmp_path, broker):
    from edge_ttt.drift.acks import parse_ack
    from tests.test_monitor_collector import T0, make_summary, messages, publish, publisher

    location = tmp_path / "fleet"
    collector = Running(config(broker.port, str(location)))
    acks: list[tuple[str, list[str]]] = []
    agents = publisher(broker.port)
    agents.on_message = lambda _c, _u, msg: acks.append((msg.topic, parse_ack(msg.payload)))
    agents.subscribe("edge-ttt/+/drift/ack", qos=1)
    s = make_summary("dev-r", T0)
    try:
        time.sleep(0.3)  # the subscription is in place
        publish(agents, "dev-r", messages(s))
        assert wait_for(lambda: acks == [("edge-ttt/dev-r/drift/ack", [s.summary_id])])
        assert stored_ids(str(location)) == [s.summary_id]  # acknowledged only once written
        assert len(messages(s)) > 1  # chunked: one acknowledgement per copy, not per chunk
        publish(agents, "dev-r", messages(s))  # its acknowledgement was lost: the agent sends it again
        assert wait_for(lambda: len(acks) == 2 and acks[1] == acks[0])
        time.sleep(0.3)
        assert len(acks) == 2
    finally:
        collector.stop()
        agents.disconnect()
        agents.loop_stop()
    assert stored_ids(str(location)) == [s.summary_id]
