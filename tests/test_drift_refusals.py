"""What the receiver refuses before the collector keeps it (found by a black-box test of the
collector): nulls where a value is required, headers that are not a drift header, files that decode
to far more than a summary, and values no summary can hold. Each is counted and never raises."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_ttt.drift import receiver as receiver_module
from edge_ttt.drift.receiver import MAX_HEADER, MessageError, Receiver, parse_message
from edge_ttt.drift.schema import encode_table, to_table
from edge_ttt.drift.shipper import encode_chunks
from edge_ttt.drift.validation import MAX_STRING_BYTES
from tests.test_monitor_collector import T0, make_summary

TS = pa.timestamp("us", tz="UTC")


def summary_table(**columns: pa.Array) -> pa.Table:
    """One real summary, with the given columns replaced (one-element arrays)."""
    table = to_table([make_summary("dev-1", T0, seed=3)])
    for name, values in columns.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, pa.field(name, values.type), values)
    return table


def payloads(table: pa.Table, data: bytes | None = None) -> list[bytes]:
    data = encode_table(table) if data is None else data
    return encode_chunks(table.column("summary_id")[0].as_py(), data, 64_000)


def accept_all(r: Receiver, messages: list[bytes]) -> pa.Table | None:
    out = None
    for m in messages:
        out = r.accept(m, "dev-1")
    return out


@pytest.mark.parametrize("column", ["interval_end", "model_sha256", "stream", "policy", "agent_version"])
def test_a_null_in_a_required_column_is_refused_as_corrupt(column):
    """It crashed the collector's write (a TypeError sorting dates, ArrowInvalid writing a
    non-nullable column) on every restart, or was filed under `date=None/`."""
    dtype = TS if column == "interval_end" else pa.string()
    table = summary_table(**{column: pa.nulls(1, dtype)})
    r = Receiver()
    assert accept_all(r, payloads(table)) is None
    assert r.counters.corrupt == 1 and r.counters.accepted == 0 and not r.seen
    assert column in r.refusal


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"\n",  # RecursionError in json, raised on paho's thread, stopped it
        b"[" * 900 + b"]" * 900 + b"\n",  # deep but short: still not a drift header
        b'{"format":"edge-ttt-drift","v":1,"id":"a","sha256":"'
        + b"0" * 64
        + b'","index":0,"count":1e400,"size":1}\n',
        b'{"format":"edge-ttt-drift","v":1,"id":"a","sha256":"'
        + b"0" * 64
        + b'","index":0,"count":1,"size":1.5}\n',
        b'{"format":"edge-ttt-drift","v":1,"id":"a","sha256":"'
        + b"0" * 64
        + b'","index":true,"count":1,"size":1}\n',
        b'{"format":"edge-ttt-drift","v":1,"id":["a"],"sha256":"'
        + b"0" * 64
        + b'","index":0,"count":1,"size":1}\n',
        b'{"format":"edge-ttt-drift","v":true,"id":"a","sha256":"'
        + b"0" * 64
        + b'","index":0,"count":1,"size":1}\n',
        b'{"format":"edge-ttt-drift","v":1,"id":"a\\n","sha256":"'
        + b"0" * 64
        + b'","index":0,"count":1,"size":1}\n',
        b"\xff\xfe\n",
    ],
)
def test_a_header_it_cannot_read_is_malformed_never_another_exception(payload):
    with pytest.raises(MessageError):
        parse_message(payload)
    r = Receiver()
    assert r.accept(payload) is None and r.counters.malformed == 1 and r.refusal.startswith("malformed")


def test_a_header_longer_than_any_shipper_writes_is_refused_unparsed():
    assert len(payloads(summary_table())[0].partition(b"\n")[0]) < MAX_HEADER / 4
    with pytest.raises(MessageError, match="header line of"):
        parse_message(b" " * (MAX_HEADER + 1) + b"{}\n")


def test_a_decompression_bomb_is_refused_before_it_is_decoded(monkeypatch):
    """38 KB of zstd Parquet held a 400 MB string: a few took the collector to GBs. The footer
    declares the decoded size, so the file is refused without decompressing it."""
    table = summary_table(mounting=pa.array(["a" * 64 * 2**20]))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue()
    assert len(data) < 200_000  # well within the receiver's 16 MiB
    monkeypatch.setattr(receiver_module, "read_bytes", lambda _d: pytest.fail("decoded a bomb"))
    r = Receiver()
    assert accept_all(r, payloads(table, data)) is None
    assert r.counters.too_large == 1 and "decodes to" in r.refusal and not r.seen


def test_more_than_one_row_or_a_string_beyond_the_limit_is_refused():
    r = Receiver()
    two = pa.concat_tables([summary_table(), summary_table()])
    assert accept_all(r, payloads(two)) is None and "2 rows" in r.refusal
    long_name = summary_table(channels=pa.array([["c" * (MAX_STRING_BYTES + 1), "c1"]]))
    assert accept_all(r, payloads(long_name)) is None and "channels holds a string" in r.refusal
    assert r.counters.too_large == 2 and r.counters.accepted == 0


LIST_F = pa.list_(pa.float64())


@pytest.mark.parametrize(
    ("column", "values", "why"),
    [
        ("windows", pa.array([-1000], pa.int64()), "windows is negative"),
        ("spool_dropped", pa.array([-5], pa.int64()), "spool_dropped is negative"),
        ("resets", pa.array([-3], pa.int64()), "resets is negative"),
        ("frames_missing", pa.array([-7], pa.int64()), "frames_missing is negative"),
        ("class_counts", pa.array([[3, -1, 2]], pa.list_(pa.int64())), "class_counts is negative"),
        ("psi", pa.array([[0.1, float("inf")]], LIST_F), "psi holds a non-finite"),
        ("psi", pa.array([[0.1, -1.0]], LIST_F), "psi is negative"),
        ("estimated_accuracy", pa.array([float("nan")]), "estimated_accuracy holds a non-finite"),
        ("estimated_accuracy", pa.array([float("inf")]), "estimated_accuracy holds a non-finite"),
        ("ref_accuracy", pa.array([1.5]), "ref_accuracy is outside 0 to 1"),
        ("ref_mean", pa.array([[0.0, float("nan")]], LIST_F), "ref_mean holds a non-finite"),
    ],
)
def test_negative_counts_and_impossible_numbers_are_refused_as_corrupt(column, values, why):
    """They printed "9223372036854775658 drift summaries lost", "-210 frames", "nan % points lost"
    and "PSI is infx its limit" in every report, and NaN in `monitor alerts --json`."""
    r = Receiver()
    assert accept_all(r, payloads(summary_table(**{column: values}))) is None
    assert r.counters.corrupt == 1 and why in r.refusal


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("psi", pa.array([[float("nan"), 0.2]], LIST_F)),  # NaN without finite data
        ("mean_shift", pa.array([[float("nan"), 0.0]], LIST_F)),
        ("channel_min", pa.array([[float("inf"), -1.0]], LIST_F)),  # +inf while a channel is empty
        ("estimated_accuracy", pa.nulls(1, pa.float64())),  # not measured
        ("channels", pa.array([[None, "c1"]], pa.list_(pa.string()))),
    ],
)
def test_what_a_real_summary_can_hold_is_accepted(column, values):
    r = Receiver()
    table = accept_all(r, payloads(summary_table(**{column: values})))
    assert table is not None and r.counters.accepted == 1 and r.refusal is None
