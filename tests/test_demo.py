"""`edge-ttt demo`: scoring, the fleet plan, the embedded broker, and whole runs (real processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pyarrow.compute as pc
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console

from edge_ttt.monitor import dataset
from edge_ttt.recordlog import RecordedLog
from edge_ttt_demo import fleet, results, run, services
from firmware_sim.broker import Broker, parse_address
from firmware_sim.embedded_broker import EmbeddedBroker
from firmware_sim.scoreboard import Scoreboard, window_labels
from tests.conftest import CHANNELS, wait_for

SMALL = {"devices": 2, "minutes": 1.0, "speed": 20.0, "epochs": 1}


def _log(devices: dict[str, int], labels: list[int] | None = None) -> RecordedLog:
    rows = [(d, i) for d, n in devices.items() for i in range(n)]
    ids = np.array([d for d, _ in rows], dtype=object)
    t_ns = np.array([1_000_000_000 + i * 20_000_000 for _, i in rows], np.int64)
    label = None if labels is None else np.array([labels[i % len(labels)] for _, i in rows], np.int32)
    values = np.random.default_rng(0).normal(size=(len(rows), 6)).astype(np.float32)
    return RecordedLog(ids, t_ns, values, label, CHANNELS, 50.0, ("a", "b"))


# --- scoring ------------------------------------------------------------------------------------


def test_window_labels_meet_predictions_on_device_and_end_time():
    labels = window_labels(_log({"d1": 10, "d2": 6}, labels=[0, 1]), length=4, hop=2)
    assert sorted({d for d, _ in labels}) == ["d1", "d2"]
    assert len([k for k in labels if k[0] == "d1"]) == 4  # windows ending at samples 3, 5, 7, 9
    # the label of a window is its last sample's: sample 3 -> label 1
    assert labels[("d1", 1_000_000_000 + 3 * 20_000_000)] == 1


def test_scoreboard_counts_each_window_once_and_scores_it():
    board = Scoreboard({("d1", 10): 0, ("d1", 20): 1, ("d1", 30): 1})
    one = {"device": "d1", "policy": "steady", "t_end_ns": 10, "class_index": 0}
    batch = {
        "device": "d1",
        "policy": "steady",
        "predictions": [{"t_end_ns": 20, "class_index": 0}, {"t_end_ns": 30, "class_index": 1}],
    }
    for payload in (one, one, batch):  # QoS 1 may deliver twice
        board.add(json.dumps(payload).encode())
    board.add(json.dumps({**one, "policy": "source", "class_index": 1}).encode())
    board.add(b"not json")
    board.add(json.dumps({"device": "d1"}).encode())
    assert board.received("steady") == 3 and board.received("source") == 1
    assert board.accuracy("steady", "d1") == (pytest.approx(2 / 3), 3)
    assert board.accuracy("source", "d1") == (0.0, 1)
    assert board.accuracy("source", "d2") == (None, 0)
    assert board.malformed == 2


# --- the table ------------------------------------------------------------------------------------


def _scored_fleet() -> fleet.Fleet:
    """d1: both agents predicted, steady also an unlabeled window (t=5); d2: only steady predicted."""
    scenario, names = fleet.fleet_scenario(2)
    board = Scoreboard({("d1", 1): 0, ("d1", 2): 1, ("d1", 3): 0, ("d1", 4): 1, ("d2", 1): 1, ("d2", 2): 1})
    predictions = {
        ("steady", "d1"): [0, 0, 0, 1, 1],
        ("source", "d1"): [1, 1, 1, 1],
        ("steady", "d2"): [1, 0],
    }
    for (policy, device), classes in predictions.items():
        rows = [{"t_end_ns": t, "class_index": c} for t, c in enumerate(classes, start=1)]
        board.add(json.dumps({"device": device, "policy": policy, "predictions": rows}).encode())
    return fleet.Fleet(_log({"d1": 10, "d2": 10}), scenario, names, board)


def _fleet_dataset(location: Path) -> None:
    """The steady agent's summaries of d1 (served predictions in the source mix, the source model
    stuck on one class: estimates 1.0 and 0.25) and a source agent's of d2, which the table ignores."""
    from edge_ttt.drift.schema import to_table
    from tests.test_monitor_estimates import interval

    made = [interval("d1", k, [0, 0, 1, 2], [1]) for k in range(3)]
    made += [interval("d2", k, [1], [1], policy="source") for k in range(3)]
    dataset.append(str(location), to_table(made))


