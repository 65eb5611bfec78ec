"""`edge-ttt` command line: host commands (datasets, train, export), device commands (replay, run,
health), the fleet's (collect, monitor) and the whole pipeline at once (demo)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar

import typer

from edge_ttt import __version__, logs
from edge_ttt.adapt.engine import AUTO_INPUTS, SOURCE_EVERY
from edge_ttt.adapt.fallback import DEFAULT_FALLBACK
from edge_ttt.adapt.fallback_setup import AUTO_FALLBACK
from edge_ttt.adapt.input_alignment import InputOptions
from edge_ttt.adapt.label_runs import RunOptions
from edge_ttt.adapt.policies import DEFAULT_POLICY, POLICY_TYPES
from edge_ttt.adapt.runs_setup import AutoRuns
from edge_ttt.commandline import LazyGroup, command_app, fail, on_stop, run_app
from edge_ttt.monitor.cli import collect_command, monitor_app

POLICIES = tuple(POLICY_TYPES)
INPUT_CHOICES = {"auto": AUTO_INPUTS, "on": InputOptions(), "off": None}  # replay --input-alignment


class _Commands(LazyGroup):
    """Host commands come by name from the packages that own them: importing them here would pull
    the simulator and torch into the device package."""

    lazy: ClassVar[dict[str, str]] = {
        "train": "export.cli:app",
        "export": "export.cli:app",
        "demo": "edge_ttt_demo.cli:app",
        "datasets": "firmware_sim.datasets.cli:datasets_app",
    }
    order = ("collect", "train", "export", "replay", "run", "demo", "health", "datasets", "monitor")


app = command_app(cls=_Commands, help=__doc__)
app.command("collect")(collect_command)
app.add_typer(monitor_app, name="monitor")


def _print_version(value: bool) -> None:
    """`--version`: the one line a bug report needs, before any command runs."""
    if value:
        typer.echo(f"edge-ttt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
    json_logs: Annotated[
        bool | None, typer.Option("--json-logs/--text-logs", help="default: JSON unless a terminal")
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    logs.configure(log_level, json_logs)


def _policy_option_values(policy: str, pairs: list[str]) -> dict[str, Any]:
    """`--option KEY=VALUE` pairs as the policy's options, checked as the agent checks
    `[model.options]`: each value read as TOML (a number, a boolean, an array), else as text."""
    from edge_ttt.agent.policy_options import check_option_values, policy_options
    from edge_ttt.config_file import TOMLDecodeError, parse_toml, validate_file

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--option {pair!r}: write KEY=VALUE, for example --option instance_offsets=4")
        try:
            options[key.strip()] = parse_toml(f"v = {raw}")["v"]
        except TOMLDecodeError:
            options[key.strip()] = raw
    model = policy_options(policy)
    try:
        validate_file(model, options, Path("--option"), {}, lambda _: model, top=f"the options of {policy}")
        check_option_values(policy, options)
    except ValueError as exc:  # a ConfigError, or options that do not go together
        fail(str(exc))
    return options


def _refuse_idle_flags(policy: str, fallback: bool, label_runs: bool, source_every: int | None) -> None:
    """Flags that would change nothing or cannot go together (`Engine`): the source policy adapts
    nothing to fall back from or hold still and is its own source model; a fallback compares with
    a source model that runs."""
    if policy == "source" and fallback:
        fail(
            "--fallback serves the source model while the adapted one is estimated worse; --policy "
            "source adapts nothing, so there is nothing to fall back from"
        )
    if policy == "source" and label_runs:
        fail(
            "--label-runs holds an adapting policy still in a run of one activity; --policy source "
            "adapts nothing, so there is nothing to hold"
        )
    if source_every is not None and policy == "source":
        fail(
            "--source-every does nothing with --policy source: the source model runs on every "
            "window; leave it out"
        )
    if fallback and source_every == 0:
        fail("--fallback compares with the source model, which --source-every 0 never runs; leave one out")


def _label_runs(on: bool | None, serve: str | None, horizon: float | None) -> RunOptions | AutoRuns | None:
    """`replay`'s label runs: auto (None), on or off, with the options given (the rest default)."""
    if on is False and (serve, horizon) != (None, None):
        fail("--run-serve and --run-horizon set the label runs, which --no-label-runs turns off")
    given = {k: v for k, v in (("serve", serve), ("horizon", horizon)) if v is not None}
    try:  # the label runs check their own options
        options = RunOptions(**given)
    except ValueError as exc:
        fail(f"--run-serve: {exc}")
    return None if on is False else options if on else AutoRuns(options)


