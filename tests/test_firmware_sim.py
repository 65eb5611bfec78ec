"""Simulated devices, replay and record against a real mosquitto (the `broker` fixture)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from typer.testing import CliRunner

from edge_ttt.recordlog import read_log, write_log
from edge_ttt.stream.codec import Frame, decode, encode
from firmware_sim.cli import app
from firmware_sim.devices import Link, SimDevice
from firmware_sim.record import Recorder
from firmware_sim.replay import replay_schedule
from firmware_sim.scenarios import BUILTINS
from firmware_sim.signals import IMU_CHANNELS, ImuSource
from tests.conftest import synthetic_log, wait_for


def address(broker) -> str:
    return f"127.0.0.1:{broker.port}"


def recorder(port: int) -> Recorder:
    rec = Recorder("127.0.0.1", port)
    rec.start()
    assert rec.subscribed.wait(10), "the recorder did not subscribe"
    return rec


def record_process(address: str, out: Path, *options: str) -> subprocess.Popen:
    """`firmware-sim record` as a user runs it, once subscribed: nothing published from then on is missed."""
    cmd = [sys.executable, "-m", "firmware_sim.cli", "record", "--broker", address, "--out", str(out)]
    cmd += options
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stderr is not None and "recording" in proc.stderr.readline()
    return proc


def gappy_log():
    """Three devices, 6 s at 50 Hz; dev1 misses 2.00-3.00 s (a gap) and dev2 one sample."""
    log = synthetic_log(devices=3, seconds=6.0)
    since = (log.t_ns - log.t_ns.min()) / 1e9
    gap = (log.device_id == "dev1") & (since >= 2.0) & (since < 3.0)
    missing = (log.device_id == "dev2") & (np.abs(since - 4.1) < 1e-9)
    return log.select(~(gap | missing))


def test_replay_timing_keeps_sample_times_and_shows_the_gap():
    log = gappy_log()
    links = {d: None for d in log.devices()}
    items = replay_schedule(log, links, "p/{device}/dt/0", 10.0, 10, BUILTINS["clean"])
    dues = {}
    for due, _, topic, payload in items:
        frame = decode(payload)
        dues.setdefault(topic.split("/")[1], []).append((due, frame))
    origin = int(log.t_ns.min())
    for frames in dues.values():
        assert [f.seq for _, f in frames] == list(range(len(frames)))
        for due, frame in frames:  # due when the last sample was taken, at 10x speed
            assert due == (int(frame.times()[-1]) - origin) / 1e9 / 10.0
    t0 = np.array([f.t0_ns for _, f in dues["dev1"]])
    assert np.diff(t0).max() == 1_000_000_000 + 200_000_000  # the 1 s gap between two 10-sample frames
    due = [item[0] for item in items]
    assert due == sorted(due)


def test_replay_then_record_reproduces_the_log_bit_for_bit(tmp_path, broker):
    """Both commands as a user runs them: `record` in its own process, `replay` into the broker."""
    path, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    write_log(path, gappy_log())
    original = read_log(path)
    address = f"127.0.0.1:{broker.port}"
    record = record_process(address, out, "--duration", "5")
    try:
        result = CliRunner().invoke(
            app, ["replay", "--log", str(path), "--broker", address, "--as-fast-as-possible"]
        )
        assert result.exit_code == 0, result.output
        published = int(re.search(r"published (\d+)", result.output).group(1))
        stdout, _ = record.communicate(timeout=30)
    finally:
        record.kill()
    assert record.returncode == 0 and f"recorded {published} frames" in stdout
    back = read_log(out)
    assert back.devices() == original.devices() == ["dev0", "dev1", "dev2"]
    assert np.array_equal(back.device_id, original.device_id)
    assert np.array_equal(back.t_ns, original.t_ns)
    assert np.array_equal(back.values.view(np.uint32), original.values.view(np.uint32))
    assert back.sample_rate_hz == original.sample_rate_hz and back.channels == original.channels


def test_twenty_devices_deliver_every_frame_in_sequence(broker):
    rec = recorder(broker.port)
    try:
        result = CliRunner().invoke(
            app,
            [
                *("devices", "--broker", address(broker), "--count", "20", "--rate", "50", "--duration", "3"),
                *("--scenario", "mixed", "--clock-offset-ms", "50"),
            ],
        )
        assert result.exit_code == 0, result.output
        published = int(re.search(r"published (\d+)", result.output).group(1))
        assert "dropped 0" in result.output and published >= 20 * 14
        assert wait_for(lambda: rec.count() == published)
    finally:
        rec.stop()
    seqs = rec.seqs()
    assert len(seqs) == 20
    assert all(s == list(range(len(s))) and len(s) >= 14 for s in seqs.values())
    assert rec.duplicates == 0 and rec.rejected == 0
    t0 = [frame.t0_ns for (_, _, seq, _), frame in sorted(rec.frames.items()) if seq == 0]
    assert len(set(t0)) == 20 and max(t0) - min(t0) <= 100_000_000  # clock offsets within +-50 ms


def test_device_buffers_while_the_broker_is_down_and_drops_the_oldest(broker):
    rec = recorder(broker.port)
    link = Link(
        "127.0.0.1", broker.port, "buffered-dev", buffer_frames=5, reconnect_min_s=0.1, reconnect_max_s=0.3
    )
    device = SimDevice(
        "dev", ImuSource(50.0), BUILTINS["clean"].for_device(0, "dev", IMU_CHANNELS), 50.0, 10, 0
    )
    topic = "edge-ttt/dev/dt/0"
    link.open()
    try:
        assert link.connected.wait(10)

        def send(n: int) -> None:
            for _ in range(n):
                link.send(topic, encode(device.next_frame()))

        send(5)
        assert wait_for(lambda: rec.count() == 5)
        broker.stop()
        assert wait_for(lambda: not link.connected.is_set() and not rec.subscribed.is_set())
        send(8)  # seqs 5..12 while down: a buffer of 5 keeps 8..12 and drops 5, 6, 7
        assert link.dropped == 3 and len(link.buffer) == 5
        broker.start()
        assert rec.subscribed.wait(10) and link.connected.wait(10)
        send(3)  # the buffer goes out first, then 13..15
        assert wait_for(lambda: rec.count() == 13)
    finally:
        link.close()
        rec.stop()
    assert rec.seqs() == {"dev": [0, 1, 2, 3, 4, *range(8, 16)]}


def test_recorder_drops_redelivered_frames_and_counts_bad_ones():
    rec = Recorder("127.0.0.1", 1)  # never started: messages are handed in directly
    device = SimDevice("d", ImuSource(50.0), BUILTINS["clean"].for_device(0, "d", IMU_CHANNELS), 50.0, 10, 0)
    first, second = encode(device.next_frame()), encode(device.next_frame())
    for payload in (first, second, first, b"junk"):
        msg = paho.MQTTMessage(topic=b"edge-ttt/d/dt/0")
        msg.payload = payload
        rec._on_message(rec.client, None, msg)
    assert rec.seqs() == {"d": [0, 1]} and rec.duplicates == 1 and rec.rejected == 1
    assert len(rec.log(IMU_CHANNELS)) == 20


def test_a_device_that_restarts_its_sequence_numbers_is_recorded_not_dropped_as_a_duplicate():
    """A reboot (or a second run of the simulator) sends seq 0, 1, ... again, later: new frames.
    Before, they were counted as QoS 1 redeliveries and their samples lost."""
    rec = Recorder("127.0.0.1", 1)
    t0, period = 1_704_067_200_000_000_000, 20_000_000
    boots = [
        Frame(0, seq, t0 + (boot * 100 + seq) * 10 * period, period, np.full((10, 6), boot, np.float32))
        for boot in (0, 1)
        for seq in (0, 1)
    ]
    for frame in [*boots, boots[3]]:  # the last one redelivered
        msg = paho.MQTTMessage(topic=b"edge-ttt/d/dt/0")
        msg.payload = encode(frame)
        rec._on_message(rec.client, None, msg)
    assert rec.duplicates == 1 and rec.seqs() == {"d": [0, 0, 1, 1]}
    log = rec.log(IMU_CHANNELS)
    assert len(log) == 40 and log.values[:20].max() == 0.0 and log.values[20:].min() == 1.0


def test_frames_that_do_not_fit_the_log_are_left_out_and_the_others_kept():
    """One device with another channel count or rate (a misconfigured one) costs only its own
    frames: before, it made every save fail and the recorder stop, with nothing written."""
    rec = Recorder("127.0.0.1", 1)
    t0, period = 1_704_067_200_000_000_000, 20_000_000
    sent = {
        "good": Frame(0, 0, t0, period, np.zeros((10, 6), np.float32)),
        "jittery": Frame(0, 0, t0, int(period * 1.02), np.ones((10, 6), np.float32)),
        "three": Frame(0, 0, t0, period, np.zeros((10, 3), np.float32)),
        "fast": Frame(0, 0, t0, period // 2, np.zeros((10, 6), np.float32)),
    }
    more = [Frame(0, seq, t0 + seq * 10 * period, period, np.zeros((10, 6), np.float32)) for seq in (1, 2)]
    for device, frame in [*sent.items(), ("good", more[0]), ("good", more[1])]:  # 50 Hz: the most
        msg = paho.MQTTMessage(topic=f"edge-ttt/{device}/dt/0".encode())  # common frame period
        msg.payload = encode(frame)
        rec._on_message(rec.client, None, msg)
    log = rec.log(IMU_CHANNELS)
    assert sorted(log.devices()) == ["good", "jittery"] and log.sample_rate_hz == 50.0
    assert rec.misfits == {("three", "3 channels, not 6"): 1, ("fast", "100 Hz, not the log's 50 Hz"): 1}
    only_three = Recorder("127.0.0.1", 1)
    only_three.frames = {("three", 0, 0, t0): sent["three"]}
    with pytest.raises(ValueError, match=r"no frame has 6 channels \(frames have \[3\]\)"):
        only_three.log(IMU_CHANNELS)


@pytest.mark.parametrize("device", ["a/b", "x+y", "#", ""])
def test_replay_refuses_a_device_id_that_cannot_be_a_topic_level(tmp_path, device):
    """Before, paho raised in the middle of the replay ('Publish topic cannot contain wildcards')."""
    log = synthetic_log(devices=2, seconds=2.0)
    log.device_id[log.device_id == log.devices()[0]] = device
    path = tmp_path / "log.parquet"
    write_log(path, log)
    result = CliRunner().invoke(
        app, ["replay", "--log", str(path), "--broker", "127.0.0.1:1", "--as-fast-as-possible"]
    )
    assert result.exit_code == 2
    assert (
        f"device id {device!r} in {path} cannot be a level of the topic edge-ttt/<device>/dt/0"
        in result.output
    )


class _CountingLink:
    """A Link's counting side, without a broker."""

    def __init__(self) -> None:
        self.published, self.dropped, self.buffer, self.closed = 0, 0, [], False

    def send(self, topic: str, payload: bytes) -> None:
        self.published += 1

    def close(self) -> None:
        self.closed = True


