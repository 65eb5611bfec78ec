"""The on-disk spool: summaries wait here until the fleet has stored them.

Files are written atomically (hidden temporary file, fsync, rename, fsync of the directory), so
a crash leaves either no file or a complete one; a leftover temporary file is removed on open.
Names start with a zero-padded nanosecond time, so name order is age order. The spool keeps an
index of its files (name and size, oldest first), read from the directory once at open, so that
a write or an acknowledgement costs the same however many files wait. It is bounded in bytes:
when a new file would exceed the bound, the oldest files are deleted, counted and logged
(rate-limited). A file deleted by the bound while it is in flight (sent, not yet acknowledged) is
not yet a loss: it counts as shipped if its acknowledgement still comes, as dropped if not (`lost`).

A batch file (`<time>.batch`) holds many summaries in one file: what a stop writes when there is
no time for a file each. It is not shipped; the shipper unpacks it into one-summary files (at the
stop while time remains, else at the next start), skipping summaries already in the spool.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_ttt.atomic import atomic_write, fsync_dir
from edge_ttt.logs import RateLimitedLog

log = logging.getLogger(__name__)

SUFFIX = ".parquet"
_NAME = re.compile(r"^(\d{20})-([0-9A-Za-z_-]+)\.parquet$")
ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # a summary id: usable in a file name
BATCH_SUFFIX = ".batch"


@dataclass
class SpoolCounters:
    written: int = 0
    shipped: int = 0  # acknowledged by the fleet (stored there), then deleted here
    dropped: int = 0  # deleted unshipped because the spool was full, or never written (a full disk)
    dropped_bytes: int = 0
    refused: int = 0  # sends the broker refused (PUBACK with a failure reason code); the file stays
    resent: int = 0  # sends again after an acknowledgement timeout or a reconnect


def summary_id_of(path: Path) -> str:
    """The summary id in a spool file's name."""
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a spool file name")
    return match.group(2)


class Spool:
    def __init__(self, directory: str | Path, max_bytes: int, log_every_s: float = 60.0) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.counters = SpoolCounters()
        self._lock = threading.Lock()
        self._sending: set[str] = set()  # names of files in flight
        self._orphans: dict[str, int] = {}  # summary id -> size: deleted by the bound while in flight
        self._warn = RateLimitedLog(log, log_every_s)
        for stale in self.dir.glob(".*.tmp"):  # a write that a crash interrupted
            stale.unlink(missing_ok=True)
        found = sorted(p for p in self.dir.iterdir() if _NAME.match(p.name))
        self._files: dict[str, int] = {p.name: p.stat().st_size for p in found}  # oldest first
        self._by_id: dict[str, str] = {summary_id_of(p): p.name for p in found}
        self._bytes = sum(self._files.values())
        self._last_ns = max((int(name[:20]) for name in self._files), default=0)

    def pending(self) -> list[Path]:
        """Complete files, oldest first."""
        with self._lock:
            return [self.dir / name for name in self._files]

    def size(self) -> int:
        return self._bytes

    def put(self, summary_id: str, data: bytes) -> Path:
        """Write one file atomically, then delete the oldest files while over the bound."""
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)  # strictly increasing names
            path = self.dir / f"{self._last_ns:020d}-{summary_id}{SUFFIX}"
            if not _NAME.match(path.name):
                raise ValueError(f"summary id {summary_id!r} is not usable in a file name")
            atomic_write(path, lambda f: f.write(data))
            self.counters.written += 1
            self._files[path.name] = len(data)
            self._bytes += len(data)
            self._by_id[summary_id] = path.name
            self._enforce_bound()
            return path

    def has(self, summary_id: str) -> bool:
        with self._lock:
            return summary_id in self._by_id

    def put_batch(self, data: bytes) -> Path:
        """Write a file of many summaries atomically (see the module's docstring)."""
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            return atomic_write(self.dir / f"{self._last_ns:020d}{BATCH_SUFFIX}", lambda f: f.write(data))

    def batches(self) -> list[Path]:
        """Batch files, oldest first."""
        return sorted(self.dir.glob(f"*{BATCH_SUFFIX}"))

    def rewrite_batch(self, path: Path, data: bytes | None) -> None:
        """Replace a batch file by what is left of it (atomically), or delete it (None)."""
        with self._lock:
            if data is None:
                path.unlink(missing_ok=True)
                fsync_dir(self.dir)
            else:
                atomic_write(path, lambda f: f.write(data))

    def _forget(self, name: str) -> int:
        """Take a file out of the index; its size."""
        size = self._files.pop(name)
        self._bytes -= size
        summary_id = summary_id_of(Path(name))
        if self._by_id.get(summary_id) == name:
            del self._by_id[summary_id]
        return size

    def _enforce_bound(self) -> None:
        while self._bytes > self.max_bytes and self._files:
            name = next(iter(self._files))
            (self.dir / name).unlink(missing_ok=True)
            size = self._forget(name)
            if name in self._sending:
                self._sending.discard(name)
                self._orphans[summary_id_of(Path(name))] = size
            else:
                self._count_drop(size)

    def count_dropped(self, summaries: int) -> None:
        """Count summaries lost before they were written here (their bytes are unknown)."""
        with self._lock:
            self.counters.dropped += summaries

    def _count_drop(self, size: int) -> None:
        self.counters.dropped += 1
        self.counters.dropped_bytes += size
        self._warn.warning(
            "spool_full",
            "drift spool over its bound: oldest summaries deleted unshipped",
            fields={"dropped": self.counters.dropped, "max_bytes": self.max_bytes},
        )

    def sending(self, path: Path, in_flight: bool) -> None:
        """Mark a file as sent and awaiting its acknowledgement (or no longer so)."""
        with self._lock:
            (self._sending.add if in_flight else self._sending.discard)(path.name)

    def acknowledged(self, summary_id: str) -> bool:
        """The fleet has stored this summary: its file leaves the spool. False when it is not ours."""
        if not ID.match(summary_id):
            return False
        with self._lock:
            if self._orphans.pop(summary_id, None) is not None:
                self.counters.shipped += 1  # delivered after all, though the bound deleted it
                return True
            name = self._by_id.get(summary_id)
            if name is None:
                return False
            (self.dir / name).unlink(missing_ok=True)
            self._forget(name)
            self._sending.discard(name)
            self.counters.shipped += 1
            fsync_dir(self.dir)
            return True

    def set_aside(self, path: Path, suffix: str) -> None:
        """Take a file that can never be shipped out of the spool (and its index, so that
        `pending()` and a stop's drain do not wait for it): renamed to `suffix`, kept for a person
        and never retried, also after a restart (the new name is not a spool file's)."""
        with self._lock:
            if path.name in self._files:
                self._forget(path.name)
            self._sending.discard(path.name)
            try:
                path.rename(path.with_suffix(suffix))
            except FileNotFoundError:  # deleted by the bound meanwhile
                return
            fsync_dir(self.dir)

    def lost(self, summary_id: str) -> None:
        """A file the bound deleted in flight was never acknowledged: now it counts as dropped."""
        with self._lock:
            size = self._orphans.pop(summary_id, None)
            if size is not None:
                self._count_drop(size)
