"""SQL over the fleet dataset with DuckDB: the pyarrow dataset is registered as the view
`summaries`, so object storage is read through pyarrow (DuckDB's httpfs would download an
extension at run time, which fails offline)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from edge_ttt.monitor import dataset

VIEW = "summaries"


def connect(location: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register(VIEW, dataset.open_dataset(location))
    return con


def query(location: str, sql: str) -> pa.Table:
    con = connect(location)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()
