"""The fleet collector against a real mosquitto: once-only delivery into the dataset, corrupt
payloads, restarts, shared subscriptions; and compaction of the dataset it writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import typer
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.drift.acks import ack_topic
from edge_ttt.drift.schema import to_parquet
from edge_ttt.drift.shipper import drift_topic, encode_chunks
from edge_ttt.drift.summary import DriftSummary, SummaryCollector
from edge_ttt.monitor import dataset
from edge_ttt.monitor.collector import Collector
from edge_ttt.monitor.config import CollectorSection, MonitorConfig
from edge_ttt.stream.mqtt_settings import MqttSection
from tests.conftest import wait_for
from tests.test_drift_stats import reference

DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def make_summary(
    device: str,
    end: float,
    shift: float = 0.0,
    seed: int = 0,
    entropy: float = 0.5,
    resets: int = 0,
    windows: int = 40,
) -> DriftSummary:
    """A real summary of standard normal data on two channels; `shift` moves channel c0 only."""
    rng = np.random.default_rng(seed)
    c = SummaryCollector(reference(), device, "0", "ab" * 32, "steady", interval_s=1e9, now=end - 300)
    x = rng.standard_normal((windows, 2, 16))
    x[:, 0] += shift
    h = np.full(windows, entropy)
    c.observe(x, rng.integers(0, 3, windows), np.exp(-h), h, None, {"resets": resets}, None, [5.0] * windows)
    return c.close(end)


def messages(s: DriftSummary, chunk_bytes: int = 1500) -> list[bytes]:
    return encode_chunks(s.summary_id, to_parquet([s]), chunk_bytes)


def config(
    port: int, location: str, client_id: str = "collector-1", group: str | None = None
) -> MonitorConfig:
    return MonitorConfig(
        mqtt=MqttSection(port=port, reconnect_min_s=1.0, reconnect_max_s=1.0),
        collector=CollectorSection(
            dataset=location, client_id=client_id, share_group=group, flush_summaries=3, flush_s=0.3
        ),
    )


class Running:
    """A collector on its own thread, like `edge-ttt collect`, until `stop()`."""

    def __init__(self, cfg: MonitorConfig) -> None:
        self.collector = Collector(cfg)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop_event,), daemon=True)
        self.thread.start()
        assert self.collector.subscribed.wait(10)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


def publisher(port: int) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="agents")
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish(client: paho.Client, device: str, payloads: list[bytes]) -> None:
    for payload in payloads:
        client.publish(drift_topic("edge-ttt", device), payload, qos=1).wait_for_publish(10)


def stored_ids(location: str) -> list[str]:
    """Every row's id as stored: a summary stored twice shows twice (reads keep one)."""
    if not dataset.exists(location):
        return []
    return dataset.open_dataset(location).to_table(columns=["summary_id"]).column("summary_id").to_pylist()


def test_summaries_of_several_agents_arrive_once_each_and_corrupt_ones_are_counted(broker, tmp_path):
    location = str(tmp_path / "fleet")
    running = Running(config(broker.port, location))
    agents = publisher(broker.port)
    made = {
        f"dev-{d}": [make_summary(f"dev-{d}", T0 + i * DAY / 2, seed=10 * d + i) for i in range(4)]
        for d in range(3)
    }
    try:
        for device, summaries in made.items():
            for i, s in enumerate(summaries):
                publish(agents, device, messages(s) * (2 if i % 2 else 1))  # every other one twice
        bad = messages(make_summary("dev-0", T0, seed=99))
        assert len(bad) > 1  # chunked
        head, _, data = bad[-1].partition(b"\n")
        publish(
            agents,
            "dev-0",
            [*bad[:-1], head + b"\n" + bytes([data[0] ^ 0xFF]) + data[1:], b"not a drift message"],
        )
        expected = sorted(s.summary_id for summaries in made.values() for s in summaries)
        assert wait_for(lambda: sorted(stored_ids(location)) == expected)
        counters = running.collector.receiver.counters
        assert wait_for(lambda: counters.corrupt == 1 and counters.malformed == 1)
        assert counters.accepted == 12 and counters.duplicates > 0
    finally:
        running.stop()
    table = dataset.read(location)
    assert table.column("device_id").to_pylist() == table.column("device").to_pylist()
    dates = dict(zip(table.column("summary_id").to_pylist(), table.column("date").to_pylist(), strict=True))
    assert all(
        dates[s.summary_id] == time.strftime("%Y-%m-%d", time.gmtime(s.end)) for v in made.values() for s in v
    )
    assert {p.name for p in (tmp_path / "fleet").iterdir()} == {
        "date=2023-11-14",
        "date=2023-11-15",
        "date=2023-11-16",
    }

    # A restarted collector knows what the dataset holds: a re-shipped summary is not stored again.
    restarted = Running(config(broker.port, location))
    try:
        assert set(expected) <= restarted.collector.receiver.seen
        publish(agents, "dev-1", messages(made["dev-1"][0]))
        assert wait_for(lambda: restarted.collector.receiver.counters.duplicates >= 1)
    finally:
        restarted.stop()
        agents.disconnect()
        agents.loop_stop()
    assert sorted(stored_ids(location)) == expected


