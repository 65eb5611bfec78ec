"""`firmware-sim` command line: simulated sensor firmware and dataset converters."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from edge_ttt.commandline import command_app, fail, on_stop, run_app
from edge_ttt.recordlog import LogFormatError, RecordedLog, read_log, write_log
from edge_ttt.stream.topics import level_problem
from firmware_sim.broker import parse_address
from firmware_sim.corruptions import device_rng
from firmware_sim.datasets.cli import datasets_app
from firmware_sim.devices import Link, SimDevice, connect, fleet_schedule, pump
from firmware_sim.scenarios import BUILTINS, ScenarioError, load_scenario
from firmware_sim.signals import IMU_CHANNELS, ImuSource, LogSource, Source

if TYPE_CHECKING:
    from firmware_sim.record import Recorder

app = command_app(help=__doc__)
app.add_typer(datasets_app, name="datasets")

Broker = Annotated[str, typer.Option(help="MQTT broker as HOST:PORT")]
Prefix = Annotated[str, typer.Option(help="topic prefix: frames go to <prefix>/<device>/dt/0")]
Qos = Annotated[int, typer.Option(min=0, max=1, help="MQTT QoS of the frames")]
SamplesPerFrame = Annotated[int, typer.Option(min=1, max=1000, help="samples per frame")]
ScenarioName = Annotated[
    str,
    typer.Option(
        "--scenario", help=f"a built-in scenario ({', '.join(BUILTINS)}) or a TOML file (docs/simulator.md)"
    ),
]
Buffer = Annotated[int, typer.Option(min=1, help="frames a device keeps while disconnected")]


def _broker(value: str) -> tuple[str, int]:
    try:
        return parse_address(value)
    except ValueError as exc:
        fail(f"--broker {exc}")


def _start(links: list[Link], buffer: int) -> None:
    """Connect the devices; say so, with the reason, when some cannot (they go on as firmware does).
    From here on SIGTERM (`kill`, `timeout`, a service stop) and SIGHUP (its terminal went away)
    end the run as Ctrl-C does: the devices send what they buffered and the summary line is printed."""
    on_stop(_interrupt)
    offline = connect(links)
    if offline:
        reason = offline[0].reason or "no answer yet"
        typer.secho(
            f"warning: {len(offline)} of {len(links)} devices not connected after 10 s ({reason}); "
            f"each keeps its newest {buffer} frames and retries",
            fg=typer.colors.YELLOW,
            err=True,
        )


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def devices(
    broker: Broker,
    count: Annotated[int, typer.Option(min=1, help="number of simulated devices")] = 10,
    rate: Annotated[float, typer.Option(min=0.1, help="sample rate, Hz (a --log's own rate wins)")] = 50.0,
    scenario: ScenarioName = "clean",
    duration: Annotated[float | None, typer.Option(min=0.0, help="seconds; default: until Ctrl-C")] = None,
    seed: Annotated[int, typer.Option(help="seeds signals, faults and clock offsets")] = 0,
    prefix: Prefix = "edge-ttt",
    samples_per_frame: SamplesPerFrame = 10,
    qos: Qos = 1,
    log: Annotated[Path | None, typer.Option(help="recorded log to take signals from (looped)")] = None,
    clock_offset_ms: Annotated[float, typer.Option(min=0.0, help="max clock offset between devices")] = 0.0,
    buffer: Buffer = 500,
) -> None:
    """N simulated devices publishing frames in real time, with an optional drift scenario."""
    host, port = _broker(broker)
    try:
        plan = load_scenario(scenario)
        recorded = read_log(log) if log is not None else None
    except (ScenarioError, LogFormatError) as exc:
        fail(str(exc))
    if recorded is not None and not len(recorded):
        fail(f"{log} holds no samples")
    start_ns = time.time_ns()
    sims, links, topics = [], [], []
    for i in range(count):
        source: Source
        if recorded is None:
            device = f"sim-{i:03d}"
            source = ImuSource(rate, seed, device)
        else:
            ids = recorded.devices()
            base = ids[i % len(ids)]
            device = base if i < len(ids) else f"{base}-{i // len(ids)}"
            source = LogSource(recorded.values[recorded.device_id == base], recorded.channels)
            rate = recorded.sample_rate_hz
        offset_ns = round(device_rng(seed, device).uniform(-1, 1) * clock_offset_ms * 1e6)
        try:
            drift = plan.for_device(i, device, source.channels, seed)
        except ScenarioError as exc:
            fail(str(exc))
        sims.append(SimDevice(device, source, drift, rate, samples_per_frame, start_ns + offset_ns))
        links.append(Link(host, port, f"firmware-sim-{device}", qos, buffer))
        topics.append(f"{prefix}/{device}/dt/0")
    _start(links, buffer)
    total = None if duration is None else int(duration * rate / samples_per_frame) * count
    summary = pump(fleet_schedule(sims, links, topics, duration), links, total=total, progress=True)
    typer.echo(summary.line())


@app.command()
def replay(
    log: Annotated[Path, typer.Option(help="recorded log to replay")],
    broker: Broker,
    speed: Annotated[float, typer.Option(min=1e-3, help="time scale: 2 plays twice as fast")] = 1.0,
    as_fast_as_possible: Annotated[
        bool,
        typer.Option(
            help="ignore the log's timing; a broker with a queue limit (mosquitto keeps 1000 per "
            "client) drops what a live agent cannot take as fast (docs/simulator.md)"
        ),
    ] = False,
    scenario: ScenarioName = "clean",
    seed: Annotated[int, typer.Option(help="seeds the scenario's random faults")] = 0,
    prefix: Prefix = "edge-ttt",
    samples_per_frame: SamplesPerFrame = 10,
    qos: Qos = 1,
    buffer: Buffer = 500,
) -> None:
    """A recorded log into MQTT, each device's frames at their sample times / speed."""
    from firmware_sim.replay import replay_schedule

    host, port = _broker(broker)
    try:
        plan = load_scenario(scenario)
        recorded = read_log(log)
    except (ScenarioError, LogFormatError) as exc:
        fail(str(exc))
    for device in recorded.devices():  # before anything is published
        why = level_problem(device)
        if why:
            fail(
                f"device id {device!r} in {log} cannot be a level of the topic {prefix}/<device>/dt/0 "
                f"({why}); rename that device in the log"
            )
    links = {d: Link(host, port, f"firmware-sim-{d}", qos, buffer) for d in recorded.devices()}
    _start(list(links.values()), buffer)  # a replay starts with every device online (or after 10 s)
    try:
        items = replay_schedule(
            recorded,
            links,
            f"{prefix}/{{device}}/dt/0",
            None if as_fast_as_possible else speed,
            samples_per_frame,
            plan,
            seed,
        )
    except ScenarioError as exc:
        fail(str(exc))
    paced = not as_fast_as_possible
    summary = pump(items, list(links.values()), paced=paced, total=len(items), progress=True)
    typer.echo(summary.line())