@app.command()
def replay(
    artifacts: Annotated[Path, typer.Option(help="artifact directory")],
    log: Annotated[Path, typer.Option(help="recorded log to replay")],
    policy: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(POLICIES)}, or all: every policy the bundle can run (ttt needs a model "
            "trained with its auxiliary head, such as cnn-bn-ttt)"
        ),
    ] = DEFAULT_POLICY,
    batch_size: Annotated[int, typer.Option(min=1, help="windows per adaptation step")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object per policy")] = False,
    episodic: Annotated[
        bool, typer.Option(help="adapt on each batch, predict, then forget (gradient policies)")
    ] = False,
    per_device: Annotated[
        bool,
        typer.Option(
            "--per-device/--one-engine",
            help="an engine per device, as the agent runs, or one engine for every device",
        ),
    ] = True,
    fallback: Annotated[
        bool | None,
        typer.Option(
            "--fallback/--no-fallback",
            help="serve the source model while the adapted one is estimated worse (default: on for "
            "steady only; docs/adaptation.md)",
        ),
    ] = None,
    source_every: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="run the source model on every Nth window the policy serves, for its label-free "
            f"estimate and the fallback (0: never, and no fallback; default {SOURCE_EVERY})",
        ),
    ] = None,
    label_runs: Annotated[
        bool | None,
        typer.Option(
            "--label-runs/--no-label-runs",
            help="in a long run of one activity, hold the policy still and serve its blend with the "
            "source model; on or off for every policy (default: on for steady only; docs/adaptation.md)",
            show_default=False,
        ),
    ] = None,
    run_serve: Annotated[
        str | None,
        typer.Option(
            help="who serves in a label run: source, or blend (the mean of the source model's and "
            f"the held policy's probabilities; default {RunOptions.serve})",
        ),
    ] = None,
    run_horizon: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="windows over which the label runs average the served class mix "
            f"(default {RunOptions.horizon:g})",
        ),
    ] = None,
    input_alignment: Annotated[
        str,
        typer.Option(
            help="undo mounting, per-channel gain and offset ahead of the policy: on, off, or auto: "
            "ahead of steady (on a batch-norm model, offsets under 3 source stds are left to its "
            "statistics), off for the other policies (docs/adaptation.md)"
        ),
    ] = "auto",
    option: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="an option of the policy, as under [model.options] in the agent's configuration "
            "(repeatable; one --policy; docs/configuration.md)",
        ),
    ] = None,
) -> None:
    """Replay a recorded log through the engine, in time order, and report accuracy and counters."""
    from edge_ttt.artifacts import BundleError
    from edge_ttt.recordlog import LogFormatError
    from edge_ttt.replay import every_policy, open_bundle
    from edge_ttt.replay import replay as run_replay

    if input_alignment not in INPUT_CHOICES:
        fail(f"unknown --input-alignment {input_alignment!r}; choose one of {', '.join(INPUT_CHOICES)}")
    if policy not in (*POLICIES, "all"):
        fail(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)} or all")
    runs = _label_runs(label_runs, run_serve, run_horizon)
    if option and policy == "all":
        fail("--option sets the options of one policy; name it with --policy")
    _refuse_idle_flags(policy, fallback is True, label_runs is True, source_every)
    options = _policy_option_values(policy, option) if option else None
    try:
        policies, left_out = [policy], {}
        if policy == "all":  # every policy the bundle can run, and a line for each one left out
            policies, left_out = every_policy(open_bundle(artifacts).manifest, episodic)
        for name, why in left_out.items():
            typer.echo(f"left out {name}: {why}", err=as_json)
        results = run_replay(
            artifacts,
            log,
            policies,
            batch_size,
            device,
            show_progress=sys.stderr.isatty(),
            episodic=episodic,
            per_device=per_device,
            fallback=AUTO_FALLBACK if fallback is None else DEFAULT_FALLBACK if fallback else None,
            inputs=INPUT_CHOICES[input_alignment],
            runs=runs,
            source_every=SOURCE_EVERY if source_every is None else source_every,
            options=options,
        )
    except (BundleError, LogFormatError, ValueError, RuntimeError) as exc:
        fail(str(exc))
    for result in results:
        if as_json:
            typer.echo(json.dumps(result))
            continue
        acc = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.3f}"
        est = "n/a" if result["estimated_accuracy"] is None else f"{result['estimated_accuracy']:.3f}"
        mode = " (episodic)" if result["episodic"] else ""
        typer.echo(
            f"{result['policy']}{mode}: {result['windows']} windows, accuracy {acc} "
            f"(estimated without labels {est}), {result['fallbacks']} fallbacks to source "
            f"({result['windows_on_source']} windows), "
            f"{result['adapt_steps']} adaptation steps, gradient steps "
            f"{result['skipped_unreliable']} skipped as unreliable, "
            f"{result['skipped_no_drift']} without drift, {result['rejected_invalid']} invalid, "
            f"{result['resets']} resets, {result['rollbacks']} rollbacks, "
            f"{result['ms_per_window']:.3f} ms/window"
        )
        below = result["devices_below_source"]
        if below and result["policy"] != "source":
            worst = ", ".join(f"{b['device']} {b['points']:+.1f}" for b in below[:3])
            more = f", and {len(below) - 3} more" if len(below) > 3 else ""
            typer.echo(
                f"  {len(below)} of {len(result['device_accuracy'])} devices more than 1 point below "
                f"source: {worst}{more}"
            )
        if result["windows_in_runs"]:
            blend = (runs.options if isinstance(runs, AutoRuns) else runs).serve == "blend"
            who = "the source model and the held policy" if blend else "the source model"
            typer.echo(f"  {result['windows_in_runs']} windows served by {who} in label runs")
        if result["windows_filled"]:
            typer.echo(f"  {result['windows_filled']} windows with a few dropped samples filled in and kept")
        for note in (result["input_guard"], result["collapse"]):
            if note is not None:
                typer.echo(f"  {note}")


