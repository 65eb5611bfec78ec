"""`monitor compact` of a version that does not know a newer collector's columns leaves that
collector's files as they are. It read every file in its own schema and deleted the originals, so a
column a newer version added (the schema's rule: new versions only add nullable columns) was
dropped from the dataset for good by whichever older monitor compacted it first."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq

from edge_ttt.monitor import dataset
from tests.test_monitor_collector import DAY, T0, make_summary, pa_table


def test_files_with_columns_of_a_newer_version_are_not_compacted(tmp_path, caplog):
    location = str(tmp_path / "fleet")
    for i in range(3):
        dataset.append(location, pa_table([make_summary(f"dev-{i}", T0 + DAY / 2, seed=i)]))
    (partition,) = (tmp_path / "fleet").iterdir()
    newer = sorted(partition.glob("*.parquet"))[0]
    table = pq.read_table(newer)
    pq.write_table(table.append_column("added_later", pa.array([0.25] * len(table))), newer)

    with caplog.at_level(logging.WARNING):
        assert dataset.compact(location) == {partition.name: 2}
    assert newer.exists() and "added_later" in pq.read_schema(newer).names
    assert any("added_later" in r.getMessage() and "not compacted" in r.getMessage() for r in caplog.records)
    assert len(list(partition.glob("*.parquet"))) == 2
    assert dataset.read(location).num_rows == 3  # this version reads all three, without the new column
