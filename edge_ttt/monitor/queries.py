"""SQL over the fleet dataset with DuckDB: the pyarrow dataset is registered as the view
`summaries`, so object storage is read through pyarrow (DuckDB's httpfs would download an
extension at run time, which fails offline).

The SQL is the caller's, the connection is not: before it runs, external access is switched off
and the configuration locked, so a query reads the view and nothing else (no `read_csv('/etc/
passwd')`, `COPY ... TO`, `ATTACH`, `INSTALL`), and cannot switch it on again. The view still
reads: DuckDB scans the registered Arrow dataset through pyarrow, not through its own files."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from edge_ttt.monitor import dataset
from edge_ttt.monitor.files import check_text

VIEW = "summaries"


class NoResult(ValueError):
    """SQL without a query that returns rows (empty, blanks, a lone `;`, comments only): it
    ended in an AttributeError traceback."""


def locked(data: ds.Dataset) -> duckdb.DuckDBPyConnection:
    """An in-memory connection that sees `data` as the view and no file, URL or extension."""
    con = duckdb.connect()
    con.register(VIEW, data)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def query(location: str, sql: str) -> pa.Table:
    """`sql` over the view; files that cannot be read are left out, each named in a warning."""

    def run(data: ds.Dataset) -> pa.Table:
        con = locked(data)
        try:
            relation = con.sql(sql)
            if relation is None:
                raise NoResult("no query in the SQL given. Fix: a SELECT over the view `summaries`")
            return check_text(relation.to_arrow_table())  # a stored id that is not UTF-8: that file left out
        finally:
            con.close()

    return dataset.tolerant(location, run, (pa.ArrowException, OSError, duckdb.InvalidInputException))