def test_pump_prints_progress_lines_where_no_bar_can_be_drawn(capsys):
    """Piped (stderr not a terminal), a paced run of minutes would otherwise print nothing until
    its summary; here every_s=0 asks for a line after every frame."""
    from firmware_sim.devices import pump

    link = _CountingLink()
    summary = pump(((0.0, link, "t", b"x") for _ in range(3)), [link], paced=False, total=3, progress=True,
                   every_s=0.0)  # fmt: skip
    assert summary.published == 3 and link.closed
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "publishing: 1 frames of 3 (33%)",
        "publishing: 2 frames of 3 (67%)",
        "publishing: 3 frames of 3 (100%)",
    ]
    pump(
        ((0.0, link, "t", b"x") for _ in range(3)), [link], paced=False, total=3, progress=False, every_s=0.0
    )
    assert capsys.readouterr().err == ""


def test_devices_that_cannot_connect_are_named_with_the_reason(broker):
    from firmware_sim.broker import free_port
    from firmware_sim.devices import connect

    port = free_port()  # nothing listens there
    links = [Link("127.0.0.1", port, f"dev-{i}") for i in range(3)]
    try:
        offline = connect(links, wait_s=1.0)
        assert offline == links
        refused = f"connection refused by 127.0.0.1:{port}: no broker listening there"
        assert wait_for(lambda: links[0].reason == refused)
    finally:
        for link in links:
            link.close()
    online = [Link("127.0.0.1", broker.port, f"dev-{i}") for i in range(3)]
    try:
        assert connect(online, wait_s=10.0) == [] and all(link.reason is None for link in online)
    finally:
        for link in online:
            link.close()