def test_two_collectors_on_a_shared_subscription_split_the_load_without_loss_or_duplicates(broker, tmp_path):
    location = str(tmp_path / "fleet")
    a = Running(config(broker.port, location, "collector-a", group="collectors"))
    b = Running(config(broker.port, location, "collector-b", group="collectors"))
    agents = publisher(broker.port)
    made = [make_summary(f"dev-{i % 5}", T0 + i, seed=i) for i in range(30)]
    try:
        for s in made:
            publish(agents, s.device, messages(s, chunk_bytes=1 << 20))  # one message per summary
        expected = sorted(s.summary_id for s in made)
        assert wait_for(lambda: sorted(stored_ids(location)) == expected)
    finally:
        a.stop()
        b.stop()
        agents.disconnect()
        agents.loop_stop()
    got = [r.collector.receiver.counters.accepted for r in (a, b)]
    assert sum(got) == 30 and min(got) > 0, got
    assert sorted(stored_ids(location)) == expected


def test_compaction_leaves_one_file_per_partition_and_the_data_unchanged(tmp_path):
    location = str(tmp_path / "fleet")
    for i in range(6):
        dataset.append(location, pa_table([make_summary(f"dev-{i % 2}", T0 + i * DAY / 3, seed=i)]))
    before = dataset.read(location).sort_by("summary_id")
    partitions = sorted(p for p in (tmp_path / "fleet").iterdir())
    assert sum(len(list(p.glob("*.parquet"))) for p in partitions) == 6

    counts = {p.name: len(list(p.glob("*.parquet"))) for p in partitions}
    assert dataset.compact(location) == {name: n for name, n in counts.items() if n > 1}
    assert all(len(list(p.iterdir())) == 1 for p in partitions)
    assert dataset.read(location).sort_by("summary_id").equals(before)
    assert dataset.compact(location) == {}  # nothing left to do
    for part in partitions:  # in device order, so that a filter on devices skips row groups
        (file,) = part.glob("*.parquet")
        keys = pq.read_table(file, columns=["device_id", "interval_end"]).to_pylist()
        assert keys == sorted(keys, key=lambda r: (r["device_id"], r["interval_end"]))
    only = dataset.read_devices(location, ["dev-1"], ["device_id", "summary_id"])
    assert set(only.column("device_id").to_pylist()) == {"dev-1"}
    assert sorted(only.column("summary_id").to_pylist()) == sorted(
        r["summary_id"] for r in before.to_pylist() if r["device_id"] == "dev-1"
    )


def pa_table(summaries: list[DriftSummary]):
    from edge_ttt.drift.schema import to_table

    return to_table(summaries)


@pytest.mark.parametrize("end", [T0, T0 + DAY - 0.5])
@pytest.mark.parametrize("uri", [False, True])
def test_the_partition_is_the_utc_date_of_the_interval_end(tmp_path, end, uri):
    location = (tmp_path / "fleet").as_uri() if uri else str(tmp_path / "fleet")
    (path,) = dataset.append(location, pa_table([make_summary("d", end)]))
    assert f"/date={time.strftime('%Y-%m-%d', time.gmtime(end))}/" in path
    assert pc.sum(pc.equal(dataset.read(location).column("device_id"), "d")).as_py() == 1
    assert dataset.summary_ids(location) == set(
        dataset.read(location, ["summary_id"])["summary_id"].to_pylist()
    )


