"""SQL over the fleet dataset with DuckDB: the pyarrow dataset is registered as the view
`summaries`, so object storage is read through pyarrow (DuckDB's httpfs would download an
extension at run time, which fails offline)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from edge_ttt.monitor import dataset

VIEW = "summaries"


def query(location: str, sql: str) -> pa.Table:
    """`sql` over the view; files that cannot be read are left out, each named in a warning."""

    def run(data: ds.Dataset) -> pa.Table:
        con = duckdb.connect()
        try:
            con.register(VIEW, data)
            return con.sql(sql).to_arrow_table()
        finally:
            con.close()

    return dataset.tolerant(location, run, (pa.ArrowException, OSError, duckdb.InvalidInputException))
