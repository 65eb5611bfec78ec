"""`edge-ttt collect` and `edge-ttt monitor ...`: the fleet side of drift monitoring."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Annotated, NoReturn

import pyarrow as pa
import typer

from edge_ttt.atomic import atomic_write
from edge_ttt.commandline import command_app, fail, on_stop
from edge_ttt.config_file import ConfigError
from edge_ttt.dirlock import DirInUse
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import COLUMNS, evaluate
from edge_ttt.monitor.arguments import (
    ConfigOption,
    DatasetOption,
    SinceOption,
    check_out,
    given,
    guarded,
    rules,
    window,
    write_out,
)
from edge_ttt.monitor.config import load_monitor_config
from edge_ttt.monitor.files import foreign
from edge_ttt.monitor.output import json_text, print_rows
from edge_ttt.monitor.text import visible

monitor_app = command_app(help="Compact, query and report on the fleet drift dataset.")


def _unreachable(what: str, exc: Exception) -> str:
    """One line for a dataset location that cannot be opened: a scheme pyarrow has no filesystem
    for, a bucket it cannot reach."""
    return (
        f"{what}: cannot open it ({str(exc).splitlines()[0]}). Fix: give a local directory or a URI "
        "that pyarrow opens (s3://, gs://, hdfs://), reachable from here with its credentials"
    )


def _require(location: str) -> None:
    given("--dataset", location)
    try:
        found = dataset.exists(location)
    except (pa.ArrowException, OSError) as exc:
        fail(_unreachable(location, exc))
    if not found:
        fail(
            f"{location} is not a dataset directory. Fix: pass the directory that `edge-ttt collect` "
            "writes (its config's collector.dataset), or run the collector first"
        )


def _not_fleet(location: str, why: str) -> NoReturn:
    fail(f"{location} is not a fleet dataset ({why}). Fix: pass the directory that `edge-ttt collect` writes")


def _own(location: str) -> None:
    """Refuse a directory of files none of which is the dataset's (`files.foreign`)."""
    try:
        why = foreign(location)
    except (pa.ArrowException, OSError) as exc:
        fail(_unreachable(location, exc))
    if why is not None:
        _not_fleet(location, why)


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
        _not_fleet(location, str(exc).splitlines()[0])
    if not table.num_rows:
        _own(location)
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
    try:
        collector = Collector(cfg)  # its MQTT client: a password variable unset, TLS files unusable
    except ConfigError as exc:
        fail(f"--config: {exc}")
    stop = threading.Event()
    on_stop(lambda *_: stop.set())

    def announce() -> None:  # one line once subscribed: from then on nothing published is missed
        if collector.subscribed.wait(60):
            typer.echo(f"collecting {cfg.topic_filter()} into {cfg.collector.dataset}", err=True)

    threading.Thread(target=announce, daemon=True).start()
    collector.run(stop)
    written = {
        "files_written": collector.files_written,
        "acks_refused": collector.link.publishes_refused,
        "write_failures": collector.write_failures,
        "refused_at_write": collector.refused_at_write,
        "handler_errors": collector.handler_errors,
    }
    typer.echo(json.dumps({**written, **asdict(collector.receiver.counters)}))


@monitor_app.command()
@guarded(os_errors=True)
def compact(location: DatasetOption) -> None:
    """Per date partition, merge the collector's small files into one (new file first, then the old go)."""
    _require(location)
    _own(location)
    done = dataset.compact(location)
    typer.echo(json.dumps({"partitions": len(done), "files_merged": sum(done.values())}))


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
@guarded(os_errors=True)
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the view `summaries`")],
    location: DatasetOption,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one object per row")] = False,
) -> None:
    """Run SQL over the dataset and print the result: a table when it fits, else a block per row."""
    _require(location)
    _own(location)
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
            typer.echo(json_text(row))
        return
    print_rows(result)


@monitor_app.command()
@guarded(os_errors=False)
def alerts(
    location: DatasetOption,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
    since: SinceOption = None,
) -> None:
    """Evaluate the alert rules. Exit status: 0 no alert, 1 an alert holds, 2 no dataset, an empty
    one, a bad --config or --since, 3 an unexpected failure (for cron and CI)."""
    now, start = window(since)
    checked = rules(config)
    rows = _summaries(location, COLUMNS, start)
    found = evaluate(rows, checked, now=now, bins=dataset.reference_bins(location))
    if as_json:
        typer.echo(json_text([asdict(a) for a in found]))
    else:  # a tab or newline in an id would split its line
        for a in found:
            typer.echo(f"{visible(a.device)}\t{a.rule}\t{visible(a.message)}")
    raise typer.Exit(1 if found else 0)


@monitor_app.command()
@guarded(os_errors=True)
def report(
    location: DatasetOption,
    out: Annotated[str, typer.Option("--out", help="HTML file to write")],
    config: ConfigOption = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="the devices' exported bundle: its validation accuracy is the reference for accuracy lost "
            "of the devices running its model (default: the one the summaries carry)",
        ),
    ] = None,
    since: SinceOption = None,
) -> None:
    """Write a self-contained HTML report: fleet summary, alerts, ranking by estimated accuracy lost,
    estimates over time, heat map, the worst channels against the reference, drift over time, health."""
    from edge_ttt.monitor import distributions  # matplotlib: the [monitor] extra
    from edge_ttt.monitor.bundles import bundle_reference
    from edge_ttt.monitor.report import REPORT_COLUMNS, render

    path = Path(given("--out", out))
    check_out(path)
    now, start = window(since)
    checked = rules(config)
    table = _summaries(location, REPORT_COLUMNS, start)
    reference, model = (None, None) if bundle is None else bundle_reference(bundle, table)
    html, found = render(
        table,
        checked,
        now=now,
        since=start,
        reference_accuracy=reference,
        reference_model=model,
        bins=dataset.reference_bins(location),
        histograms=partial(dataset.read_devices, location, columns=distributions.COLUMNS),
    )
    write_out(path, lambda: atomic_write(path, lambda f: f.write(html.encode("utf-8"))))
    typer.echo(json.dumps({"out": str(path), "alerts": len(found)}))
