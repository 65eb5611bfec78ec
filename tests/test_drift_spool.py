"""The summary file schema and the on-disk spool: round trips, old and new files, crashes, the bound."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_ttt.drift.schema import SCHEMA_VERSION, SchemaError, from_table, read_table, to_parquet, to_table
from edge_ttt.drift.spool import Spool, summary_id_of
from edge_ttt.drift.summary import Adaptation, SummaryCollector
from tests.test_drift_stats import observe, reference


def summary(seed: int = 0, windows: int = 20):
    rng = np.random.default_rng(seed)
    c = SummaryCollector(reference(), "dev-1", "0", "ab" * 32, "steady", now=1_700_000_000.0)
    observe(c, rng.standard_normal((windows, 2, 16)), seed)
    c.current.adaptation = Adaptation(("bn1", "bn2"), (0.1, 0.2), (0.3, 0.4), 0.5, 0.01)
    return c.close(1_700_000_300.5)


def test_a_summary_round_trips_through_parquet(tmp_path):
    s = summary()
    path = Spool(tmp_path, 10**6).put(s.summary_id, to_parquet([s]))
    table = read_table(path)
    row = table.to_pylist()[0]
    assert row["schema_version"] == SCHEMA_VERSION and row["summary_id"] == s.summary_id
    assert row["interval_end"].timestamp() == pytest.approx(1_700_000_300.5)
    assert row["psi"] == pytest.approx(s.psi().tolist()) and row["norm_layers"] == ["bn1", "bn2"]
    (back,) = from_table(table)
    np.testing.assert_array_equal(back.moments.count, s.moments.count)
    np.testing.assert_array_equal(back.moments.mean, s.moments.mean)
    np.testing.assert_array_equal(back.channel_hist[1].counts, s.channel_hist[1].counts)
    np.testing.assert_array_equal(back.class_counts, s.class_counts)
    assert back.reference == s.reference and back.adaptation == s.adaptation and back.counters == s.counters
    np.testing.assert_array_equal(back.psi(), s.psi())


def test_a_reader_fills_columns_an_older_file_lacks_and_ignores_unknown_ones(tmp_path):
    table = to_table([summary(0), summary(1)])
    older = table.drop_columns(["latency_p99_ms", "norm_layers", "channel_hist_counts"])
    pq.write_table(older, tmp_path / "old.parquet")
    newer = table.append_column("battery_mv", pa.array([3700, 3650]))
    pq.write_table(newer, tmp_path / "new.parquet")

    old = read_table(tmp_path / "old.parquet")
    assert old.schema == table.schema
    assert old["latency_p99_ms"].null_count == 2 and old["norm_layers"].null_count == 2
    assert old["channel_mean"].equals(table["channel_mean"])
    assert [s.channel_hist[0].counts.sum() for s in from_table(old)] == [0, 0]  # absent reads as empty

    new = read_table(tmp_path / "new.parquet")
    assert "battery_mv" not in new.column_names and new.equals(table)


def test_a_file_without_the_identity_columns_is_refused(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(SchemaError, match="summary_id"):
        read_table(tmp_path / "x.parquet")


WRITER = """
import sys
from edge_ttt.drift.schema import to_parquet
from edge_ttt.drift.spool import Spool
from tests.test_drift_spool import summary

s = summary(windows=5)
data = to_parquet([s] * 400)
spool = Spool(sys.argv[1], 10**12)
print(len(data), flush=True)
i = 0
while True:
    spool.put(f"s{i}", data)
    i += 1
"""


def test_a_writer_killed_mid_loop_leaves_only_complete_readable_files(tmp_path):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path)], cwd=root, stdout=subprocess.PIPE
    )
    assert int(proc.stdout.readline()) > 0  # the data is ready: the writer is in its loop
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("*.parquet"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    spool = Spool(tmp_path, 10**12)
    files = spool.pending()
    assert len(files) >= 5
    for path in files:
        assert read_table(path).num_rows == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in files]  # no temp file left


def test_a_write_that_fails_midway_leaves_nothing_visible(tmp_path, monkeypatch):
    spool = Spool(tmp_path, 10**6)

    def failing_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr("edge_ttt.atomic.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="disk gone"):
        spool.put("abc", b"x" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_the_spool_is_bounded_in_bytes_and_drops_the_oldest_files_first(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    names = [f"s{i:02d}" for i in range(30)]
    for name in names:
        spool.put(name, b"x" * 1_000)
    kept = [summary_id_of(p) for p in spool.pending()]
    assert kept == names[-10:] and spool.size() == 10_000
    assert (spool.counters.dropped, spool.counters.dropped_bytes, spool.counters.written) == (20, 20_000, 30)
    reopened = Spool(tmp_path, max_bytes=10_000)
    reopened.put("later", b"y" * 1_000)  # a restarted spool keeps the order: "later" is the newest
    assert [summary_id_of(p) for p in reopened.pending()] == [*names[-9:], "later"]


def test_ids_unusable_in_a_file_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not usable"):
        Spool(tmp_path, 10**6).put("../x", b"")
