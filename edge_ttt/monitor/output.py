"""How `monitor query` prints a result: strict JSON lines, or for a person a table when every value
fits whole, else one block of `column: value` lines per row. Never a value cut: a table of many
columns squeezed into 200 characters showed a grid of empty cells, and long values lost their
ends. Text is shown `visible` (a newline in an id no longer breaks a row)."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal

import pyarrow as pa
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge_ttt.monitor.text import visible

WIDTH = 200  # characters a table may take; wider, the rows are printed as blocks


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


def json_text(value: object) -> str:
    return json.dumps(_strict(value), default=_plain, allow_nan=False)


def print_rows(result: pa.Table) -> None:
    """The result for a person: a table when it fits `WIDTH` with every value whole, else blocks.

    A row's block is headed `-[ row N ]-` and holds a line per column, names aligned (psql's
    expanded display)."""
    names = [visible(n) for n in result.column_names]
    columns = [[visible(str(v)) for v in column.to_pylist()] for column in result.columns]
    rows = [list(row) for row in zip(*columns, strict=True)]  # by position: names can repeat
    console = Console(width=WIDTH)
    table = Table()
    for name in names:
        table.add_column(Text(name))  # Text, not str: "[red]" in a value is not markup
    for row in rows:
        table.add_row(*(Text(v) for v in row))
    if console.measure(table, options=console.options.update_width(10**9)).maximum <= WIDTH:  # unsqueezed
        console.print(table)
        return
    width = max(len(n) for n in names)
    for i, row in enumerate(rows, 1):
        if i > 1:
            typer.echo("")
        typer.echo(f"-[ row {i} ]-")
        for name, value in zip(names, row, strict=True):
            typer.echo(f"{name.ljust(width)} : {value}")
