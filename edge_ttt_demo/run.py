"""The demo's stages in order; the live part stops cleanly on Ctrl-C (SIGINT) or SIGTERM."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edge_ttt.adapt.policies import DEFAULT_POLICY
from edge_ttt.recordlog import read_log
from edge_ttt_demo import DemoError
from edge_ttt_demo.fleet import FLEET_SCENARIOS, Fleet, plan_fleet
from edge_ttt_demo.results import POLICIES, DemoResult, device_results
from edge_ttt_demo.services import Agents, Listener, agent_config, running_broker
from firmware_sim.devices import Link, pump
from firmware_sim.replay import replay_schedule

MODEL = "cnn-bn"
SAMPLES_PER_FRAME = 25  # half a second of 50 Hz samples per MQTT message


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("runs/demo")
    devices: int = len(FLEET_SCENARIOS)
    minutes: float | None = None  # of each device's recording; None: all of it
    speed: float = 10.0  # replay speed, multiple of real time
    epochs: int = 20
    retrain: bool = False
    broker: tuple[str, int] | None = None  # an existing broker; None: start one
    seed: int = 0


# --- the fixed part: data and model ----------------------------------------------------------


def prepare_data(workdir: Path) -> dict[str, Path]:
    from firmware_sim.datasets.watch import convert_watch

    paths = {split: workdir / "data" / f"watch_{split}.parquet" for split in ("source", "target")}
    if not all(p.exists() for p in paths.values()):
        paths = convert_watch(workdir / "data")
    return paths


def prepare_model(
    workdir: Path, source_log: Path, epochs: int, retrain: bool, say: Callable[[str], None]
) -> Path:
    """The exported bundle; trained and exported only when no verified one is cached."""
    from edge_ttt.artifacts import MANIFEST, BundleError, load_bundle
    from export.bundle import export_checkpoint
    from export.train import TrainConfig, missing_reference, train

    checkpoint, bundle = workdir / "model" / f"{MODEL}.pt", workdir / "model" / MODEL
    missing = missing_reference(checkpoint) if checkpoint.exists() and not retrain else []
    if missing:
        say(f"the cached {checkpoint} predates {', '.join(missing)} in its reference: training again")
    if retrain or not checkpoint.exists() or missing:
        say(f"training {MODEL} on {source_log.name} ({epochs} epochs)")
        result = train(
            source_log,
            checkpoint,
            TrainConfig(model=MODEL, epochs=epochs),
            show_progress=sys.stderr.isatty(),
            say=say,
        )
        say(f"held-out validation accuracy {result.report['val_accuracy']:.3f}")
    else:
        say(f"reusing {checkpoint} (--retrain trains again)")
    try:
        fresh = load_bundle(bundle).file(MANIFEST).stat().st_mtime >= checkpoint.stat().st_mtime
    except BundleError:
        fresh = False
    if retrain or not fresh or missing:
        say(f"exporting to {bundle}")
        export_checkpoint(checkpoint, bundle, force=True)
    return bundle


def _wait(
    condition: Callable[[], bool],
    timeout_s: float,
    stop: threading.Event,
    check: Callable[[], None] = lambda: None,
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        check()
        if condition():
            return True
        time.sleep(0.1)
    return condition()


MADE_BY_DEMO = ".edge-ttt-demo"  # marks the directories a run may wipe


def _demo_made(path: Path) -> bool:
    """Whether `path` is a demo's own run or fleet directory: a marked run directory (or one with
    the demo's agent configs `demo-*.toml`, as runs before the mark left it), a dataset of `date=`
    partitions only, or an empty one."""
    if (path / MADE_BY_DEMO).is_file() or any(path.glob("demo-*.toml")):
        return True
    return all(p.name.startswith(("date=", ".")) for p in path.iterdir())


@dataclass(frozen=True)
class RunDirs:
    """Per run (wiped first: adapted state and summaries of an earlier run would skew this one),
    but only where a demo made them: a --workdir that already holds a `run` or `fleet` of the
    user's own is refused, not wiped."""

    rundir: Path  # agent configs, logs, state, spools; broker config
    fleet: Path  # the collector's dataset
    run_id: str

    @staticmethod
    def fresh(workdir: Path) -> RunDirs:
        dirs = RunDirs(workdir / "run", workdir / "fleet", uuid.uuid4().hex[:8])
        for old in (dirs.rundir, dirs.fleet):
            if old.exists() and not (old.is_dir() and _demo_made(old)):
                raise DemoError(
                    f"{old} exists and is not a demo's: the demo wipes its run and fleet directories "
                    "before each run; choose another --workdir"
                )
        for old in (dirs.rundir, dirs.fleet):
            shutil.rmtree(old, ignore_errors=True)
        dirs.rundir.mkdir(parents=True)
        (dirs.rundir / MADE_BY_DEMO).touch()  # the fleet is the collector's: its partitions tell it
        return dirs

    @property
    def prefix(self) -> str:  # a topic space of its own, also on a shared broker
        return f"edge-ttt-demo/{self.run_id}"


