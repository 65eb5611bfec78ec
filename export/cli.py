"""`edge-ttt train` and `edge-ttt export`: the host commands, mounted by `edge_ttt.cli` by name.

Importing this module imports no torch, so that `edge-ttt --help` lists these commands on a device;
each command imports its torch modules when it runs.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from edge_ttt.commandline import command_app, fail, host_import

app = command_app()


@app.command()
def train(
    log: Annotated[Path, typer.Option(help="labeled recorded log (Parquet, log format v1)")],
    out: Annotated[Path, typer.Option(help="checkpoint to write, e.g. model.pt")],
    model: Annotated[str, typer.Option(help="cnn-bn, cnn-gn, tcn-ln or cnn-bn-ttt")] = "cnn-bn",
    window: Annotated[int, typer.Option(min=8, help="samples per window")] = 128,
    hop: Annotated[int, typer.Option(min=1, help="samples between window starts")] = 64,
    epochs: Annotated[int, typer.Option(min=1, help="passes over the training windows")] = 20,
    seed: Annotated[int, typer.Option(help="seeds weights, the validation split and shuffling")] = 0,
) -> None:
    """Train a source model; prints the held-out validation accuracy."""
    train_mod = host_import("export.train")
    from edge_ttt.recordlog import LogFormatError

    cfg = train_mod.TrainConfig(model=model, window=window, hop=hop, epochs=epochs, seed=seed)
    try:
        say = partial(typer.echo, err=True)  # a line per epoch where the bar draws nothing
        result = train_mod.train(log, out, cfg, show_progress=sys.stderr.isatty(), say=say)
    except (LogFormatError, ValueError) as exc:
        fail(str(exc))
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
    force: Annotated[
        bool, typer.Option(help="replace an existing bundle (a directory with its manifest.json)")
    ] = False,
) -> None:
    """Export ONNX Runtime training artifacts (only normalization parameters trainable) + manifest."""
    bundle = host_import("export.bundle")
    graph = host_import("export.onnx_graph")
    try:
        manifest = bundle.export_checkpoint(checkpoint, out, force=force)
    except (FileNotFoundError, FileExistsError, ValueError, graph.ExportError) as exc:
        fail(str(exc))
    typer.echo(f"exported {manifest.model.name} ({len(manifest.trainable)} trainable tensors) to {out}")
