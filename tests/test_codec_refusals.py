"""Frame format v1 refusals: one reason per malformed payload, their messages, and fuzzing."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_ttt.stream.codec import (
    DEFAULT_MAX_BYTES,
    REASONS,
    Frame,
    FrameError,
    decode,
    encode,
)
from tests.frame_factory import (
    FIELDS,
    FUZZ,
    GOOD,
    GOOD_JSON,
    INT64_MAX,
    doc_section,
    field,
    frames,
    patched,
)


def reason_of(payload: bytes, **kwargs: int) -> str:
    with pytest.raises(FrameError) as info:
        decode(payload, **kwargs)
    assert info.value.reason in REASONS
    return info.value.reason


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
    documented = re.search(r"```text\n(.*?)\n```", doc_section("Errors")).group(1)
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