def test_the_table_estimates_are_the_fleet_reports(tmp_path):
    from edge_ttt.monitor.config import AlertsSection
    from edge_ttt.monitor.estimates import fleet_estimates
    from edge_ttt.monitor.intervals import Intervals

    _fleet_dataset(tmp_path / "fleet")
    rows = {r.device: r for r in results.device_results(_scored_fleet(), tmp_path / "fleet")}
    d1, d2 = rows["d1"], rows["d2"]
    assert d1.accuracy == {"steady": 0.75, "source": 0.5}  # over the labeled windows only
    assert d1.estimated == {"steady": pytest.approx(1.0), "source": pytest.approx(0.25)}
    steady = dataset.read(str(tmp_path / "fleet"))
    steady = steady.filter(pc.equal(steady.column("policy"), "steady"))
    (e,) = fleet_estimates(Intervals.of(steady, AlertsSection()), AlertsSection().estimate_windows)
    assert (d1.estimated["steady"], d1.estimated["source"]) == (e.served, e.source)  # one estimator
    assert d2.estimated == {"steady": None, "source": None}  # no summary of the default policy
    none = results.device_results(_scored_fleet(), tmp_path / "no-dataset")
    assert all(r.estimated == {"steady": None, "source": None} for r in none)


def test_table_sets_each_estimate_beside_its_accuracy_within_100_columns(tmp_path):
    _fleet_dataset(tmp_path / "fleet")
    result = results.DemoResult(
        results.device_results(_scored_fleet(), tmp_path / "fleet"), None, False, "test"
    )
    console = Console(width=100, record=True)
    results.print_results(result, console)
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "windows" in line).split()
    assert header[2:] == ["windows", "source", "%", "est.", "steady", "%", "est.", "change", "resets"]
    cells = {line.split()[0]: line.split()[-6:] for line in lines if line.split()[:1] in (["d1"], ["d2"])}
    # source %, est., steady %, est., change, resets (d2: no summary of the default policy)
    assert cells["d1"] == ["50.0", "25.0", "75.0", "100.0", "+25.0", "0"]
    assert cells["d2"] == ["-", "-", "50.0", "-", "-", "0"]


def test_a_cached_model_from_an_older_version_is_trained_again(tmp_path, synthetic_log_path):
    """A checkpoint whose reference lacks the drift limits (an older version's) would export a
    bundle without them: the demo says so and trains again, then reuses the new one."""
    pytest.importorskip("torch")
    from export.checkpoint import load_checkpoint, save_checkpoint
    from export.train import REFERENCE_KEYS

    said: list[str] = []
    run.prepare_model(tmp_path, synthetic_log_path, 1, False, said.append)
    checkpoint = tmp_path / "model" / f"{run.MODEL}.pt"
    old = load_checkpoint(checkpoint)
    del old.reference["drift_limits"]
    save_checkpoint(checkpoint, old)
    said.clear()
    bundle = run.prepare_model(tmp_path, synthetic_log_path, 1, False, said.append)
    assert said[0] == f"the cached {checkpoint} predates drift_limits in its reference: training again"
    assert any(line.startswith("exporting to") for line in said)
    assert set(load_checkpoint(checkpoint).reference) == set(REFERENCE_KEYS)
    assert load_bundle_limits(bundle) is not None
    said.clear()
    run.prepare_model(tmp_path, synthetic_log_path, 1, False, said.append)
    assert said == [f"reusing {checkpoint} (--retrain trains again)"]


