"""Truthful health (issue #19, target 2): the status says the MQTT connection as it is, every
failed connect is logged with its reason, and `edge-ttt health` fails once the agent has been
away from its broker longer than `status.max_disconnected_s`. Real agent processes, real brokers."""

from __future__ import annotations

import json
import logging
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from edge_ttt.agent import Agent, health
from edge_ttt.agent.config import load_config
from edge_ttt.agent.status import read_health
from edge_ttt.cli import app
from edge_ttt.stream.connection import ConnectionState
from edge_ttt.stream.mqtt import MqttTransport
from edge_ttt.stream.mqtt_settings import MqttSection
from firmware_sim.broker import free_port
from tests import test_agent_tls
from tests.agent_harness import write_config
from tests.conftest import wait_for
from tests.test_agent_tls import PASSWORD, sh, tls_config

ROOT = Path(__file__).parents[1]
secure_broker = test_agent_tls.secure_broker  # the fixture: a broker that requires TLS and a password


def run_agent(config: Path, log: Path) -> subprocess.Popen:
    """`edge-ttt run` as its own process, its log to a file."""
    with log.open("w") as out:
        cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)]
        return subprocess.Popen(cmd, cwd=ROOT, stderr=out)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    finally:
        proc.kill()


def status(tmp_path: Path) -> dict:
    try:
        return json.loads((tmp_path / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_health_fails_within_15_s_of_the_broker_going_away_and_the_log_says_why(tmp_path, bundle_dir, broker):
    config = write_config(tmp_path, bundle_dir, broker.port)  # status.max_disconnected_s: the default, 10
    cfg = load_config(config)
    proc = run_agent(config, tmp_path / "agent.log")
    try:
        assert wait_for(lambda: health(cfg) is None, timeout=30), health(cfg)
        gone = time.monotonic()
        broker.stop()
        assert wait_for(lambda: status(tmp_path).get("state") == "disconnected", timeout=3)
        assert health(cfg) is None  # a short outage (a broker restart) is not yet unhealthy
        assert wait_for(lambda: health(cfg) is not None, timeout=15)
        failed_after = time.monotonic() - gone
        cli = [sys.executable, "-m", "edge_ttt.cli", "health", "--config", str(config)]
        probe = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=30)
        probed_after = time.monotonic() - gone
    finally:
        stop(proc)
    assert 10 <= failed_after < 15
    assert probe.returncode == 1 and probed_after < 15, (probe, probed_after)
    line = probe.stderr.strip()
    assert len(line.splitlines()) == 1 and "disconnected for" in line and "connection refused" in line, line
    log = (tmp_path / "agent.log").read_text()
    assert "connection lost" in log and "cannot connect: connection refused" in log
    assert "Protocol error" not in log


def test_an_agent_with_no_broker_says_connecting_and_why_and_is_unhealthy(tmp_path, bundle_dir):
    config = write_config(tmp_path, bundle_dir, free_port())  # nothing listens there
    proc = run_agent(config, tmp_path / "agent.log")
    try:
        assert wait_for(lambda: status(tmp_path).get("connection", {}).get("failures", 0) >= 2, timeout=30)
        doc = status(tmp_path)
        time.sleep(max(0.0, doc["connection"]["since_unix"] + 2.0 - time.time()))
        result = CliRunner().invoke(app, ["health", "--config", str(config), "--max-disconnected", "2"])
    finally:
        stop(proc)
    assert doc["state"] == "connecting" and "connection refused" in doc["connection"]["reason"]
    assert result.exit_code == 1 and "agent is connecting for" in result.output
    assert "cannot connect: connection refused" in (tmp_path / "agent.log").read_text()
    assert status(tmp_path)["state"] == "offline"  # a clean stop still says so


def test_a_broker_certificate_the_ca_does_not_sign_is_reported_as_a_tls_failure(
    tmp_path, bundle_dir, secure_broker, monkeypatch
):
    broker, _ = secure_broker
    other = tmp_path / "other-ca"
    other.mkdir()
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
       "-keyout", "ca.key", "-out", "ca.crt", cwd=other)  # fmt: skip
    monkeypatch.setenv("EDGE_TTT_TEST_PASSWORD", PASSWORD)
    config = tls_config(tmp_path, bundle_dir, broker.port, other)
    proc = run_agent(config, tmp_path / "agent.log")
    try:
        assert wait_for(lambda: status(tmp_path).get("connection", {}).get("failures", 0) >= 1, timeout=30)
        time.sleep(1.0)
        result = CliRunner().invoke(app, ["health", "--config", str(config), "--max-disconnected", "0.5"])
        doc = status(tmp_path)
    finally:
        stop(proc)
    assert doc["state"] == "connecting" and "TLS verification" in doc["connection"]["reason"]
    assert (
        result.exit_code == 1 and "connecting for" in result.output and "TLS verification of" in result.output
    )
    assert "cannot connect: TLS verification" in (tmp_path / "agent.log").read_text()


