"""Sensor frame format v1: the MQTT payload a sensor device publishes, binary or JSON.

The written contract lives in docs/frames.md. Decoding is total: any payload gives a `Frame`
or a `FrameError` whose `reason` is one of `REASONS`, so the agent can drop and count bad frames
and keep running. Frame, encoder and decoder share one set of field checks, so we never send a
frame we would refuse to receive.

>>> import numpy as np
>>> frame = Frame(stream_id=0, seq=17, t0_ns=1_704_067_200_000_000_000, period_ns=20_000_000,
...               values=np.zeros((50, 6), dtype=np.float32))
>>> payload = encode(frame)
>>> len(payload), decode(payload).seq, decode(encode_json(frame)).n_samples
(1240, 17, 50)
>>> try:
...     decode(payload[:-1])
... except FrameError as exc:
...     print(exc.reason)
size
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_ttt.logs import show

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "REASONS",
    "Frame",
    "FrameError",
    "decode",
    "encode",
    "encode_json",
]

MAGIC = b"ETTF"
FORMAT_VERSION = 1
DTYPE_FLOAT32 = 1
HEADER_SIZE = 40
# 64 KiB holds over 16,000 float32 values (50 samples x 6 channels is 1,240 bytes) and bounds the
# memory and time one hostile or buggy payload can cost the agent.
DEFAULT_MAX_BYTES = 65536
_QUOTE = 40  # characters of a payload's value quoted in an error message, at most

# Machine-readable drop reasons, in the order decode checks them; the agent counts drops per reason.
REASONS = ("too_large", "short", "magic", "version", "dtype", "header", "size", "crc", "json")

_HEADER = struct.Struct("<4sBBHIQqIHHI")  # the docs/frames.md table, HEADER_SIZE bytes

# (field, lowest, highest) for every integer a frame carries, in header order.
_LIMITS = (
    ("stream_id", 0, 2**32 - 1),
    ("seq", 0, 2**64 - 1),
    ("t0_ns", -(2**63), 2**63 - 1),
    ("period_ns", 1, 2**32 - 1),
    ("n_samples", 1, 2**16 - 1),
    ("n_channels", 1, 2**16 - 1),
)
_JSON_WHITESPACE = b" \t\n\r"
_JSON_REQUIRED = ("v", "seq", "t0_ns", "period_ns", "samples")
_JSON_KEYS = ("v", "stream", "seq", "t0_ns", "period_ns", "samples")
_JSON_VALUE_TYPES = (int, float, type(None))


class FrameError(ValueError):
    """A payload that is not a valid v1 frame.

    `reason` (one of `REASONS`) is for counting; the message says what was wrong and how to fix
    it, because it ends up in a log read by whoever wrote the sensor firmware.
    """

    def __init__(self, reason: str, what: str, fix: str) -> None:
        super().__init__(f"{what}. Fix: {fix}.")
        self.reason = reason


def _field_problem(fields: tuple[object, ...]) -> str | None:
    """Why these integers (in `_LIMITS` order) cannot form a v1 frame, or None when they can."""
    numbers = []
    for (name, low, high), value in zip(_LIMITS, fields, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            return f"{name} must be an integer, got {type(value).__name__} {show(value, _QUOTE)}"
        if not low <= int(value) <= high:
            return f"{name} is {show(int(value), _QUOTE)}, outside {low}..{high}"
        numbers.append(int(value))
    _, _, t0_ns, period_ns, n_samples, _ = numbers
    last = t0_ns + (n_samples - 1) * period_ns
    if last > _LIMITS[2][2]:
        return f"the last sample time t0_ns + (n_samples - 1) * period_ns = {last} overflows int64 ns"
    return None


@dataclass(frozen=True, eq=False)
class Frame:
    """Consecutive samples of one stream; `eq=False` because `values` is an array.

    A decoded binary frame's `values` is a read-only view of the payload (no copy).
    """

    stream_id: int
    seq: int
    t0_ns: int
    period_ns: int
    values: np.ndarray  # float32 [n_samples, n_channels], sample-major

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
            raise ValueError(
                f"values must be a 2-D float array [n_samples, n_channels], "
                f"got {values.dtype} with shape {values.shape}"
            )
        problem = _field_problem((self.stream_id, self.seq, self.t0_ns, self.period_ns, *values.shape))
        if problem:
            raise ValueError(problem)
        for name in ("stream_id", "seq", "t0_ns", "period_ns"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "values", values.astype(np.float32, copy=False))

    @property
    def n_samples(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.values.shape[1])

    def times(self) -> np.ndarray:
        """int64 [n_samples] sample times in ns; cannot overflow, the constructor checked the last one."""
        return self.t0_ns + np.arange(self.n_samples, dtype=np.int64) * self.period_ns


def _check_size(n_bytes: int, max_bytes: int, what: str) -> None:
    if n_bytes > max_bytes:
        raise ValueError(
            f"{what} is {n_bytes} bytes, over the {max_bytes}-byte limit receivers accept by default; "
            "send fewer samples per frame"
        )


def encode(frame: Frame, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Binary v1 frame; refuses frames over `max_bytes`, which receivers would drop as too large."""
    body = frame.values.astype("<f4", copy=False).tobytes()
    _check_size(HEADER_SIZE + len(body), max_bytes, "the binary frame")
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        DTYPE_FLOAT32,
        HEADER_SIZE,
        frame.stream_id,
        frame.seq,
        frame.t0_ns,
        frame.period_ns,
        frame.n_samples,
        frame.n_channels,
        zlib.crc32(body),
    )
    return header + body


