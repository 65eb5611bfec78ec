"""`edge-ttt collect` and `edge-ttt monitor ...`: the fleet side of drift monitoring."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
import time
from dataclasses import asdict
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.console import Console
from rich.table import Table

from edge_ttt.commandline import command_app, fail, on_stop
from edge_ttt.config_file import ConfigError
from edge_ttt.dirlock import DirInUse
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import COLUMNS, evaluate
from edge_ttt.monitor.config import AlertsSection, load_monitor_config

monitor_app = command_app(help="Compact, query and report on the fleet drift dataset.")

DatasetOption = Annotated[
    str, typer.Option("--dataset", help="dataset directory or URI (e.g. s3://bucket/fleet)")
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="monitor TOML; its [alerts] rules (default: built-in)")
]


SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="only summaries received since then: a duration back from now (90m, 24h, 7d) or a UTC date "
        "or time (2026-12-01, 2026-12-01T08:00); devices silent since are kept (default: all)",
    ),
]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([mhd])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400}


def since_time(text: str, now: float) -> float:
    """Unix seconds of a `--since` value.

    >>> since_time("90m", 10_000.0), since_time("1.5h", 10_000.0)
    (4600.0, 4600.0)
    >>> since_time("2026-12-01", 0.0), since_time("2026-12-01T08:00+01:00", 0.0)
    (1796083200.0, 1796108400.0)
    """
    if m := _DURATION.fullmatch(text.strip()):
        return now - float(m[1]) * _UNIT_S[m[2]]
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        fail(
            f"--since {text!r}: not a time. Fix: a duration back from now such as 90m, 24h or 7d, or a "
            "UTC date or time such as 2026-12-01 or 2026-12-01T08:00"
        )
    return (at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)).timestamp()


def _window(since: str | None) -> tuple[float, float | None]:
    """(now, the start of `--since` or None), one clock reading for the read and the rules."""
    now = time.time()
    return now, None if since is None else since_time(since, now)


def _rules(config: Path | None) -> AlertsSection:
    if config is None:
        return AlertsSection()
    try:
        return load_monitor_config(config).alerts
    except ConfigError as exc:
        fail(f"--config: {exc}")


def _unreachable(what: str, exc: Exception) -> str:
    """One line for a dataset location that cannot be opened: a scheme pyarrow has no filesystem
    for, a bucket it cannot reach."""
    return (
        f"{what}: cannot open it ({str(exc).splitlines()[0]}). Fix: give a local directory or a URI "
        "that pyarrow opens (s3://, gs://, hdfs://), reachable from here with its credentials"
    )


def _require(location: str) -> None:
    try:
        found = dataset.exists(location)
    except (pa.ArrowException, OSError) as exc:
        fail(_unreachable(location, exc))
    if not found:
        fail(
            f"{location} is not a dataset directory. Fix: pass the directory that `edge-ttt collect` "
            "writes (its config's collector.dataset), or run the collector first"
        )


def _summaries(location: str, columns: list[str], since: float | None = None) -> pa.Table:
    """The dataset's rows (`since`: see `dataset.read_since`); an empty or unreadable dataset is an
    error, not a healthy fleet: a report of nothing must not look like a report of devices without
    drift."""
    _require(location)
    try:
        if since is None:
            table = dataset.read(location, columns)
        else:
            table = dataset.read_since(location, columns, since)
    except (pa.ArrowException, OSError) as exc:
        fail(
            f"{location} is not a fleet dataset ({str(exc).splitlines()[0]}). Fix: pass the directory "
            "that `edge-ttt collect` writes"
        )
    if not table.num_rows:
        fail(
            f"{location} holds no drift summaries yet. Fix: check that agents publish summaries and "
            "that `edge-ttt collect` runs (its log line says what it collects into)"
        )
    return table


def collect_command(
    config: Annotated[Path, typer.Option("--config", help="monitor TOML, e.g. configs/monitor.toml")],
) -> None:
    """Subscribe to the fleet's drift summaries and append them to the dataset until stopped."""
    from edge_ttt.monitor.collector import Collector

    try:
        cfg = load_monitor_config(config)
        c = cfg.collector
        # while it runs; opening the dataset's filesystem here also finds a location out of reach
        dataset.hold(c.dataset, f"collector '{c.client_id}'", c.share_group is not None)
    except ConfigError as exc:
        fail(f"--config: {exc}")
    except DirInUse as exc:
        fail(str(exc))
    except (pa.ArrowException, OSError) as exc:
        fail(_unreachable(f"collector.dataset {c.dataset}", exc))
    stop = threading.Event()
    on_stop(lambda *_: stop.set())
    collector = Collector(cfg)

    def announce() -> None:  # one line once subscribed: from then on nothing published is missed
        if collector.subscribed.wait(60):
            typer.echo(f"collecting {cfg.topic_filter()} into {cfg.collector.dataset}", err=True)

    threading.Thread(target=announce, daemon=True).start()
    collector.run(stop)
    written = {
        "files_written": collector.files_written,
        "write_failures": collector.write_failures,
        "refused_at_write": collector.refused_at_write,
        "handler_errors": collector.handler_errors,
    }
    typer.echo(json.dumps({**written, **asdict(collector.receiver.counters)}))


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


