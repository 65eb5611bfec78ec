"""`edge-ttt` command line: host commands (datasets, train, export) and device commands (replay, run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from edge_ttt import logs
from edge_ttt.adapt.policies import DEFAULT_POLICY, POLICY_TYPES
from edge_ttt.monitor.cli import collect_command, monitor_app

POLICIES = tuple(POLICY_TYPES)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
datasets_app = typer.Typer(no_args_is_help=True, help="Convert public sensor datasets into recorded logs.")
app.add_typer(datasets_app, name="datasets")
app.command("collect")(collect_command)
app.add_typer(monitor_app, name="monitor")


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _host_import(module: str):
    """Import a host-side (torch) module, or explain which extra is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name in {"torch", "seglearn"}:
            _fail(f"this command runs on the host and needs {exc.name}: pip install 'edge-ttt[export]'")
        raise


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
    json_logs: Annotated[
        bool | None, typer.Option("--json-logs/--text-logs", help="default: JSON unless a terminal")
    ] = None,
) -> None:
    logs.configure(log_level, json_logs)


@datasets_app.command("watch")
def datasets_watch(out: Annotated[Path, typer.Option(help="directory for the two logs")]) -> None:
    """The seglearn smartwatch recordings: watch_source (subjects 1-5) and watch_target (6-10)."""
    watch = _host_import("firmware_sim.datasets.watch")
    try:
        paths = watch.convert_watch(out)
    except (RuntimeError, OSError, ValueError) as exc:
        _fail(str(exc))
    for split, path in paths.items():
        typer.echo(f"{split}: {path}")


