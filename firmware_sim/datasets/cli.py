"""`datasets` commands, mounted by both `firmware-sim` and `edge-ttt` (by name, so that the device
package never imports the simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_ttt.commandline import fail, host_import

datasets_app = typer.Typer(
    name="datasets",
    no_args_is_help=True,
    add_completion=False,
    help="Convert public sensor datasets into recorded logs.",
)


@datasets_app.command("watch")
def datasets_watch(out: Annotated[Path, typer.Option(help="directory for the two logs")]) -> None:
    """The seglearn smartwatch recordings: watch_source (subjects 1-5) and watch_target (6-10)."""
    watch = host_import("firmware_sim.datasets.watch")
    try:
        paths = watch.convert_watch(out)
    except (RuntimeError, OSError, ValueError) as exc:
        fail(str(exc))
    for split, path in paths.items():
        typer.echo(f"{split}: {path}")