def test_the_example_config_loads_and_a_bad_one_names_its_keys(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from edge_ttt.monitor.cli import collect_command
    from edge_ttt.monitor.config import load_monitor_config

    example = Path(__file__).resolve().parents[1] / "configs" / "monitor.toml"
    cfg = load_monitor_config(example)
    assert (
        cfg.collector.dataset == str(example.parent.parent / "runs" / "fleet")
        and cfg.topic_filter() == "edge-ttt/+/drift"
    )
    shared = cfg.model_copy(update={"collector": cfg.collector.model_copy(update={"share_group": "g"})})
    assert shared.topic_filter() == "$share/g/edge-ttt/+/drift"

    bad = tmp_path / "bad.toml"
    bad.write_text('[collector]\ndataset = "x"\nflush_summaries = 0\nshare_group = "a/b"\n')
    app = typer.Typer()
    app.command()(collect_command)
    result = CliRunner().invoke(app, ["--config", str(bad)])
    assert result.exit_code == 2
    assert "collector.flush_summaries" in result.output and "collector.share_group" in result.output
    unknown = tmp_path / "ftp.toml"  # a scheme pyarrow has no filesystem for: one line, not a traceback
    unknown.write_text('[collector]\ndataset = "ftp://fleet/dataset"\n')
    result = CliRunner().invoke(app, ["--config", str(unknown)])
    assert result.exit_code == 2
    assert (
        "collector.dataset ftp://fleet/dataset: cannot open it (Unrecognized filesystem type" in result.output
    )


@pytest.fixture
def s3_location(monkeypatch):
    """An S3 stand-in (moto's server, in-process, on a loopback port) with an empty bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
        s3.create_bucket(Bucket="fleet")
        yield f"s3://fleet/drift?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()


def test_the_dataset_can_live_in_object_storage(s3_location):
    """The same code writes, reads, de-duplicates and compacts through pyarrow's S3 filesystem."""
    first = dataset.append(s3_location, pa_table([make_summary("d1", T0), make_summary("d2", T0)]))
    dataset.append(s3_location, pa_table([make_summary("d1", T0 + 60)]))
    assert all("/date=" in p for p in first)
    table = dataset.read(s3_location)
    assert sorted(table.column("device_id").to_pylist()) == ["d1", "d1", "d2"]
    assert dataset.summary_ids(s3_location) == set(table.column("summary_id").to_pylist())
    assert len(dataset.open_dataset(s3_location).files) == 2
    dataset.compact(s3_location)
    assert len(dataset.open_dataset(s3_location).files) == 1  # one partition, one file
    assert dataset.read(s3_location).num_rows == 3


def test_a_collector_killed_before_writing_loses_nothing(broker, tmp_path):
    """Messages are acknowledged only once written: after SIGKILL the broker delivers them again."""
    import signal
    import subprocess
    import sys

    location = tmp_path / "fleet"
    toml = tmp_path / "monitor.toml"
    toml.write_text(
        f"[mqtt]\nport = {broker.port}\nreconnect_min_s = 1.0\nreconnect_max_s = 1.0\n"
        f'[collector]\ndataset = "{location}"\nclient_id = "crashy"\n'
        "flush_summaries = 1000\nflush_s = 3600.0\n"
    )
    cmd = [sys.executable, "-m", "edge_ttt.cli", "collect", "--config", str(toml)]
    root = Path(__file__).resolve().parents[1]
    first = subprocess.Popen(cmd, cwd=root, stderr=subprocess.PIPE, text=True)
    agents = publisher(broker.port)
    made = [make_summary("dev-k", T0 + i * 60, seed=i) for i in range(5)]
    try:
        assert "collecting" in first.stderr.readline()  # subscribed
        for s in made:
            # one message each: five stay below MAX_UNACKED, so nothing is written before the kill
            publish(agents, "dev-k", messages(s, chunk_bytes=10**6))
        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert stored_ids(str(location)) == []  # nothing was written
        restarted = Running(config(broker.port, str(location), client_id="crashy"))
        try:
            assert wait_for(lambda: sorted(stored_ids(str(location))) == sorted(s.summary_id for s in made))
        finally:
            restarted.stop()
    finally:
        first.kill()
        agents.disconnect()
        agents.loop_stop()


def test_two_collectors_with_one_client_id_are_told_so(broker, tmp_path):
    first = Running(config(broker.port, str(tmp_path / "a"), client_id="fleet"))
    second = Running(config(broker.port, str(tmp_path / "b"), client_id="fleet"))
    try:  # each connection takes the persistent session from the other one
        told = "another client may be using client id 'fleet'. Fix: give each its own collector.client_id"
        reasons = lambda: [r.collector.link.snapshot().reason or "" for r in (first, second)]  # noqa: E731
        assert wait_for(lambda: any(told in reason for reason in reasons()), 30), reasons()
    finally:
        first.stop()
        second.stop()


def test_rows_stored_twice_are_read_once_and_compaction_writes_each_once(tmp_path):
    """A compaction killed between writing its file and removing the old ones leaves rows twice."""
    location = str(tmp_path / "fleet")
    for i in range(4):
        dataset.append(location, pa_table([make_summary(f"dev-{i % 2}", T0 + i * 60, seed=i)]))
    unique = sorted(stored_ids(location))
    (first,) = [Path(p) for p in sorted(dataset.open_dataset(location).files)[:1]]
    first.with_name("part-copy.parquet").write_bytes(first.read_bytes())
    assert len(stored_ids(location)) == 5  # one summary stored twice

    assert sorted(dataset.read(location, ["summary_id"]).column("summary_id").to_pylist()) == unique
    assert dataset.read(location).num_rows == 4 and "summary_id" in dataset.read(location).column_names
    windows = dataset.read(location, ["device_id", "windows"])
    assert windows.column_names == ["device_id", "windows"] and windows.num_rows == 4
    assert dataset.read_devices(location, ["dev-0", "dev-1"], ["device_id"]).num_rows == 4

    assert dataset.compact(location) == {"date=2023-11-14": 5}
    assert sorted(stored_ids(location)) == unique  # each once, in one file
    assert len(dataset.open_dataset(location).files) == 1


def test_a_collector_stopped_with_summaries_buffered_writes_and_acknowledges_them(broker, tmp_path, caplog):
    """Stopped cleanly (SIGTERM, SIGHUP, Ctrl-C) with a batch not yet due: the batch is written and
    acknowledged, to the agents and to the broker, before the collector disconnects, so nothing
    comes again; and its own disconnect is not logged as a lost connection."""
    location = str(tmp_path / "fleet")
    cfg = config(broker.port, location, client_id="stopper")
    not_due = cfg.collector.model_copy(update={"flush_summaries": 1000, "flush_s": 3600.0})
    cfg = cfg.model_copy(update={"collector": not_due})
    acks: list[str] = []
    agents = publisher(broker.port)
    agents.on_message = lambda _c, _u, msg: acks.append(msg.topic)
    agents.subscribe(ack_topic(drift_topic("edge-ttt", "+")), qos=1)
    made = [make_summary("dev-s", T0 + i * 60, seed=i) for i in range(3)]
    began = time.time()
    running = Running(cfg)
    try:
        for s in made:
            publish(agents, "dev-s", messages(s, chunk_bytes=10**6))
        assert wait_for(lambda: running.collector.receiver.counters.accepted == 3)
        assert stored_ids(location) == []  # buffered, not yet due
        with caplog.at_level("WARNING", logger="edge_ttt.stream.connection"):
            running.stop()
        assert not running.thread.is_alive()
        assert sorted(stored_ids(location)) == sorted(s.summary_id for s in made)
        # stamped with when the collector took them (the agents' clocks may be off)
        stamps = dataset.read(location, ["received"]).column("received").to_pylist()
        assert all(began <= t.timestamp() <= time.time() for t in stamps)
        assert wait_for(lambda: acks == [ack_topic(drift_topic("edge-ttt", "dev-s"))])
        assert not [r for r in caplog.records if "connection lost" in r.getMessage()]
        # the broker was acknowledged too: the persistent session holds nothing to deliver again
        restarted = Running(cfg)
        try:
            time.sleep(1.5)
            assert restarted.collector.receiver.counters.duplicates == 0
            assert restarted.collector.receiver.counters.messages == 0
        finally:
            restarted.stop()
    finally:
        agents.disconnect()
        agents.loop_stop()


def test_a_summary_of_another_device_than_its_topic_names_is_refused(broker, tmp_path):
    """Brokers authorize by topic: a device allowed to publish on its own drift topic only must not
    file summaries under another device's id by writing that id into the payload."""
    location = str(tmp_path / "fleet")
    running = Running(config(broker.port, location))
    agents = publisher(broker.port)
    forged, own = make_summary("victim", T0, seed=1), make_summary("mallory", T0 + 60, seed=2)
    try:
        publish(agents, "mallory", messages(forged))
        publish(agents, "mallory", messages(own))
        counters = running.collector.receiver.counters
        assert wait_for(lambda: counters.misaddressed == 1 and counters.accepted == 1)
        publish(agents, "victim", messages(forged))  # where it belongs, the same summary is taken
        assert wait_for(lambda: counters.accepted == 2)
    finally:
        running.stop()
        agents.disconnect()
        agents.loop_stop()
    table = dataset.read(location, ["summary_id", "device_id"])
    assert sorted(zip(*table.to_pydict().values(), strict=True)) == sorted(
        [(forged.summary_id, "victim"), (own.summary_id, "mallory")]
    )


def test_collect_with_its_password_variable_unset_says_so_in_one_line(tmp_path, monkeypatch):
    """Before, the MQTT client was made outside the command's checks: a traceback, exit 1."""
    from typer.testing import CliRunner

    from edge_ttt.cli import app

    monkeypatch.delenv("EDGE_TTT_UNSET_PW", raising=False)
    toml = tmp_path / "monitor.toml"
    toml.write_text(
        '[mqtt]\nport = 1\nusername = "collector"\npassword_env = "EDGE_TTT_UNSET_PW"\n'
        f'[collector]\ndataset = "{tmp_path / "fleet"}"\n'
    )
    result = CliRunner().invoke(app, ["collect", "--config", str(toml)])
    assert result.exit_code == 2, result.output
    assert "EDGE_TTT_UNSET_PW" in result.output and "Traceback" not in result.output