@app.command()
def train(
    log: Annotated[Path, typer.Option(help="labeled recorded log (Parquet, log format v1)")],
    out: Annotated[Path, typer.Option(help="checkpoint to write, e.g. model.pt")],
    model: Annotated[str, typer.Option(help="cnn-bn, cnn-gn, tcn-ln or cnn-bn-ttt")] = "cnn-bn",
    window: Annotated[int, typer.Option(min=8, help="samples per window")] = 128,
    hop: Annotated[int, typer.Option(min=1, help="samples between window starts")] = 64,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train a source model; prints the held-out validation accuracy."""
    train_mod = _host_import("export.train")
    from edge_ttt.recordlog import LogFormatError

    cfg = train_mod.TrainConfig(model=model, window=window, hop=hop, epochs=epochs, seed=seed)
    try:
        result = train_mod.train(log, out, cfg, show_progress=sys.stderr.isatty())
    except (LogFormatError, ValueError) as exc:
        _fail(str(exc))
    r = result.report
    aux = f", auxiliary task {r['aux_val_accuracy']:.3f}" if "aux_val_accuracy" in r else ""
    typer.echo(
        f"{model}: held-out validation accuracy {r['val_accuracy']:.3f}{aux} "
        f"({r['val_windows']} windows from {', '.join(r['val_devices'])}); wrote {out}"
    )


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint written by `edge-ttt train`")],
    out: Annotated[Path, typer.Option(help="artifact directory to create")],
    force: Annotated[bool, typer.Option(help="replace an existing directory")] = False,
) -> None:
    """Export ONNX Runtime training artifacts (only normalization parameters trainable) + manifest."""
    bundle = _host_import("export.bundle")
    graph = _host_import("export.onnx_graph")
    try:
        manifest = bundle.export_checkpoint(checkpoint, out, force=force)
    except (FileNotFoundError, FileExistsError, ValueError, graph.ExportError) as exc:
        _fail(str(exc))
    typer.echo(f"exported {manifest.model.name} ({len(manifest.trainable)} trainable tensors) to {out}")


@app.command()
def replay(
    artifacts: Annotated[Path, typer.Option(help="artifact directory")],
    log: Annotated[Path, typer.Option(help="recorded log to replay")],
    policy: Annotated[
        str, typer.Option(help=f"{', '.join(POLICIES)}, or all (default: {DEFAULT_POLICY})")
    ] = DEFAULT_POLICY,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object per policy")] = False,
    episodic: Annotated[
        bool, typer.Option(help="adapt on each batch, predict, then forget (gradient policies)")
    ] = False,
) -> None:
    """Replay a recorded log through the engine, in time order, and report accuracy and counters."""
    from edge_ttt.artifacts import BundleError
    from edge_ttt.recordlog import LogFormatError
    from edge_ttt.replay import replay as run_replay

    policies = None if policy == "all" else [policy]  # all: every policy the bundle can run
    if policies is not None and policy not in POLICIES:
        _fail(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)} or all")
    try:
        results = run_replay(
            artifacts, log, policies, batch_size, device, show_progress=sys.stderr.isatty(), episodic=episodic
        )
    except (BundleError, LogFormatError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    for result in results:
        if as_json:
            typer.echo(json.dumps(result))
            continue
        acc = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.3f}"
        mode = " (episodic)" if result["episodic"] else ""
        typer.echo(
            f"{result['policy']}{mode}: {result['windows']} windows, accuracy {acc}, "
            f"{result['adapt_steps']} adaptation steps, {result['rejected_invalid']} invalid, "
            f"{result['resets']} resets, {result['rollbacks']} rollbacks, "
            f"{result['ms_per_window']:.3f} ms/window"
        )


@app.command()
def run(
    config: Annotated[Path, typer.Option(help="agent configuration (TOML), e.g. configs/sim.toml")],
) -> None:
    """Run the edge agent: MQTT sensor frames in, predictions out, adapting as it goes."""
    import signal

    from edge_ttt.agent import Agent
    from edge_ttt.agent.config import load_config
    from edge_ttt.artifacts import BundleError
    from edge_ttt.config_file import ConfigError

    try:
        cfg = load_config(config)
        logs.configure(cfg.logging.level, cfg.logging.json_lines)
        agent = Agent(cfg)
    except (ConfigError, BundleError, RuntimeError) as exc:
        _fail(str(exc))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    agent.run()


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="data, cached model, run files and the report")] = Path(
        "runs/demo"
    ),
    devices: Annotated[int, typer.Option(min=2, max=10, help="simulated devices (target recordings)")] = 6,
    minutes: Annotated[float | None, typer.Option(min=0.1, help="of each recording; default: all")] = None,
    speed: Annotated[float, typer.Option(min=0.1, help="replay speed, multiple of real time")] = 10.0,
    epochs: Annotated[int, typer.Option(min=1, help="training epochs when no model is cached")] = 20,
    retrain: Annotated[bool, typer.Option(help="train and export again even if cached")] = False,
    broker: Annotated[
        str | None, typer.Option(help="use this broker (HOST:PORT) instead of starting one")
    ] = None,
    seed: Annotated[int, typer.Option(help="seeds the scenarios' random faults")] = 0,
) -> None:
    """The whole pipeline on real smartwatch data: model, broker, drifting devices, agents, report."""
    run_mod = _host_import("firmware_sim.demo.run")
    from firmware_sim.broker import parse_address
    from firmware_sim.demo import DemoError
    from firmware_sim.demo.results import print_results

    try:
        address = None if broker is None else parse_address(broker)
    except ValueError as exc:
        _fail(f"--broker {exc}")
    opts = run_mod.DemoOptions(workdir, devices, minutes, speed, epochs, retrain, address, seed)
    try:
        result = run_mod.run_demo(opts)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        _fail("the demo trains a model and needs torch: pip install 'edge-ttt[demo]'")
    except (DemoError, RuntimeError, OSError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # before the live part, where Ctrl-C ends the run in order
        typer.secho("interrupted", err=True)
        raise typer.Exit(code=130) from None
    print_results(result, Console(width=None if sys.stdout.isatty() else 100))
    if result.interrupted:
        raise typer.Exit(code=130)


@app.command()
def health(
    config: Annotated[Path, typer.Option(help="the agent's configuration")],
    max_age: Annotated[float | None, typer.Option(help="seconds; default 3 status intervals")] = None,
) -> None:
    """Exit 0 when the agent's local status is online and fresh (for container health checks)."""
    from edge_ttt.agent import health as agent_health
    from edge_ttt.agent.config import load_config
    from edge_ttt.config_file import ConfigError

    try:
        problem = agent_health(load_config(config, check_files=False), max_age)
    except ConfigError as exc:  # 1, not 2: container runtimes reserve exit code 2 of a health check
        problem = str(exc)
    if problem is not None:
        typer.secho(f"unhealthy: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    typer.echo("healthy")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
