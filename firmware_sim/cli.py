"""`firmware-sim` command line: simulated sensor firmware and dataset converters."""

from __future__ import annotations

import typer

from edge_ttt.cli import datasets_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(datasets_app, name="datasets")


def main() -> None:
    app()
