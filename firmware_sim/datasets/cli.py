"""`datasets` commands, mounted by both `firmware-sim` and `edge-ttt` (by name, so that the device
package never imports the simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_ttt.commandline import command_app, fail, host_import

datasets_app = command_app(
    name="datasets", help="Recorded logs from public sensor datasets or from your own CSV and Parquet files."
)


@datasets_app.command("watch")
def datasets_watch(out: Annotated[Path, typer.Option(help="directory for the two logs")]) -> None:
    """The seglearn smartwatch recordings: watch_source (subjects 1-5) and watch_target (6-10)."""
    watch = host_import("firmware_sim.datasets.watch")
    there = next(p for p in (out, *out.parents) if p.exists())  # the part of the path that exists
    if not there.is_dir():
        fail(f"--out {out}: {there} is a file; --out must be a directory (new or existing) for the two logs")
    try:
        paths = watch.convert_watch(out)
    except (RuntimeError, OSError, ValueError) as exc:
        fail(str(exc))
    for split, path in paths.items():
        typer.echo(f"{split}: {path}")


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(n.strip() for n in text.split(","))


@datasets_app.command("import")
def datasets_import(
    source: Annotated[
        Path, typer.Argument(help="CSV (.csv, .tsv, .txt) or Parquet file, one row per sample")
    ],
    out: Annotated[Path, typer.Option(help="recorded log to write, a .parquet file (docs/log-format.md)")],
    time: Annotated[str, typer.Option(help="the column of sample times")],
    time_unit: Annotated[
        str | None,
        typer.Option(
            help="s, ms, us or ns for numbers; iso for text such as 2024-01-01T12:00:00.020Z (default)"
        ),
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(
            help="columns to keep as channels, renamed with =: acc_x=ax,acc_y=ay (default: every numeric one)"
        ),
    ] = None,
    device_column: Annotated[str | None, typer.Option(help="the column of device ids")] = None,
    device: Annotated[
        str | None, typer.Option(help="one device id for every row (default: the file name without suffix)")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="the column of class names or indices (-1: unknown)")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="class names in index order, e.g. the model's: walk,run (default: sorted)"),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="sample rate in Hz (default: from the median period)")
    ] = None,
) -> None:
    """A CSV or Parquet file with its own column names as a recorded log; reports its timing."""
    from edge_ttt.recordlog import LogFormatError
    from firmware_sim.datasets.importer import import_file
    from firmware_sim.datasets.tabular import ImportSpec, parse_channels

    if device is None and device_column is None:
        device = source.stem
    spec = ImportSpec(
        time=time,
        time_unit=time_unit,
        channels=None if channels is None else parse_channels(channels),
        device_column=device_column,
        device=device,
        label=label,
        classes=_names(classes),
        rate_hz=rate,
    )
    try:
        log, timing, left_out = import_file(source, out, spec)
    except LogFormatError as exc:
        fail(str(exc))
    if left_out:  # a stray text cell makes a sensor column text: say so rather than drop it unseen
        typer.echo(
            f"warning: column(s) {', '.join(left_out)} left out of the channels: they hold values that are "
            "not numbers (clean them to import them; empty cells read as NaN)",
            err=True,
        )
    devices = log.devices()
    shown = ", ".join(devices[:5]) + (f" and {len(devices) - 5} more" if len(devices) > 5 else "")
    mapping = (
        ""
        if log.class_names is None
        else ", classes " + ", ".join(f"{i}={name}" for i, name in enumerate(log.class_names))
    )
    typer.echo(
        f"{out}: {len(log)} samples of {len(devices)} device(s) ({shown}), "
        f"channels {', '.join(log.channels)}{mapping}"
    )
    typer.echo(timing.line())