def _strict(value: object) -> object:
    """`value` for strict JSON: NaN and infinities (a broken summary's, or SQL's) as null, since
    JSON has neither and strict parsers refuse `NaN`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def _json(value: object) -> str:
    return json.dumps(_strict(value), default=_plain, allow_nan=False)


def _headline(message: str) -> str:
    """DuckDB's message on one line: its leading lines ("Binder Error: ...", "Did you mean ..."),
    without the query echo, caret picture or list of candidate functions that follow."""
    lines = []
    for line in message.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith("LINE "):
            break
        lines.append(line)
    while len(lines) > 1 and lines[-1].endswith(":"):
        lines.pop()
    return " ".join(lines) or message.strip()


@monitor_app.command()
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the view `summaries`")],
    location: DatasetOption,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one object per row")] = False,
) -> None:
    """Run SQL over the dataset and print the result."""
    _require(location)
    import duckdb  # the [monitor] extra

    from edge_ttt.monitor.queries import NoResult
    from edge_ttt.monitor.queries import query as run_query

    try:
        result = run_query(location, sql)
    except NoResult as exc:
        fail(str(exc))
    except duckdb.PermissionException as exc:
        fail(
            f"{_headline(str(exc))} (monitor query reads the view `summaries` only: no other file, "
            "URL, database or extension)"
        )
    except duckdb.Error as exc:
        fail(f"{_headline(str(exc))} (the view is `summaries`; its columns: docs/drift-summaries.md)")
    if as_json:
        for row in result.to_pylist():
            typer.echo(_json(row))
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
    since: SinceOption = None,
) -> None:
    """Evaluate the alert rules. Exit status: 0 no alert, 1 an alert holds, 2 no dataset, an empty
    one, a bad --config or --since (for cron and CI)."""
    now, start = _window(since)
    rows = _summaries(location, COLUMNS, start)
    found = evaluate(rows, _rules(config), now=now, bins=dataset.reference_bins(location))
    if as_json:
        typer.echo(_json([asdict(a) for a in found]))
    else:
        for a in found:
            typer.echo(f"{a.device}\t{a.rule}\t{a.message}")
    raise typer.Exit(1 if found else 0)


def _check_out(out: Path) -> None:
    """Refuse an `--out` that cannot be written before the seconds of reading and drawing: a
    directory, or a file under a directory that does not exist (it used to be created)."""
    if out.is_dir():
        fail(f"--out {out} is a directory. Fix: name the HTML file to write, e.g. {out / 'report.html'}")
    try:
        there = out.parent.is_dir()
    except OSError as exc:
        fail(
            f"--out {out}: cannot reach {out.parent} ({exc.strerror}). Fix: name a file in a directory "
            "you can write"
        )
    if not there:
        fail(
            f"--out {out}: the directory {out.parent} does not exist. Fix: create it, or name a file in "
            "one that does"
        )


@monitor_app.command()
def report(
    location: DatasetOption,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    config: ConfigOption = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="the devices' exported bundle: its validation accuracy is the reference for accuracy lost "
            "(default: the one the summaries carry)",
        ),
    ] = None,
    since: SinceOption = None,
) -> None:
    """Write a self-contained HTML report: fleet summary, alerts, ranking by estimated accuracy lost,
    estimates over time, heat map, the worst channels against the reference, drift over time, health."""
    from edge_ttt.monitor import distributions  # matplotlib: the [monitor] extra
    from edge_ttt.monitor.report import REPORT_COLUMNS, write_report

    _check_out(out)
    reference = None
    if bundle is not None:
        from edge_ttt.artifacts import BundleError, load_bundle

        try:
            reference = load_bundle(bundle).manifest.reference.val_accuracy
        except BundleError as exc:
            fail(f"--bundle: {exc}")
    now, start = _window(since)
    found = write_report(
        _summaries(location, REPORT_COLUMNS, start),
        _rules(config),
        out,
        now=now,
        since=start,
        reference_accuracy=reference,
        bins=dataset.reference_bins(location),
        histograms=partial(dataset.read_devices, location, columns=distributions.COLUMNS),
    )
    typer.echo(json.dumps({"out": str(out), "alerts": len(found)}))
