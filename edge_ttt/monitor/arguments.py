"""What the `monitor` commands check of their arguments before reading anything, and how they end
on what nobody foresaw: one line, never the exit status that means "an alert holds"."""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from edge_ttt.commandline import BAD_PATHS, REFUSALS, fail
from edge_ttt.config_file import ConfigError
from edge_ttt.drift.validation import first_line
from edge_ttt.monitor.clocks import stamp
from edge_ttt.monitor.config import AlertsSection, load_alert_rules

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
        "or time (2026-12-01, 2026-12-01T08:00), not later than now; devices silent since are kept "
        "(default: all)",
    ),
]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([mhd])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400}
UNEXPECTED = 3  # exit status of a failure nobody foresaw: 1 is `alerts`' "an alert holds"


def since_time(text: str, now: float) -> float:
    """Unix seconds of a `--since` value; a time later than `now` is refused: it kept only the
    newest summary of each device, silently.

    >>> since_time("90m", 10_000.0), since_time("1.5h", 10_000.0)
    (4600.0, 4600.0)
    >>> since_time("2026-12-01", 2e9), since_time("2026-12-01T08:00+01:00", 2e9)
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
    start = (at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)).timestamp()
    if start > now:
        fail(
            f"--since {text!r} is later than now ({stamp(now)}): no summary can have arrived since. "
            "Fix: a time in the past, or a duration back from now such as 24h"
        )
    return start


def window(since: str | None) -> tuple[float, float | None]:
    """(now, the start of `--since` or None), one clock reading for the read and the rules."""
    now = time.time()
    return now, None if since is None else since_time(since, now)


def rules(config: Path | None) -> AlertsSection:
    """The [alerts] rules of `--config`, the defaults without one."""
    if config is None:
        return AlertsSection()
    try:
        return load_alert_rules(config)
    except ConfigError as exc:
        fail(f"--config: {exc}")


def given(option: str, value: str) -> str:
    """`value`, refused when empty or blank: an unset shell variable (`--dataset "$FLEET"`) read
    the current directory, recursively, as the fleet."""
    if not value.strip():
        fail(f"{option} is empty (an unset shell variable?). Fix: name the {_WHAT[option]}")
    return value


_WHAT = {
    "--dataset": "dataset directory or URI that `edge-ttt collect` writes, e.g. --dataset runs/fleet",
    "--out": "HTML file to write, e.g. --out runs/report.html",
}

F = TypeVar("F", bound=Callable[..., Any])


def guarded(*, os_errors: bool) -> Callable[[F], F]:
    """A command that ends on an exception nobody foresaw with one line naming it, exit status
    `UNEXPECTED`, instead of a traceback and exit 1 (which `alerts` uses for "an alert holds").
    `os_errors`: a file the system refuses (a full disk, a missing directory) is passed on to
    `run_app` (exit 1 or 2, one line) instead; `alerts` keeps 1 for alerts and sets it False."""

    def wrap(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except (typer.Exit, typer.Abort, typer.BadParameter, KeyboardInterrupt):  # typer's to end on
                raise
            except OSError as exc:
                if os_errors and exc.errno in REFUSALS | BAD_PATHS:
                    raise
                _unexpected(exc)
            except Exception as exc:  # the point: none ends in a traceback
                _unexpected(exc)

        return run  # type: ignore[return-value]

    return wrap


def _unexpected(exc: BaseException) -> None:
    typer.secho(
        f"error: unexpected {type(exc).__name__}: {first_line(exc)}. Fix: if a file of the dataset "
        "causes it, move that file out; else report it (edge-ttt's issue tracker) with this line",
        fg=typer.colors.RED,
        err=True,
    )
    raise typer.Exit(UNEXPECTED)


def check_out(out: Path) -> None:
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


def write_out(out: Path, write: Callable[[], None]) -> None:
    """`write()` the report; a file the system refuses is one line naming `--out` and the fix, exit
    1 for a full or read-only disk or no permission, 2 for a path that cannot be one (`/proc/r.html`
    said "No such file or directory" of a directory that exists)."""
    try:
        write()
    except OSError as exc:
        if exc.errno not in REFUSALS | BAD_PATHS:
            raise
        typer.secho(
            f"error: --out {out}: cannot write it there ({exc.strerror}). Fix: name a file in a directory "
            "of a disk you can write, with room to spare",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1 if exc.errno in REFUSALS else 2) from None