@app.command()
def run(
    config: Annotated[Path, typer.Option(help="agent configuration (TOML), e.g. configs/sim.toml")],
) -> None:
    """Run the edge agent: MQTT sensor frames in, predictions out, adapting as it goes."""

    from edge_ttt.agent import Agent
    from edge_ttt.agent.config import load_config
    from edge_ttt.agent.loop import agent_bundle, hold_dirs
    from edge_ttt.artifacts import BundleError
    from edge_ttt.config_file import ConfigError

    try:
        cfg = load_config(config)
        logs.configure(cfg.logging.level, cfg.logging.json_lines)
        bundle = agent_bundle(cfg)  # a bad one, or a policy it cannot run, before the locks make a directory
        hold_dirs(cfg)  # for the life of the process
        agent = Agent(cfg, bundle)
    except (ConfigError, BundleError, RuntimeError) as exc:
        fail(str(exc))
    on_stop(lambda *_: agent.stop_event.set())
    agent.run()


@app.command()
def health(
    config: Annotated[Path, typer.Option(help="the agent's configuration")],
    max_age: Annotated[
        float | None, typer.Option(min=0.0, help="seconds; default 3 status intervals")
    ] = None,
    max_disconnected: Annotated[
        float | None, typer.Option(min=0.0, help="seconds; default status.max_disconnected_s")
    ] = None,
) -> None:
    """Exit 0 when the agent's local status is fresh and its broker connection up, or down for at
    most --max-disconnected s; else 1 and one line saying why (for container health checks)."""
    from edge_ttt.agent import health as agent_health
    from edge_ttt.agent.config import load_config
    from edge_ttt.config_file import ConfigError

    try:
        problem = agent_health(load_config(config, check_files=False), max_age, max_disconnected)
    except ConfigError as exc:  # 1, not 2: container runtimes reserve exit code 2 of a health check
        problem = str(exc)
    if problem is not None:
        typer.secho(f"unhealthy: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    typer.echo("healthy")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