@app.command()
def record(
    broker: Broker,
    out: Annotated[Path, typer.Option(help="recorded log to write (Parquet)")],
    duration: Annotated[float | None, typer.Option(min=0.0, help="seconds; default: until Ctrl-C")] = None,
    prefix: Prefix = "edge-ttt",
    channels: Annotated[str, typer.Option(help="channel names, comma-separated")] = ",".join(IMU_CHANNELS),
    stream: Annotated[int, typer.Option(min=0, help="stream number in the topic")] = 0,
    save_every: Annotated[
        float, typer.Option(min=0.0, help="seconds between saves of the log so far (0: only at the end)")
    ] = 60.0,
) -> None:
    """Frames from MQTT into a recorded log (device id from the topic, duplicates dropped).

    Ends after --duration, on Ctrl-C, SIGTERM or SIGHUP, writing the log; while it runs, the log so far
    is saved every --save-every seconds (atomically), so that a killed recorder loses at most that."""
    from firmware_sim.record import Recorder

    host, port = _broker(broker)
    names = tuple(c.strip() for c in channels.split(","))
    recorder = Recorder(host, port, prefix, stream)
    recorder.start()
    if not recorder.subscribed.wait(10):
        recorder.stop()
        fail(f"no MQTT broker answered at {host}:{port} within 10 s")
    typer.echo(f"recording {recorder.topic}", err=True)  # from here on nothing published is missed
    on_stop(_interrupt)  # `kill`, `timeout`, a service stop, a closed terminal: like Ctrl-C
    deadline = np.inf if duration is None else time.monotonic() + duration
    next_save = time.monotonic() + save_every if save_every > 0 else np.inf
    try:
        while time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= next_save:
                if recorder.count():
                    _save(recorder, names, out)
                next_save = time.monotonic() + save_every
    except KeyboardInterrupt:
        pass
    recorder.stop()
    recorded = _save(recorder, names, out)
    left_out = sum(recorder.misfits.values())
    typer.echo(
        f"recorded {recorder.count() - left_out} frames, {len(recorded)} samples of "
        f"{len(recorded.devices())} devices, {recorder.duplicates} duplicates, {recorder.rejected} bad "
        f"frames and {left_out} frames that do not fit the log dropped -> {out}"
    )
    for (device, why), frames in sorted(recorder.misfits.items()):
        typer.echo(f"warning: {frames} frames of device {device!r} left out: {why}", err=True)


def _save(recorder: Recorder, channels: tuple[str, ...], out: Path) -> RecordedLog:
    """Write what `recorder` holds to `out` (atomically: a kill mid-write keeps the previous save)."""
    try:
        recorded = recorder.log(channels)
        write_log(out, recorded)
    except (ValueError, LogFormatError) as exc:
        recorder.stop()
        fail(str(exc))
    return recorded


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