def start_agents(agents: Agents, dirs: RunDirs, bundle: Path, mqtt: dict[str, Any]) -> None:
    """The default policy's agent ships drift summaries to the fleet; the source agent's stay aside."""
    for policy in POLICIES:
        drift = "{prefix}/{device}/drift" + ("" if policy == DEFAULT_POLICY else f"-{policy}")
        name = f"demo-{policy}-{dirs.run_id}"
        config = agent_config(
            dirs.rundir / f"{name}.toml",
            agent=name,
            policy=policy,
            bundle=bundle,
            mqtt=mqtt,
            drift_topic=drift,
            collected=policy == DEFAULT_POLICY,
        )
        agents.start(name, config, dirs.rundir / f"{name}.log")


def run_demo(opts: DemoOptions, console: Console | None = None) -> DemoResult:
    """Everything, in order; Ctrl-C (SIGINT) or SIGTERM during the live part stops it cleanly."""
    console = console or Console(stderr=True, soft_wrap=True)  # a path is never cut in two lines

    def say(message: str) -> None:
        console.print(f"[bold cyan]demo[/] {message}")

    try:
        from edge_ttt.monitor.report import write_report
    except ModuleNotFoundError as exc:
        raise DemoError(
            f"the demo writes the fleet report and needs {exc.name}: pip install 'edge-ttt[demo]'"
        ) from None

    workdir = opts.workdir.resolve()
    say(f"[1/5] data: the seglearn smartwatch recordings into {workdir / 'data'}")
    logs = prepare_data(workdir)
    say("[2/5] model")
    bundle = prepare_model(workdir, logs["source"], opts.epochs, opts.retrain, say)
    fleet = plan_fleet(bundle, read_log(logs["target"]), opts.devices, opts.minutes)
    dirs = RunDirs.fresh(workdir)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    agents = Agents()
    try:
        broker_text = run_live(opts, fleet, bundle, dirs, agents, stop, say, console)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("[5/5] report")
    from edge_ttt.monitor import dataset
    from edge_ttt.monitor.config import AlertsSection

    report: Path | None = None
    if dataset.exists(str(dirs.fleet)):
        report = workdir / "report.html"
        from edge_ttt.artifacts import load_bundle

        reference = load_bundle(bundle).manifest.reference.val_accuracy
        write_report(dataset.read(str(dirs.fleet)), AlertsSection(), report, reference_accuracy=reference)
    results = device_results(fleet, dirs.fleet)
    codes = {name: proc.returncode for name, proc in agents.procs.items()}
    return DemoResult(results, report, stop.is_set(), broker_text, codes)