def _json_number(x: float) -> str:
    # JSON has no NaN or Inf: NaN becomes null, and +-Inf a literal that overflows to +-Inf in
    # every IEEE 754 parser. Finite values keep all float64 digits, so float32 survives exactly.
    if math.isnan(x):
        return "null"
    if math.isinf(x):
        return "1e999" if x > 0 else "-1e999"
    return repr(x)


def encode_json(frame: Frame, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """JSON v1 frame (UTF-8), for hand testing and readable captures."""
    rows = ", ".join("[" + ", ".join(map(_json_number, row)) + "]" for row in frame.values.tolist())
    text = (
        f'{{"v": {FORMAT_VERSION}, "stream": {frame.stream_id}, "seq": {frame.seq}, '
        f'"t0_ns": {frame.t0_ns}, "period_ns": {frame.period_ns}, "samples": [{rows}]}}'
    )
    _check_size(len(text), max_bytes, "the JSON frame")
    return text.encode()


def decode(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Frame:
    """A binary or JSON v1 frame; raises FrameError, and nothing else, for any other bytes."""
    n_bytes = len(payload)
    if n_bytes > max_bytes:
        raise FrameError(
            "too_large",
            f"payload is {n_bytes} bytes, over the {max_bytes}-byte limit",
            "send fewer samples per frame",
        )
    if payload.lstrip(_JSON_WHITESPACE)[:1] == b"{":
        return _decode_json(payload)
    if n_bytes < HEADER_SIZE:
        raise FrameError(
            "short",
            f"payload is {n_bytes} bytes, shorter than the {HEADER_SIZE}-byte v1 header",
            "publish whole frames (binary, or JSON starting with '{')",
        )
    magic, version, dtype, header_len, stream_id, seq, t0_ns, period_ns, n, c, crc = _HEADER.unpack_from(
        payload
    )
    if magic != MAGIC:
        raise FrameError(
            "magic",
            f"payload starts with {show(magic, _QUOTE)}, not {MAGIC!r}",
            "publish edge-ttt frames only on the data topic",
        )
    if version != FORMAT_VERSION:
        raise FrameError(
            "version",
            f"frame version is {version}; this decoder reads version {FORMAT_VERSION}",
            "encode frames as v1 or upgrade the agent",
        )
    if dtype != DTYPE_FLOAT32:
        raise FrameError(
            "dtype",
            f"dtype code is {dtype}; v1 knows only {DTYPE_FLOAT32} (float32 little-endian)",
            "send float32 samples",
        )
    if header_len < HEADER_SIZE:
        raise FrameError(
            "header",
            f"header_len is {header_len}, below the {HEADER_SIZE} bytes of the v1 header",
            f"set header_len to {HEADER_SIZE} (or more, for extension fields)",
        )
    problem = _field_problem((stream_id, seq, t0_ns, period_ns, n, c))
    if problem:
        raise FrameError("header", problem, "fix the header fields in the encoder")
    expected = header_len + 4 * n * c
    if n_bytes != expected:
        raise FrameError(
            "size",
            f"frame is {n_bytes} bytes, header says {header_len} header bytes + {n} samples x {c} channels "
            f"x 4 = {expected}",
            "send exactly the samples the header declares",
        )
    actual = zlib.crc32(memoryview(payload)[header_len:])
    if actual != crc:
        raise FrameError(
            "crc",
            f"body crc32 is {actual:#010x}, header says {crc:#010x}",
            "compute body_crc32 over the body bytes as sent; a mismatch means corruption or a firmware bug",
        )
    values = np.frombuffer(payload, dtype="<f4", count=n * c, offset=header_len).reshape(n, c)
    return Frame(stream_id=stream_id, seq=seq, t0_ns=t0_ns, period_ns=period_ns, values=values)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON (write null for a missing value, 1e999 for Infinity)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"key {show(key, _QUOTE)} appears twice")
        doc[key] = value
    return doc


def _json_fail(what: str, fix: str) -> FrameError:
    return FrameError("json", f"JSON frame: {what}", fix)


def _decode_json(payload: bytes) -> Frame:
    try:
        doc = json.loads(
            payload.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_unique_keys
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _json_fail(f"not valid UTF-8 JSON ({show(str(exc), 160)})", "send one JSON object") from None
    # A text starting with '{' parses to an object or not at all, so `doc` is a dict here.
    unknown = sorted(set(doc) - set(_JSON_KEYS))
    if unknown:
        raise _json_fail(f"unknown key(s) {show(unknown, 80)}", f"use only {', '.join(_JSON_KEYS)}")
    missing = [k for k in _JSON_REQUIRED if k not in doc]
    if missing:
        raise _json_fail(f"missing key(s) {missing}", f"give all of {', '.join(_JSON_REQUIRED)}")
    v = doc["v"]
    if type(v) is not int:
        raise _json_fail(f"v is {show(v, _QUOTE)}, not an integer", f'write "v": {FORMAT_VERSION}')
    if v != FORMAT_VERSION:
        raise FrameError(
            "version",
            f"JSON frame version is {show(v, _QUOTE)}; this decoder reads version {FORMAT_VERSION}",
            "encode frames as v1 or upgrade the agent",
        )
    samples = doc["samples"]
    if type(samples) is not list or not samples or any(type(row) is not list for row in samples):
        raise _json_fail(
            "samples must be a non-empty list of rows (lists)", 'write e.g. "samples": [[0.1, 0.2, 9.8]]'
        )
    width = len(samples[0])
    for i, row in enumerate(samples):
        if len(row) != width:
            raise _json_fail(
                f"row {i} has {len(row)} values, row 0 has {width}", "give every row one value per channel"
            )
        for x in row:
            if type(x) not in _JSON_VALUE_TYPES:
                raise _json_fail(
                    f"row {i} holds {type(x).__name__} {show(x, _QUOTE)}",
                    "write numbers, or null for a missing value",
                )
    try:
        with np.errstate(over="ignore"):  # beyond float32 range is +-Inf, as for a binary sender's cast
            values = np.array(samples, dtype=np.float32)
    except OverflowError:
        raise _json_fail(
            "an integer sample is beyond the float64 range", "write such values as 1e999"
        ) from None
    try:
        return Frame(
            stream_id=doc.get("stream", 0),
            seq=doc["seq"],
            t0_ns=doc["t0_ns"],
            period_ns=doc["period_ns"],
            values=values,
        )
    except ValueError as exc:
        raise _json_fail(str(exc), "write header fields as integers in the documented ranges") from None