def test_bad_credentials_say_so_without_a_misleading_protocol_error(
    tmp_path, bundle_dir, secure_broker, monkeypatch, caplog
):
    broker, pki = secure_broker
    monkeypatch.setenv("EDGE_TTT_TEST_PASSWORD", "wrong")
    agent = Agent(load_config(tls_config(tmp_path, bundle_dir, broker.port, pki)))
    thread = threading.Thread(target=agent.run, daemon=True)
    with caplog.at_level(logging.INFO):
        thread.start()
        try:
            assert wait_for(lambda: agent.transport.link.snapshot().failures >= 2, timeout=15)
        finally:
            agent.stop_event.set()
            thread.join(10)
    reason = agent.transport.link.snapshot().reason
    assert "refused the connection: Not authorized" in reason  # mosquitto's answer to a bad password
    assert "Protocol error" not in caplog.text and "Not authorized" in caplog.text
    assert caplog.text.count("cannot connect") == 1  # the second failure is within the rate limit


def test_a_fractional_reconnect_delay_is_kept(tmp_path):
    """reconnect_min_s = 0.25 used to become 1 s: paho got the delays rounded up to integers."""
    mqtt = MqttSection(port=free_port(), reconnect_min_s=0.25, reconnect_max_s=0.25)
    transport = MqttTransport(mqtt, "t", "edge-ttt/agents/t/status", lambda *_: None)
    transport.start()
    time.sleep(2.0)
    failures = transport.link.snapshot().failures
    transport.stop()
    assert failures >= 6, failures  # 1 s delays would give 2 or 3


def test_health_tolerates_a_short_outage_and_names_a_long_one(tmp_path):
    path = tmp_path / "status.json"
    link = ConnectionState("127.0.0.1:47001")

    def write(state: str, down_s: float, reason: str | None) -> None:
        since = time.time() - down_s
        doc = {
            "state": state,
            "time_unix": time.time(),
            "connection": {"since_unix": since, "reason": reason},
        }
        path.write_text(json.dumps(doc))

    assert link.snapshot().state == "connecting"
    write("online", 100.0, None)
    assert read_health(path, 30.0, 10.0) is None
    write("disconnected", 5.0, "connection refused by 127.0.0.1:47001")
    assert read_health(path, 30.0, 10.0) is None
    write("disconnected", 12.0, "connection refused by 127.0.0.1:47001")
    assert read_health(path, 30.0, 10.0) == (
        "agent is disconnected for 12 s (more than 10 s): connection refused by 127.0.0.1:47001"
    )
    write("connecting", 12.0, None)
    assert "connecting for 12 s" in read_health(path, 30.0, 10.0)
    write("offline", 0.0, None)
    assert read_health(path, 30.0, 10.0) == "agent is offline"
    for text, why in [
        ("[]", "a JSON list, not an object"),
        ('{"state": 5}', "state 5 is not one an agent writes"),
    ]:
        path.write_text(text)  # a file that is not an agent's status: said so, not "agent is 5"
        assert read_health(path, 30.0, 10.0) == f"no readable status at {path}: {why}"


def test_connections_taken_over_again_and_again_name_the_client_id_and_the_fix(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("edge_ttt.stream.connection.time.monotonic", lambda: clock[0])
    link = ConnectionState("127.0.0.1:47001", "edge-ttt-line3")
    with caplog.at_level(logging.INFO):
        for _ in range(5):  # each connection closed 0.5 s after it began, as a duplicate id makes it
            link.connected()
            clock[0] += 0.5
            link.closed("Unspecified error", False)
    hint = "another client may be using client id 'edge-ttt-line3'. Fix: give each its own agent.id"
    assert hint in link.snapshot().reason and "5 connections in a row" in link.snapshot().reason
    assert caplog.text.count(hint) == 1  # rate-limited: not a line per takeover
    assert caplog.text.count("INFO") <= 3  # no "connected" line per takeover once it is named
    link.connected()
    clock[0] += 60.0  # a connection that lasted ends the run
    link.closed("Unspecified error", False)
    assert "another client" not in link.snapshot().reason


def test_a_broker_saying_session_taken_over_is_named_at_once():
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    link = ConnectionState("127.0.0.1:47001", "edge-ttt-a")
    link.connected()
    link.closed(ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), True)
    reason = link.snapshot().reason
    assert "Session taken over" in reason and "client id 'edge-ttt-a'" in reason


