"""Frame format v1: round trips, the documented example, one reason per malformation, and fuzzing.

Header fields are read and patched at the offsets of the table in docs/frames.md, never through the
codec's own struct layout, so the document and the code cannot drift apart.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_ttt.stream.codec import (
    DEFAULT_MAX_BYTES,
    HEADER_SIZE,
    REASONS,
    Frame,
    FrameError,
    decode,
    encode,
    encode_json,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "frames.md").read_text()
INT64_MAX = 2**63 - 1
# hermetic (no .hypothesis dir) and no per-example deadline: CI machines are slow and noisy
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _doc_section(title: str) -> str:
    return DOC.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _doc_fields() -> dict[str, tuple[int, int, str]]:
    """name -> (offset, size, type) from the binary table of docs/frames.md."""
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\w+) \| (\w+) \|", _doc_section("Binary frame"), flags=re.M)
    return {name: (int(offset), int(size), kind) for offset, size, kind, name in rows}


FIELDS = _doc_fields()


def field(payload: bytes, name: str) -> int | bytes:
    offset, size, kind = FIELDS[name]
    raw = payload[offset : offset + size]
    return raw if kind == "bytes" else int.from_bytes(raw, "little", signed=kind.startswith("int"))


def patched(payload: bytes, **fields: int | bytes) -> bytes:
    """`payload` with header fields overwritten at their documented offsets; the crc is left alone."""
    out = bytearray(payload)
    for name, value in fields.items():
        offset, size, kind = FIELDS[name]
        if isinstance(value, int):
            value = value.to_bytes(size, "little", signed=kind.startswith("int"))
        assert len(value) == size
        out[offset : offset + size] = value
    return bytes(out)


def make_frame(n: int = 6, c: int = 6, **fields: int) -> Frame:
    values = np.arange(n * c, dtype=np.float32).reshape(n, c) / 4
    header = {"stream_id": 2, "seq": 41, "t0_ns": 1_704_067_200_000_000_000, "period_ns": 20_000_000}
    return Frame(values=values, **{**header, **fields})


GOOD = encode(make_frame())
GOOD_JSON = json.loads(encode_json(make_frame()))


def reason_of(payload: bytes, **kwargs: int) -> str:
    with pytest.raises(FrameError) as info:
        decode(payload, **kwargs)
    assert info.value.reason in REASONS
    return info.value.reason


def same_frame(a: Frame, b: Frame) -> bool:
    """Equal header fields and values: NaN equals any NaN (JSON keeps no NaN bits), -0.0 is not 0.0."""
    return (
        (a.stream_id, a.seq, a.t0_ns, a.period_ns) == (b.stream_id, b.seq, b.t0_ns, b.period_ns)
        and a.values.dtype == b.values.dtype == np.float32
        and np.array_equal(a.values, b.values, equal_nan=True)
        and np.array_equal(
            np.signbit(a.values) & ~np.isnan(a.values), np.signbit(b.values) & ~np.isnan(b.values)
        )
    )


# ---------------------------------------------------------------------------------------------
# The documented contract


def test_doc_table_is_the_40_byte_header():
    spans = sorted((offset, size) for offset, size, _ in FIELDS.values())
    assert len(FIELDS) == 11
    assert all(o1 + s1 == o2 for (o1, s1), (o2, _) in pairwise(spans))  # contiguous, no overlap
    assert spans[0][0] == 0 and sum(size for _, size in spans) == HEADER_SIZE == 40


def test_worked_example_matches_the_code_byte_for_byte():
    section = _doc_section("Worked example")
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
    documented = re.findall(r"^\| `(\w+)` \|", _doc_section("Errors"), flags=re.M)
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

int64 = st.integers(-(2**63), INT64_MAX)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    n = draw(st.integers(1, 24))
    c = draw(st.integers(1, 8))
    period = draw(st.integers(1, 2**32 - 1))
    t0 = draw(st.integers(-(2**63), INT64_MAX - (n - 1) * period))
    values = draw(hnp.arrays(np.float32, (n, c), elements=st.floats(width=32)))  # NaN, +-Inf, -0.0 too
    return Frame(
        stream_id=draw(st.integers(0, 2**32 - 1)),
        seq=draw(st.integers(0, 2**64 - 1)),
        t0_ns=t0,
        period_ns=period,
        values=values,
    )


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


# ---------------------------------------------------------------------------------------------
# Malformed payloads: one reason each


def json_payload(**changes: object) -> bytes:
    """GOOD_JSON with keys replaced; a value of `...` removes the key."""
    doc = {**GOOD_JSON, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def with_crc(payload: bytes) -> bytes:
    return patched(payload, body_crc32=zlib.crc32(payload[field(payload, "header_len") :]))


MALFORMED: list[tuple[str, Callable[[], bytes], str]] = [
    ("too large binary", lambda: GOOD + bytes(DEFAULT_MAX_BYTES), "too_large"),
    ("too large JSON", lambda: b"{" + b" " * DEFAULT_MAX_BYTES + b"}", "too_large"),
    ("empty", lambda: b"", "short"),
    ("magic only", lambda: b"ETTF", "short"),
    ("short header", lambda: GOOD[:39], "short"),
    ("JSON array is not JSON frame", lambda: json.dumps([GOOD_JSON]).encode(), "magic"),
    ("wrong magic", lambda: patched(GOOD, magic=b"ETTG"), "magic"),
    ("version 2", lambda: patched(GOOD, version=2), "version"),
    ("version 0", lambda: patched(GOOD, version=0), "version"),
    ("dtype 0", lambda: patched(GOOD, dtype=0), "dtype"),
    ("dtype 2", lambda: patched(GOOD, dtype=2), "dtype"),
    ("header_len 39", lambda: patched(GOOD, header_len=39), "header"),
    ("header_len 0", lambda: patched(GOOD, header_len=0), "header"),
    ("zero period", lambda: patched(GOOD, period_ns=0), "header"),
    ("zero samples", lambda: patched(GOOD, n_samples=0), "header"),
    ("zero channels", lambda: patched(GOOD, n_channels=0), "header"),
    ("last time overflows", lambda: patched(GOOD, t0_ns=INT64_MAX - 10), "header"),
    ("body too short", lambda: GOOD[:-4], "size"),
    ("body too long", lambda: GOOD + bytes(4), "size"),
    ("header_len past the end", lambda: patched(GOOD, header_len=1000), "size"),
    ("huge declared size", lambda: patched(GOOD, n_samples=2**16 - 1, n_channels=2**16 - 1), "size"),
    ("body byte flipped", lambda: GOOD[:-1] + bytes([GOOD[-1] ^ 1]), "crc"),
    ("crc field wrong", lambda: patched(GOOD, body_crc32=field(GOOD, "body_crc32") ^ 1), "crc"),
    ("not JSON", lambda: b"{not json}", "json"),
    ("truncated JSON", lambda: json_payload()[:-1], "json"),
    ("trailing data", lambda: json_payload() + b"x", "json"),
    ("not UTF-8", lambda: b'{"v": 1, "\xff": 0}', "json"),
    ("UTF-16", lambda: json_payload().decode().encode("utf-16-le"), "json"),
    ("missing seq", lambda: json_payload(seq=...), "json"),
    ("missing samples", lambda: json_payload(samples=...), "json"),
    ("unknown key", lambda: json_payload(period=5), "json"),
    ("repeated key", lambda: json_payload()[:-1] + b', "seq": 3}', "json"),
    ("v 2", lambda: json_payload(v=2), "version"),
    ("v string", lambda: json_payload(v="1"), "json"),
    ("v bool", lambda: json_payload(v=True), "json"),
    ("bool seq", lambda: json_payload(seq=True), "json"),
    ("float seq", lambda: json_payload(seq=17.0), "json"),
    ("string seq", lambda: json_payload(seq="17"), "json"),
    ("null seq", lambda: json_payload(seq=None), "json"),
    ("NaN t0", lambda: json_payload(t0_ns=float("nan")), "json"),
    ("Infinity period", lambda: json_payload(period_ns=float("inf")), "json"),
    ("seq 2**64", lambda: json_payload(seq=2**64), "json"),
    ("negative seq", lambda: json_payload(seq=-1), "json"),
    ("stream 2**32", lambda: json_payload(stream=2**32), "json"),
    ("zero period JSON", lambda: json_payload(period_ns=0), "json"),
    ("t0 beyond int64", lambda: json_payload(t0_ns=2**63), "json"),
    ("5000-digit stream", lambda: json_payload()[:-1] + b', "stream": ' + b"1" * 5000 + b"}", "json"),
    ("empty samples", lambda: json_payload(samples=[]), "json"),
    ("empty row", lambda: json_payload(samples=[[]]), "json"),
    ("samples not a list", lambda: json_payload(samples={"ax": [1]}), "json"),
    ("row not a list", lambda: json_payload(samples=[1, 2]), "json"),
    ("ragged rows", lambda: json_payload(samples=[[1, 2], [3]]), "json"),
    ("string value", lambda: json_payload(samples=[["1.5"]]), "json"),
    ("bool value", lambda: json_payload(samples=[[True]]), "json"),
    ("nested value", lambda: json_payload(samples=[[[1.0]]]), "json"),
    ("NaN literal value", lambda: json_payload(samples=[[float("nan")]]), "json"),
    ("integer beyond float64", lambda: json_payload(samples=[[10**400]]), "json"),
    ("deeply nested arrays", lambda: b'{"samples": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "json"),
    ("deeply nested objects", lambda: b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, "json"),
]


def test_every_reason_has_a_malformed_example():
    assert {reason for _, _, reason in MALFORMED} == set(REASONS)


@pytest.mark.parametrize(
    ("payload", "reason"), [(m[1], m[2]) for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_payload_has_its_reason(payload, reason):
    assert reason_of(payload()) == reason


def test_too_large_is_refused_before_parsing():
    assert reason_of(b"garbage", max_bytes=6) == "too_large"
    assert decode(GOOD, max_bytes=len(GOOD)).n_samples == 6
    assert reason_of(GOOD, max_bytes=len(GOOD) - 1) == "too_large"


def test_declared_size_is_never_allocated():
    huge = patched(GOOD, n_samples=2**16 - 1, n_channels=2**16 - 1)
    assert reason_of(huge, max_bytes=2**40) == "size"


def test_too_many_json_rows_is_refused_even_under_a_raised_limit():
    assert decode(json_payload(samples=[[0]] * (2**16 - 1)), max_bytes=2**20).n_samples == 2**16 - 1
    assert reason_of(json_payload(samples=[[0]] * 2**16), max_bytes=2**20) == "json"


def test_messages_name_the_problem_and_the_fix():
    documented = re.search(r"```text\n(.*?)\n```", _doc_section("Errors")).group(1)
    cases = {
        GOOD[:84]: documented,
        patched(GOOD, version=7): "frame version is 7",
        json_payload(period=5): "unknown key(s) ['period']",
        json_payload(samples=[[1, 2], [3]]): "row 1 has 1 values, row 0 has 2",
    }
    for payload, words in cases.items():
        with pytest.raises(FrameError) as info:
            decode(payload)
        assert words in str(info.value) and "Fix: " in str(info.value)


def test_messages_quote_payload_content_briefly():
    with pytest.raises(FrameError) as info:
        decode(json_payload(**{"x" * 10_000: 1}))
    assert len(str(info.value)) < 300


# ---------------------------------------------------------------------------------------------
# Fuzzing: any bytes give a Frame or a FrameError with a known reason, nothing else


def decode_or_reason(payload: bytes) -> Frame | str:
    try:
        return decode(payload)
    except FrameError as exc:
        assert exc.reason in REASONS
        return exc.reason


@settings(FUZZ, max_examples=2000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(payload):
    decode_or_reason(payload)


@settings(FUZZ, max_examples=1000)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_behind_a_valid_preamble(rest):
    decode_or_reason(GOOD[:8] + rest)


@settings(FUZZ, max_examples=1000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_brace(rest):
    result = decode_or_reason(b"{" + rest)
    assert isinstance(result, Frame) or result in {"json", "version"}


json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4), max_leaves=20)


@settings(FUZZ, max_examples=1000)
@given(
    st.dictionaries(
        st.sampled_from(["v", "stream", "seq", "t0_ns", "period_ns", "samples", "extra"]),
        json_values | st.just(1) | st.just([[1.0, None]]),
    )
)
def test_arbitrary_json_objects(doc):
    decode_or_reason(json.dumps(doc).encode())


@settings(FUZZ, max_examples=2000)
@given(frames(), st.sampled_from(["truncate", "extend", "flip"]), st.data())
def test_mutated_frames(frame, mutation, data):
    payload = encode(frame)
    if mutation == "truncate":
        cut = data.draw(st.integers(0, len(payload) - 1))
        assert decode_or_reason(payload[:cut]) == ("short" if cut < 40 else "size")
    elif mutation == "extend":
        assert decode_or_reason(payload + data.draw(st.binary(min_size=1, max_size=64))) == "size"
    else:
        at = data.draw(st.integers(0, len(payload) - 1))
        flip = data.draw(st.integers(1, 255))
        mutated = payload[:at] + bytes([payload[at] ^ flip]) + payload[at + 1 :]
        result = decode_or_reason(mutated)
        name = next((n for n, (o, size, _) in FIELDS.items() if o <= at < o + size), "body")
        if name == "body":
            assert result == "crc"  # crc32 catches every single-byte error
        elif name in ("stream_id", "seq", "t0_ns", "period_ns"):  # not covered by the crc
            assert result == "header" or getattr(result, name) != getattr(frame, name)
        else:
            assert isinstance(result, str)
