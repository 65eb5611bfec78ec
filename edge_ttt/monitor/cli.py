"""`edge-ttt collect` and `edge-ttt monitor ...`: the fleet side of drift monitoring."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge_ttt.config_file import ConfigError
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import COLUMNS, evaluate
from edge_ttt.monitor.config import AlertsSection, load_monitor_config

monitor_app = typer.Typer(no_args_is_help=True, help="Compact, query and report on the fleet drift dataset.")

DatasetOption = Annotated[
    str, typer.Option("--dataset", help="dataset directory or URI (e.g. s3://bucket/fleet)")
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="monitor TOML; its [alerts] rules (default: built-in)")
]


def _rules(config: Path | None) -> AlertsSection:
    if config is None:
        return AlertsSection()
    try:
        return load_monitor_config(config).alerts
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None


def _require(location: str) -> None:
    if not dataset.exists(location):
        raise typer.BadParameter(f"{location} is not a dataset directory; run `edge-ttt collect` first")


def collect_command(
    config: Annotated[Path, typer.Option("--config", help="monitor TOML, e.g. configs/monitor.toml")],
) -> None:
    """Subscribe to the fleet's drift summaries and append them to the dataset until stopped."""
    from edge_ttt.monitor.collector import Collector

    try:
        cfg = load_monitor_config(config)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    collector = Collector(cfg)

    def announce() -> None:  # one line once subscribed: from then on nothing published is missed
        if collector.subscribed.wait(60):
            typer.echo(f"collecting {cfg.topic_filter()} into {cfg.collector.dataset}", err=True)

    threading.Thread(target=announce, daemon=True).start()
    collector.run(stop)
    typer.echo(json.dumps({"files_written": collector.files_written, **asdict(collector.receiver.counters)}))


@monitor_app.command()
def compact(location: DatasetOption) -> None:
    """Per date partition, merge the collector's small files into one (new file first, then the old go)."""
    _require(location)
    done = dataset.compact(location)
    typer.echo(json.dumps({"partitions": len(done), "files_merged": sum(done.values())}))


def _plain(value: object) -> object:
    """JSON for what DuckDB returns beyond JSON's types (sums are DECIMAL/HUGEINT, times datetimes)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


@monitor_app.command()
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the view `summaries`")],
    location: DatasetOption,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one object per row")] = False,
) -> None:
    """Run SQL over the dataset and print the result."""
    _require(location)
    from edge_ttt.monitor.queries import query as run_query  # duckdb: the [monitor] extra

    result = run_query(location, sql)
    if as_json:
        for row in result.to_pylist():
            typer.echo(json.dumps(row, default=_plain))
        return
    table = Table(*result.column_names)
    for row in result.to_pylist():
        table.add_row(*(str(row[c]) for c in result.column_names))
    Console(width=200).print(table)


@monitor_app.command()
def alerts(
    location: DatasetOption,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
) -> None:
    """Evaluate the alert rules; exit status 1 when any alert holds (for cron and CI)."""
    _require(location)
    found = evaluate(dataset.read(location, COLUMNS), _rules(config))
    if as_json:
        typer.echo(json.dumps([asdict(a) for a in found]))
    else:
        for a in found:
            typer.echo(f"{a.device}\t{a.rule}\t{a.message}")
    raise typer.Exit(1 if found else 0)


@monitor_app.command()
def report(
    location: DatasetOption,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    config: ConfigOption = None,
) -> None:
    """Write a self-contained HTML report: ranking, heat map, drift over time, health, alerts."""
    _require(location)
    from edge_ttt.monitor.report import REPORT_COLUMNS, write_report  # matplotlib: the [monitor] extra

    found = write_report(dataset.read(location, REPORT_COLUMNS), _rules(config), out)
    typer.echo(json.dumps({"out": str(out), "alerts": len(found)}))