def load_bundle_limits(bundle: Path):
    from edge_ttt.artifacts import load_bundle

    return load_bundle(bundle).manifest.reference.drift_limits


# --- the fleet plan --------------------------------------------------------------------------------


def test_fleet_log_keeps_the_first_devices_and_minutes():
    log = _log({"a": 6000, "b": 6000, "c": 6000})  # 2 minutes each at 50 Hz
    cut = fleet.fleet_log(log, devices=2, minutes=1.0)
    assert cut.devices() == ["a", "b"]
    for device in ("a", "b"):
        t = cut.t_ns[cut.device_id == device]
        assert len(t) == 3000 and (t.max() - t.min()) < 60e9


def test_first_device_is_clean_and_scenarios_cycle():
    scenario, names = fleet.fleet_scenario(len(fleet.FLEET_SCENARIOS) + 1)
    assert names[0] == "clean" and scenario.variants[0] == ()
    assert names[-1] == names[0]
    assert len(set(names)) == len(fleet.FLEET_SCENARIOS)


@pytest.mark.parametrize("bad", ["localhost", ":1884", "host:port", "h:0", "h:70000"])
def test_broker_address_is_checked(bad):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(bad)
    assert parse_address("127.0.0.1:1884") == ("127.0.0.1", 1884)


def test_agent_config_loads_and_names_its_own_state(tmp_path):
    from edge_ttt.agent.config import load_config

    mqtt = {"host": "127.0.0.1", "port": 1884, "protocol": "v311", "prefix": "edge-ttt-demo/x"}
    path = services.agent_config(
        tmp_path / "a.toml",
        agent="a",
        policy="source",
        bundle=tmp_path / "model",  # beside the run's directories, as the demo's own is
        mqtt=mqtt,
        drift_topic="{prefix}/{device}/d",
    )
    cfg = load_config(path, check_files=False)
    assert cfg.model.policy == "source" and cfg.mqtt.protocol == "v311" and cfg.mqtt.port == 1884
    assert cfg.state.dir == tmp_path / "a" / "state" and cfg.drift.interval_windows == 40


# --- the embedded broker -------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_embedded_broker_delivers_qos1_over_mqtt_311():
    broker = EmbeddedBroker()
    broker.start()
    got: list[bytes] = []
    clients = []
    try:
        sub = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="s", protocol=paho.MQTTv311, clean_session=False
        )
        subscribed = threading.Event()
        sub.on_connect = lambda c, *_: c.subscribe("t/+/x", qos=1)
        sub.on_subscribe = lambda *_: subscribed.set()
        sub.on_message = lambda _c, _u, m: got.append(m.payload)
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="p", protocol=paho.MQTTv311)
        clients = [sub, pub]
        for c in clients:
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
        assert subscribed.wait(10)
        for i in range(50):
            info = pub.publish("t/a/x", str(i).encode(), qos=1)
        info.wait_for_publish(10)
        assert wait_for(lambda: len(got) == 50, timeout=10)
        assert [int(p) for p in got] == list(range(50))
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        broker.stop()
    assert not _port_open(broker.port)


# --- whole runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One workdir for the module: the first run trains and exports, the others reuse the model."""
    return tmp_path_factory.mktemp("demo")


def _check_run(result: results.DemoResult, workdir: Path) -> None:
    assert not result.interrupted
    assert [r.scenario for r in result.devices] == [name for name, _ in fleet.FLEET_SCENARIOS[:2]]
    assert all(code == 0 for code in result.agent_exit_codes.values()), result.agent_exit_codes
    assert len(result.agent_exit_codes) == 2
    for row in result.devices:
        assert row.windows > 30  # a minute of 50 Hz samples in windows of 128, hop 64
        for policy in (results.BASELINE, run.DEFAULT_POLICY):
            assert row.accuracy[policy] is not None and 0.0 <= row.accuracy[policy] <= 1.0
        assert row.resets is not None  # the default agent's summaries reached the fleet dataset
    summaries = dataset.read(str(workdir / "fleet"), ["device", "policy", "windows"]).to_pydict()
    assert set(summaries["device"]) == {r.device for r in result.devices}
    assert set(summaries["policy"]) == {run.DEFAULT_POLICY}  # the source agent's summaries stay out
    assert result.report is not None
    html = result.report.read_text()
    assert all(r.device in html for r in result.devices)