def run_live(
    opts: DemoOptions,
    fleet: Fleet,
    bundle: Path,
    dirs: RunDirs,
    agents: Agents,
    stop: threading.Event,
    say: Callable[[str], None],
    console: Console,
) -> str:
    """Broker, listener, collector, agents up; stream; drain; down in reverse order (the agents'
    last summaries still reach the collector). Returns what broker it was."""
    from edge_ttt.monitor.collector import Collector
    from edge_ttt.monitor.config import MonitorConfig

    with contextlib.ExitStack() as teardown:
        host, port, protocol, broker_text = teardown.enter_context(running_broker(opts.broker, dirs.rundir))
        say(f"[3/5] broker: {broker_text}")
        mqtt = {"host": host, "port": port, "protocol": protocol, "prefix": dirs.prefix}
        collector_cfg = {
            "dataset": str(dirs.fleet),
            "client_id": f"demo-collector-{dirs.run_id}",
            "flush_summaries": 10,
            "flush_s": 2.0,
        }
        monitor = MonitorConfig.model_validate({"mqtt": mqtt, "collector": collector_cfg})
        listener = Listener(monitor.mqtt, f"demo-listener-{dirs.run_id}", dirs.prefix, fleet.board)
        listener.start()
        teardown.callback(listener.close)
        collector = Collector(monitor)
        collector_stop = threading.Event()
        collecting = threading.Thread(target=collector.run, args=(collector_stop,), name="collector")
        collecting.start()

        @teardown.callback
        def _stop_collector() -> None:
            # The agents ship their last summaries as they stop; give the collector a moment for them.
            _settle(lambda: collector.receiver.counters.accepted, still_s=3.0, max_s=20.0)
            collector_stop.set()
            collecting.join(30)

        start_agents(agents, dirs, bundle, mqtt)
        teardown.callback(agents.stop)
        say(
            f"started the collector and {len(agents.procs)} agents ({', '.join(POLICIES)}); "
            f"logs in {dirs.rundir}"
        )
        with _waiting(console, say, "waiting for the agents to come online"):
            ready = _wait(
                lambda: (
                    set(agents.procs) <= listener.online
                    and collector.subscribed.is_set()
                    and listener.subscribed.is_set()
                ),
                120.0,
                stop,
                agents.check_alive,
            )
        if not ready and not stop.is_set():
            raise DemoError(f"the agents did not come online within 120 s; see their logs in {dirs.rundir}")
        if not stop.is_set():
            duration_s = (int(fleet.log.t_ns.max()) - int(fleet.log.t_ns.min())) / 1e9
            say(
                f"[4/5] streaming {len(fleet.log.devices())} devices ({duration_s / 60:.1f} min of "
                f"recordings each at {opts.speed:g}x, about {duration_s / opts.speed:.0f} s)"
            )
            stream(fleet, host, port, dirs, opts, stop)
            with _waiting(console, say, "waiting for the last predictions"):
                board, expected = fleet.board, len(fleet.board.labels)
                _settle(
                    lambda: sum(board.received(p) for p in POLICIES),
                    still_s=10.0,
                    done=lambda: min(board.received(p) for p in POLICIES) >= expected,
                    stop=stop,
                )
    return broker_text


def _waiting(
    console: Console, say: Callable[[str], None], text: str
) -> contextlib.AbstractContextManager[object]:
    """A spinner on a terminal; elsewhere (a pipe, a log) one line, as a spinner draws nothing there."""
    if console.is_terminal:
        return console.status(text)
    say(text)
    return contextlib.nullcontext()


def stream(
    fleet: Fleet, host: str, port: int, dirs: RunDirs, opts: DemoOptions, stop: threading.Event
) -> None:
    """Each device of the fleet through its scenario into MQTT at `opts.speed`, until done or `stop`."""
    log = fleet.log
    links = {
        d: Link(host, port, f"demo-{dirs.run_id}-{d}", qos=1, buffer_frames=100_000) for d in log.devices()
    }
    for link in links.values():
        link.open()
    _wait(lambda: all(link.connected.is_set() for link in links.values()), 10.0, stop)
    topic = f"{dirs.prefix}/{{device}}/dt/0"
    items = replay_schedule(log, links, topic, opts.speed, SAMPLES_PER_FRAME, fleet.scenario, opts.seed)
    pending = itertools.takewhile(lambda _: not stop.is_set(), items)
    pump(pending, list(links.values()), paced=True, total=len(items), progress=True)


def _settle(
    value: Callable[[], int],
    still_s: float,
    max_s: float = float("inf"),
    done: Callable[[], bool] = lambda: False,
    stop: threading.Event | None = None,
) -> None:
    """Return once `done()`, or `value()` stayed the same for `still_s` seconds (nothing more is
    coming), or after `max_s`, or on `stop`."""
    deadline = time.monotonic() + max_s
    last, since = value(), time.monotonic()
    while not done() and time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        if time.monotonic() - since >= still_s:
            return
        time.sleep(0.2)
        if value() != last:
            last, since = value(), time.monotonic()
