"""The on-disk spool: summaries wait here until the broker has acknowledged them.

Files are written atomically (hidden temporary file, fsync, rename, fsync of the directory), so
a crash leaves either no file or a complete one; a leftover temporary file is removed on open.
Names start with a zero-padded nanosecond time, so name order is age order. The spool is bounded
in bytes: when a new file would exceed the bound, the oldest files are deleted and counted.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_ttt.atomic import atomic_write, fsync_dir

SUFFIX = ".parquet"
_NAME = re.compile(r"^(\d{20})-([0-9A-Za-z_-]+)\.parquet$")


@dataclass
class SpoolCounters:
    written: int = 0
    shipped: int = 0
    dropped: int = 0  # deleted unshipped because the spool was full
    dropped_bytes: int = 0


def summary_id_of(path: Path) -> str:
    """The summary id in a spool file's name."""
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a spool file name")
    return match.group(2)


class Spool:
    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.counters = SpoolCounters()
        self._lock = threading.Lock()
        self._last_ns = max((int(p.name[:20]) for p in self.pending()), default=0)
        for stale in self.dir.glob(".*.tmp"):  # a write that a crash interrupted
            stale.unlink(missing_ok=True)

    def pending(self) -> list[Path]:
        """Complete files, oldest first."""
        return sorted(p for p in self.dir.iterdir() if _NAME.match(p.name))

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.pending())

    def put(self, summary_id: str, data: bytes) -> Path:
        """Write one file atomically, then delete the oldest files while over the bound."""
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)  # strictly increasing names
            path = self.dir / f"{self._last_ns:020d}-{summary_id}{SUFFIX}"
            if not _NAME.match(path.name):
                raise ValueError(f"summary id {summary_id!r} is not usable in a file name")
            atomic_write(path, lambda f: f.write(data))
            self.counters.written += 1
            self._enforce_bound()
            return path

    def _enforce_bound(self) -> None:
        files = [(p, p.stat().st_size) for p in self.pending()]
        total = sum(size for _, size in files)
        for path, size in files:
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            self.counters.dropped += 1
            self.counters.dropped_bytes += size

    def remove(self, path: Path) -> None:
        """The broker has the file: it leaves the spool."""
        with self._lock:
            if path.exists():
                path.unlink()
                self.counters.shipped += 1
                fsync_dir(self.dir)