def test_demo_runs_the_pipeline_on_mosquitto(workdir, capsys):
    result = run.run_demo(run.DemoOptions(workdir, **SMALL))
    assert result.broker.startswith("mosquitto")
    _check_run(result, workdir)
    for row in result.devices:  # nothing lost on the way: both agents predicted every window
        assert row.predicted == {results.BASELINE: row.windows, run.DEFAULT_POLICY: row.windows}
    console = Console(width=120, record=True)
    results.print_results(result, console)
    text = console.export_text()
    row = result.devices[0]
    assert row.device in text and f"{100 * row.accuracy[run.DEFAULT_POLICY]:.1f}" in text
    assert str(result.report) in text


def test_demo_falls_back_to_the_embedded_broker_and_reuses_the_model(workdir, monkeypatch):
    checkpoint = workdir / "model" / f"{run.MODEL}.pt"
    trained = checkpoint.stat().st_mtime_ns
    monkeypatch.setattr(services, "mosquitto_binary", lambda: None)
    result = run.run_demo(run.DemoOptions(workdir, **SMALL))
    assert result.broker.startswith("embedded amqtt")
    _check_run(result, workdir)
    assert checkpoint.stat().st_mtime_ns == trained


def _children_of(workdir: Path) -> list[int]:
    """Processes whose command line names a file in `workdir` (the demo's agents)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(workdir) in cmdline and "edge_ttt.cli" in cmdline and "run" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_ctrl_c_stops_everything_cleanly_on_a_given_broker(workdir, tmp_path):
    broker = Broker(tmp_path)
    broker.start()
    try:
        cmd = [sys.executable, "-m", "edge_ttt.cli", "demo", "--workdir", str(workdir)]
        cmd += ["--devices", "2", "--minutes", "4", "--speed", "4", "--broker", f"127.0.0.1:{broker.port}"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"}
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, b"")), daemon=True)
        reader.start()
        assert wait_for(lambda: any(b"[4/5] streaming" in line for line in lines), timeout=180)
        assert len(_children_of(workdir)) == 2
        time.sleep(3)  # some predictions
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 130, b"".join(lines).decode()
        text = out.decode()
        assert "interrupted" in text and "fleet report" in text
        assert "(given)" in b"".join(lines).decode()
        assert _children_of(workdir) == []
        assert broker.process is not None and broker.process.poll() is None  # a given broker is left alone
    finally:
        broker.stop()


def test_a_workdir_with_run_or_fleet_directories_of_the_users_own_is_refused_not_wiped(tmp_path):
    from edge_ttt_demo import DemoError
    from edge_ttt_demo.run import MADE_BY_DEMO, RunDirs

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("a user's file")
    with pytest.raises(DemoError, match="is not a demo's"):
        RunDirs.fresh(tmp_path)
    assert (tmp_path / "run" / "thesis.tex").is_file()
    (tmp_path / "run" / "thesis.tex").unlink()
    (tmp_path / "fleet" / "date=2026-12-05").mkdir(parents=True)  # what a demo's collector leaves
    dirs = RunDirs.fresh(tmp_path)
    assert (dirs.rundir / MADE_BY_DEMO).is_file() and not dirs.fleet.exists()
    (dirs.rundir / "demo-steady-1.toml").write_text("")
    assert RunDirs.fresh(tmp_path).rundir == dirs.rundir  # its own run directory: wiped again
