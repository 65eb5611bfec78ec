"""The receiving end of drift shipping: parse messages, reassemble chunks, verify the SHA-256,
drop summaries already accepted. Pure (no MQTT): feed it payloads from any subscriber.

The fleet collector keeps `Receiver.seen` (or rebuilds it from its dataset) so that duplicates
from QoS 1 redelivery and from re-shipping after an agent restart are accepted once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass

import pyarrow as pa

from edge_ttt.drift.schema import SchemaError, read_bytes, readable_times
from edge_ttt.drift.shipper import MESSAGE_FORMAT, MESSAGE_VERSION
from edge_ttt.drift.validation import Invalid, TooLarge, check_footprint, check_table, first_line

_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class MessageError(ValueError):
    """A payload that is not a drift message of a version this receiver reads."""


@dataclass(frozen=True)
class Chunk:
    summary_id: str
    sha256: str
    index: int
    count: int
    size: int
    data: bytes


MAX_HEADER = 1024  # bytes; a shipper's header line is about 220


def _int(h: dict, key: str) -> int:
    """An integer field of the header; a float (`1e400` reads as inf), a bool or a string is not."""
    value = h.get(key)
    if type(value) is not int:
        raise MessageError(f"header field {key!r} is not an integer: {value!r:.40}")
    return value


def _str(h: dict, key: str, pattern: re.Pattern[str]) -> str:
    value = h.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MessageError(f"header field {key!r} is not valid: {value!r:.80}")
    return value


def parse_message(payload: bytes) -> Chunk:
    """Header line + chunk bytes (see shipper.py and docs/drift-summaries.md). Anything else is a
    `MessageError`, never another exception: it runs on paho's network thread, which an escaping
    exception (a `[[[...` header deeper than the JSON parser recurses) stopped for good."""
    head, sep, data = payload.partition(b"\n")
    if not sep:
        raise MessageError("no header line")
    if len(head) > MAX_HEADER:
        raise MessageError(f"header line of {len(head)} bytes (limit {MAX_HEADER})")
    try:
        h = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"header is not JSON: {type(exc).__name__}") from None
    if not isinstance(h, dict) or h.get("format") != MESSAGE_FORMAT:
        raise MessageError("not a drift message")
    if h.get("v") != MESSAGE_VERSION or type(h.get("v")) is not int:
        raise MessageError(f"message version {h.get('v')!r:.40}; this receiver reads {MESSAGE_VERSION}")
    chunk = Chunk(
        _str(h, "id", _ID), _str(h, "sha256", _SHA), *(_int(h, k) for k in ("index", "count", "size")), data
    )
    if not 0 <= chunk.index < chunk.count or chunk.size < 0:
        raise MessageError(f"chunk {chunk.index} of {chunk.count}, size {chunk.size}")
    return chunk


@dataclass
class ReceiverCounters:
    messages: int = 0
    malformed: int = 0  # not parseable as a drift message
    corrupt: int = 0  # reassembled file failed the SHA-256, size, Parquet or value checks
    duplicates: int = 0  # messages of a summary already accepted
    evicted: int = 0  # incomplete files dropped to bound memory
    too_large: int = 0  # messages of a file over `max_bytes` (declared, or what its chunks add up
    # to), and files that decode to more than a summary can be (edge_ttt/drift/validation.py)
    misaddressed: int = 0  # intact summaries of another device than the topic they came on
    accepted: int = 0


MAX_PARTIAL_BYTES = 16 * 2**20  # a summary file is kilobytes: room for hundreds waiting at once
PART_COST = 64  # bytes charged per chunk held besides its data: empty chunks are not free


class Receiver:
    """Payloads in, each new verified summary table out, once.

    Memory is bounded whatever arrives: the incomplete files together hold at most `max_bytes`
    (each chunk charged its data and `PART_COST`) and number at most `max_partial`, the oldest
    going first (`evicted`); a header that declares a file over `max_bytes`, or chunks that add up
    to more than their header declared, drop the file (`too_large`)."""

    def __init__(
        self, seen: set[str] | None = None, max_partial: int = 256, max_bytes: int = MAX_PARTIAL_BYTES
    ) -> None:
        self.seen: set[str] = set() if seen is None else seen
        self.max_partial = max_partial
        self.max_bytes = max_bytes
        self.held = 0  # bytes charged for every incomplete file's chunks
        self.counters = ReceiverCounters()
        self.refusal: str | None = None  # why the latest payload was refused, for the collector's log
        self._partial: OrderedDict[tuple[str, str, int], dict[int, bytes]] = OrderedDict()
        self._sizes: dict[tuple[str, str, int], int] = {}  # data bytes per incomplete file

    def accept(self, payload: bytes, device: str | None = None) -> pa.Table | None:
        """The summary table when this message completes a new, intact summary; else None.
        `device`: the device its topic names; a summary of another device is refused
        (`misaddressed`): brokers authorize by topic, so only the topic says who sent it."""
        self.counters.messages += 1
        try:
            chunk = parse_message(payload)
        except MessageError as exc:
            return self._refuse("malformed", str(exc))
        if chunk.summary_id in self.seen:
            self.counters.duplicates += 1
            return None
        if chunk.size > self.max_bytes:
            return self._refuse("too_large", f"{chunk.size} bytes declared (limit {self.max_bytes})")
        data = self._reassemble(chunk)
        if data is None:
            return None
        try:
            table = _verified(chunk, data)
        except TooLarge as exc:
            return self._refuse("too_large", f"summary {chunk.summary_id}: {exc}")
        except Invalid as exc:
            return self._refuse("corrupt", f"summary {chunk.summary_id}: {exc}")
        if device is not None and table["device"].to_pylist() != [device]:
            return self._refuse("misaddressed", f"summary {chunk.summary_id} of another device")
        self.seen.add(chunk.summary_id)
        self.counters.accepted += 1
        return table

    def _refuse(self, counter: str, why: str) -> None:
        """Count a refusal and keep why, for the collector's log line."""
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        self.refusal = f"{counter}: {why}"

    def waiting(self, summary_id: str) -> bool:
        """Some chunks of this summary are here, the rest not yet."""
        return any(key[0] == summary_id for key in self._partial)

    def _reassemble(self, chunk: Chunk) -> bytes | None:
        key = (chunk.summary_id, chunk.sha256, chunk.count)  # a re-send may be chunked differently
        parts = self._partial.setdefault(key, {})
        self._partial.move_to_end(key)
        old = parts.get(chunk.index)
        size = self._sizes.get(key, 0) + len(chunk.data) - (0 if old is None else len(old))
        if size > chunk.size:  # more than the file it claims to be: it will never verify
            self._forget(key)
            self.counters.too_large += 1
            return None
        self.held += size - self._sizes.get(key, 0) + (PART_COST if old is None else 0)
        parts[chunk.index] = chunk.data
        self._sizes[key] = size
        if len(parts) < chunk.count:
            while len(self._partial) > self.max_partial or self.held > self.max_bytes:
                self._forget(next(iter(self._partial)))
                self.counters.evicted += 1
            return None
        self._forget(key)
        return b"".join(parts[i] for i in range(chunk.count))

    def _forget(self, key: tuple[str, str, int]) -> None:
        parts = self._partial.pop(key)
        self.held -= self._sizes.pop(key, 0) + PART_COST * len(parts)


def _verified(chunk: Chunk, data: bytes) -> pa.Table:
    """The reassembled file as a summary table, or `Invalid` (`TooLarge`) saying why not: size and
    SHA-256 as the header says, a bounded Parquet file of the header's one summary, dated where a
    reader can go, and values a summary can hold (edge_ttt/drift/validation.py)."""
    if len(data) != chunk.size:
        raise Invalid(f"{len(data)} bytes, the header says {chunk.size}")
    if hashlib.sha256(data).hexdigest() != chunk.sha256:
        raise Invalid("SHA-256 mismatch")
    try:
        check_footprint(data)  # before anything is decompressed
        table = read_bytes(data)
    except (pa.ArrowException, SchemaError) as exc:
        raise Invalid(f"not a summary file ({first_line(exc)})") from None
    if table["summary_id"].to_pylist() != [chunk.summary_id]:
        raise Invalid("its summary_id is not the header's id")
    if readable_times(table) is not None:
        raise Invalid("dated outside the years 1 to 9999")
    check_table(table)
    return table
