"""`edge-ttt demo`, mounted by `edge_ttt.cli` by name: nothing else imports the demo.

Importing this module imports no torch and none of the demo's stages, so that `edge-ttt --help`
stays light; the command imports them when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edge_ttt.commandline import command_app, fail, host_import

app = command_app()


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
    run_mod = host_import("edge_ttt_demo.run")
    from edge_ttt_demo import DemoError
    from edge_ttt_demo.results import print_results
    from firmware_sim.broker import parse_address

    try:
        address = None if broker is None else parse_address(broker)
    except ValueError as exc:
        fail(f"--broker {exc}")
    opts = run_mod.DemoOptions(workdir, devices, minutes, speed, epochs, retrain, address, seed)
    try:
        result = run_mod.run_demo(opts)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        fail("the demo trains a model and needs torch: pip install 'edge-ttt[demo]'")
    except (DemoError, RuntimeError, OSError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # before the live part, where Ctrl-C ends the run in order
        typer.secho("interrupted", err=True)
        raise typer.Exit(code=130) from None
    print_results(result, Console(width=None if sys.stdout.isatty() else 100))
    if result.interrupted:
        raise typer.Exit(code=130)
