"""Frames for the codec tests: header fields at their documented offsets, valid payloads, any frame.

Header fields are read and patched at the offsets of the table in docs/frames.md, never through the
codec's own struct layout, so the document and the code cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_ttt.stream.codec import Frame, encode, encode_json

DOC = (Path(__file__).resolve().parents[1] / "docs" / "frames.md").read_text()
INT64_MAX = 2**63 - 1
# hermetic (no .hypothesis dir) and no per-example deadline: CI machines are slow and noisy
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def doc_section(title: str) -> str:
    return DOC.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _doc_fields() -> dict[str, tuple[int, int, str]]:
    """name -> (offset, size, type) from the binary table of docs/frames.md."""
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\w+) \| (\w+) \|", doc_section("Binary frame"), flags=re.M)
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
