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


def parse_message(payload: bytes) -> Chunk:
    """Header line + chunk bytes (see shipper.py and docs/drift-summaries.md)."""
    head, sep, data = payload.partition(b"\n")
    if not sep:
        raise MessageError("no header line")
    try:
        h = json.loads(head)
    except ValueError as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    if not isinstance(h, dict) or h.get("format") != MESSAGE_FORMAT:
        raise MessageError("not a drift message")
    if h.get("v") != MESSAGE_VERSION:
        raise MessageError(f"message version {h.get('v')!r}; this receiver reads {MESSAGE_VERSION}")
    try:
        chunk = Chunk(str(h["id"]), str(h["sha256"]), int(h["index"]), int(h["count"]), int(h["size"]), data)
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"bad header field: {exc}") from None
    if not (_ID.match(chunk.summary_id) and _SHA.match(chunk.sha256)):
        raise MessageError("bad summary id or sha256")
    if not 0 <= chunk.index < chunk.count or chunk.size < 0:
        raise MessageError(f"chunk {chunk.index} of {chunk.count}, size {chunk.size}")
    return chunk


@dataclass
class ReceiverCounters:
    messages: int = 0
    malformed: int = 0  # not parseable as a drift message
    corrupt: int = 0  # reassembled file failed the SHA-256 (or size, or Parquet) check
    duplicates: int = 0  # messages of a summary already accepted
    evicted: int = 0  # incomplete files dropped to bound memory
    too_large: int = 0  # messages of a file over `max_bytes` (declared, or what its chunks add up to)
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
        self._partial: OrderedDict[tuple[str, str, int], dict[int, bytes]] = OrderedDict()
        self._sizes: dict[tuple[str, str, int], int] = {}  # data bytes per incomplete file

    def accept(self, payload: bytes, device: str | None = None) -> pa.Table | None:
        """The summary table when this message completes a new, intact summary; else None.
        `device`: the device its topic names; a summary of another device is refused
        (`misaddressed`): brokers authorize by topic, so only the topic says who sent it."""
        self.counters.messages += 1
        try:
            chunk = parse_message(payload)
        except MessageError:
            self.counters.malformed += 1
            return None
        if chunk.summary_id in self.seen:
            self.counters.duplicates += 1
            return None
        if chunk.size > self.max_bytes:
            self.counters.too_large += 1
            return None
        data = self._reassemble(chunk)
        if data is None:
            return None
        try:
            table = read_bytes(data) if hashlib.sha256(data).hexdigest() == chunk.sha256 else None
        except (pa.ArrowException, SchemaError):
            table = None
        if (
            table is None
            or len(data) != chunk.size
            or table["summary_id"].to_pylist() != [chunk.summary_id]
            or readable_times(table) is not None  # dated where no reader can go
        ):
            self.counters.corrupt += 1
            return None
        if device is not None and table["device"].to_pylist() != [device]:
            self.counters.misaddressed += 1
            return None
        self.seen.add(chunk.summary_id)
        self.counters.accepted += 1
        return table

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