def test_replay_without_a_broker_says_so_and_counts_what_it_could_not_send(tmp_path):
    from firmware_sim.broker import free_port

    path = tmp_path / "in.parquet"
    write_log(path, gappy_log())
    address = f"127.0.0.1:{free_port()}"
    command = ["replay", "--log", str(path), "--broker", address, "--as-fast-as-possible"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert f"3 of 3 devices not connected after 10 s (connection refused by {address}" in result.output
    assert re.search(r"published 0, dropped \d+, still buffered \d+", result.output)


def test_a_recorder_stopped_by_sigterm_writes_everything_and_one_killed_keeps_its_last_save(tmp_path, broker):
    """SIGTERM, and SIGHUP (its terminal went away), end a recorder as Ctrl-C does; the one hung up
    saves only at the end, so what it wrote is the signal's doing."""
    path = tmp_path / "in.parquet"
    write_log(path, gappy_log())
    address = f"127.0.0.1:{broker.port}"
    outs = [tmp_path / "term.parquet", tmp_path / "killed.parquet", tmp_path / "hup.parquet"]
    recorders = [record_process(address, out, "--save-every", "0.5") for out in outs[:2]]
    recorders.append(record_process(address, outs[2], "--save-every", "0"))
    try:
        command = ["replay", "--log", str(path), "--broker", address, "--as-fast-as-possible"]
        assert CliRunner().invoke(app, command).exit_code == 0
        assert wait_for(lambda: outs[1].exists() and len(read_log(outs[1])) == len(read_log(path)), 20)
        recorders[1].send_signal(signal.SIGKILL)  # after a save that holds every frame
        assert not outs[2].exists()
        for proc, sig in ((recorders[0], signal.SIGTERM), (recorders[2], signal.SIGHUP)):
            proc.send_signal(sig)
            stdout, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0 and "recorded" in stdout
    finally:
        for proc in recorders:
            proc.kill()
    original = read_log(path)
    for out in outs:
        back = read_log(out)
        assert np.array_equal(back.t_ns, original.t_ns) and np.array_equal(back.values, original.values)
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written save left behind


def test_devices_stopped_by_sigterm_end_like_ctrl_c_with_their_summary(broker):
    cmd = [sys.executable, "-m", "firmware_sim.cli", "devices", "--broker", address(broker), "--count", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rec = recorder(broker.port)
    try:
        assert wait_for(lambda: rec.count() >= 10, 20)  # publishing
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        rec.stop()
    assert proc.returncode == 0 and re.search(r"frames produced \d+, published \d+, dropped 0", stdout)
