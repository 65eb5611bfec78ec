"""Frame format v1: the documented contract, what a Frame can carry, and bit-exact round trips."""

from __future__ import annotations

import re
import zlib
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given

from edge_ttt.stream.codec import (
    DEFAULT_MAX_BYTES,
    HEADER_SIZE,
    REASONS,
    Frame,
    decode,
    encode,
    encode_json,
)
from tests.frame_factory import (
    FIELDS,
    FUZZ,
    GOOD,
    INT64_MAX,
    doc_section,
    field,
    frames,
    make_frame,
    patched,
    same_frame,
)

# ---------------------------------------------------------------------------------------------
# The documented contract


def test_doc_table_is_the_40_byte_header():
    spans = sorted((offset, size) for offset, size, _ in FIELDS.values())
    assert len(FIELDS) == 11
    assert all(o1 + s1 == o2 for (o1, s1), (o2, _) in pairwise(spans))  # contiguous, no overlap
    assert spans[0][0] == 0 and sum(size for _, size in spans) == HEADER_SIZE == 40


def test_worked_example_matches_the_code_byte_for_byte():
    section = doc_section("Worked example")
    json_text = re.search(r"```json\n(.*?)\n```", section, flags=re.S).group(1)
    dump = re.search(r"```text\n(.*?)\n```", section, flags=re.S).group(1).splitlines()
    assert [int(line[:8], 16) for line in dump] == [16 * i for i in range(len(dump))]
    binary = bytes.fromhex("".join(line.split("|")[0][8:] for line in dump))

    expected = {
        "magic": b"ETTF",
        "version": 1,
        "dtype": 1,
        "header_len": 40,
        "stream_id": 1,
        "seq": 17,
        "t0_ns": 1_704_067_200_000_000_000,
        "period_ns": 20_000_000,
        "n_samples": 2,
        "n_channels": 6,
        "body_crc32": zlib.crc32(binary[40:]),
    }
    assert {name: field(binary, name) for name in FIELDS} == expected
    assert len(binary) == 40 + 2 * 6 * 4

    from_json = decode(json_text.encode())
    assert encode(from_json) == binary
    assert encode_json(decode(binary)).decode() == json_text
    assert same_frame(decode(binary), from_json)
    assert np.isnan(from_json.values[1, 3]) and np.isfinite(np.delete(from_json.values, 9)).all()
    body = np.frombuffer(binary[40:], dtype="<f4").reshape(2, 6)  # sample-major, as documented
    assert np.array_equal(body, from_json.values, equal_nan=True)


def test_reasons_in_doc_are_the_reasons_in_code():
    documented = re.findall(r"^\| `(\w+)` \|", doc_section("Errors"), flags=re.M)
    assert tuple(documented) == REASONS


# ---------------------------------------------------------------------------------------------
# Frame


def test_frame_times_and_shape():
    frame = make_frame(n=3, c=2, t0_ns=-50, period_ns=20)
    assert (frame.n_samples, frame.n_channels) == (3, 2)
    assert frame.times().dtype == np.int64
    assert frame.times().tolist() == [-50, -30, -10]


def test_frame_normalises_types():
    frame = Frame(stream_id=np.uint32(3), seq=np.uint64(2**64 - 1), t0_ns=0, period_ns=1, values=[[1.5]])
    assert type(frame.stream_id) is int and type(frame.seq) is int and frame.seq == 2**64 - 1
    assert frame.values.dtype == np.float32


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"seq": True}, "seq must be an integer"),
        ({"period_ns": 20.0}, "period_ns must be an integer"),
        ({"period_ns": 0}, "period_ns is 0"),
        ({"seq": 2**64}, "seq is 18446744073709551616"),
        ({"stream_id": -1}, "stream_id is -1"),
        ({"t0_ns": INT64_MAX - 10, "period_ns": 10}, "overflows int64"),
        ({"values": np.zeros(3, np.float32)}, "2-D float array"),
        ({"values": np.zeros((2, 2), np.int32)}, "2-D float array"),
        ({"values": np.zeros((0, 2), np.float32)}, "n_samples is 0"),
        ({"values": np.zeros((2, 0), np.float32)}, "n_channels is 0"),
        ({"values": np.zeros((2**16, 1), np.float32)}, "n_samples is 65536"),
    ],
)
def test_frame_refuses_what_the_format_cannot_carry(changes, words):
    fields = {"stream_id": 0, "seq": 0, "t0_ns": INT64_MAX - 30, "period_ns": 10}
    fields["values"] = np.zeros((4, 1), np.float32)
    with pytest.raises(ValueError, match=words):
        Frame(**{**fields, **changes})
    del fields["values"]  # the same header with the default values is fine
    assert Frame(values=np.zeros((4, 1), np.float32), **fields).times()[-1] == INT64_MAX


@pytest.mark.parametrize("encoder", [encode, encode_json])
def test_encoders_refuse_frames_receivers_would_drop(encoder):
    big = make_frame(n=4096, c=4)  # 64 KiB of body alone
    with pytest.raises(ValueError, match="limit"):
        encoder(big)
    assert len(encoder(big, max_bytes=10**6)) > DEFAULT_MAX_BYTES


# ---------------------------------------------------------------------------------------------
# Round trips


@FUZZ
@given(frames())
def test_binary_round_trip_is_bit_exact(frame):
    payload = encode(frame)
    back = decode(payload)
    assert len(payload) == 40 + 4 * frame.values.size
    assert same_frame(back, frame)
    assert np.array_equal(back.values.view(np.uint32), frame.values.view(np.uint32))  # NaN bits too
    assert back.times()[-1] == frame.t0_ns + (frame.n_samples - 1) * frame.period_ns


@FUZZ
@given(frames())
def test_json_round_trip(frame):
    assert same_frame(decode(encode_json(frame)), frame)


def test_binary_values_are_a_read_only_float32_view():
    frame = decode(GOOD)
    assert frame.values.dtype == np.float32 and not frame.values.flags.writeable
    assert same_frame(frame, make_frame())


def test_extra_header_bytes_are_skipped():
    extended = patched(GOOD[:40], header_len=48) + b"future!!" + GOOD[40:]
    assert same_frame(decode(extended), make_frame())


def test_json_details():
    text = b' \n\t{"v": 1, "seq": 0, "t0_ns": -5, "period_ns": 1, "samples": [[null, 1e999, -1e39, 3]]}'
    frame = decode(text)  # leading whitespace, stream defaults to 0
    assert frame.stream_id == 0 and frame.t0_ns == -5
    assert np.isnan(frame.values[0, 0]) and frame.values[0, 1:3].tolist() == [np.inf, -np.inf]
    assert frame.values[0, 3] == 3