def test_two_agents_with_one_id_are_told_so_in_their_logs(tmp_path, broker, bundle_dir):
    logs, agents = [], []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        logs.append(tmp_path / name / "agent.log")
        agents.append(run_agent(write_config(tmp_path / name, bundle_dir, broker.port), logs[-1]))
    try:  # both are "test-agent": each connection takes the session from the other one
        told = "another client may be using client id 'edge-ttt-test-agent'"
        assert wait_for(lambda: all(told in p.read_text() for p in logs), 30)
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
        for agent in agents:
            assert agent.wait(30) == 0


def test_the_end_of_an_outage_is_said_at_the_level_of_its_start(caplog):
    """A log kept at warnings (the collector's default) ended on "cannot connect" although the
    connection was back; the first connection of a run stays at info."""
    link = ConnectionState("127.0.0.1:47001", "edge-ttt-a")
    with caplog.at_level(logging.INFO):
        link.connected()
        link._failed("refused", "connection refused by 127.0.0.1:47001")
        link.connected()
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0] == ("INFO", "connected") and levels[-1] == ("WARNING", "connected")
    assert any(level == "WARNING" and "cannot connect" in text for level, text in levels)


def test_a_status_whose_times_are_no_agents_clock_is_not_healthy(tmp_path):
    """Before, a time_unix of NaN, inf or next year, or an online status without its connection,
    read as fresh and healthy."""
    path = tmp_path / "status.json"
    now = time.time()
    for doc in [
        {"state": "online", "time_unix": float("nan"), "connection": {"since_unix": now}},
        {"state": "online", "time_unix": now + 86_400 * 365, "connection": {"since_unix": now}},
        {"state": "disconnected", "time_unix": now, "connection": {"since_unix": float("inf")}},
        {"state": "disconnected", "time_unix": now},
        {"state": "online"},
    ]:
        path.write_text(json.dumps(doc))
        assert read_health(path, 30.0, 10.0).startswith(f"no readable status at {path}: "), doc
    path.write_text(
        json.dumps({"state": "online", "time_unix": now + 5.0, "connection": {"since_unix": now}})
    )
    assert read_health(path, 30.0, 10.0) is None  # clocks a few seconds apart


def test_a_plain_client_on_a_tls_port_and_the_other_way_round_are_named_with_the_fix():
    """Seen by a probe: "closed the connection before accepting it: Unspecified error" and
    "Connection reset by peer", neither of which says to check mqtt.tls.enabled and mqtt.port."""
    from edge_ttt.stream.connection import describe

    fix = "Fix: check mqtt.tls.enabled and mqtt.port"
    assert fix in describe(ConnectionResetError(104, "Connection reset by peer"), "127.0.0.1:8883")[1]
    assert (
        fix
        in describe(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "127.0.0.1:47001")[1]
    )
    link = ConnectionState("127.0.0.1:8883", "edge-ttt-a")
    link.closed("Unspecified error", False)  # never accepted: the broker hung up on the hello
    assert fix in link.snapshot().reason


def test_connections_that_keep_ending_make_health_fail_until_one_lasts(tmp_path, monkeypatch):
    """Two agents with one client id take the session from each other every few seconds: the
    agent is online most of the time, and `health` said healthy. The status now carries it."""
    clock = [100.0]
    monkeypatch.setattr("edge_ttt.stream.connection.time.monotonic", lambda: clock[0])
    link = ConnectionState("127.0.0.1:47001", "edge-ttt-line3")
    for _ in range(4):  # each connection closed 0.5 s after it began
        link.connected()
        clock[0] += 0.5
        link.closed("Unspecified error", False)
    link.connected()
    assert "another client may be using client id 'edge-ttt-line3'" in link.flapping()
    path = tmp_path / "status.json"
    now = time.time()
    doc = {
        "state": "online",
        "time_unix": now,
        "connection": {"since_unix": now, "flapping": link.flapping()},
    }
    path.write_text(json.dumps(doc))
    assert read_health(path, 30.0, 10.0).startswith("agent's connections keep ending within seconds: ")
    clock[0] += 60.0  # this connection lasted
    assert link.flapping() is None
