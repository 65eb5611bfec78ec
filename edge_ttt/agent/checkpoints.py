"""Adapted state on disk, one file per (device, stream), so that a restarted agent goes on adapting
from where it was instead of from the source model.

Writing a state file costs two fsyncs; done on the worker, a round of checkpoints over many
streams stalls every prediction behind it. So the worker only copies a stream's state arrays
(`Engine.snapshot`, microseconds) and hands them to `CheckpointWriter`, whose own thread writes
them atomically: at most one pending snapshot per file (a newer one replaces it) and a single
writer, so a file is never written twice at once; the pending snapshots are bounded in number.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from edge_ttt.adapt.engine import Engine, StateError
from edge_ttt.adapt.snapshot import load_state, save_state
from edge_ttt.agent.background import BackgroundWriter
from edge_ttt.config_file import Section, WritableDir

log = logging.getLogger(__package__)

Snapshot = tuple[dict[str, np.ndarray], dict[str, Any]]  # (arrays, metadata), as Engine.snapshot


class StateSection(Section):
    dir: WritableDir = Field(Path("state"), validate_default=True)
    checkpoint_interval_s: float = Field(300.0, gt=0)
    max_streams: int = Field(1000, ge=1, description="live streams; the least recently used is evicted")
    max_files: int = Field(10_000, ge=1, description="state files kept; the least recently written go")
    stop_timeout_s: float = Field(5.0, ge=0, description="time a stop may spend writing states, summaries")


PLAIN_ID = re.compile(r"[A-Za-z0-9.-]+(?:_[A-Za-z0-9.-]+)*")  # no '__', no '_' at either end
PLAIN_NAME_MAX = 120  # characters of a plain file name; the temporary file adds about 15


def state_path(state_dir: Path, device: str, stream: str) -> Path:
    """The stream's file, one per (device, stream) and never shared: `<device>__<stream>.npz` where
    both ids are plain (letters, digits, '.', '-' and single inner '_': the name reads back into
    the pair), else a readable, shortened form and a hash of the exact pair after a '~' (which no
    plain name holds). Ids are whatever a topic level holds: 'node:1' and 'node/1'-like variants,
    non-Latin scripts or ids longer than a file name may be, each keeps a file of its own.

    >>> state_path(Path("s"), "watch-06", "imu").name
    'watch-06__imu.npz'
    >>> state_path(Path("s"), "node 1", "imu").name == state_path(Path("s"), "node:1", "imu").name
    False
    """
    name = f"{device}__{stream}"
    if PLAIN_ID.fullmatch(device) and PLAIN_ID.fullmatch(stream) and len(name) + 4 <= PLAIN_NAME_MAX:
        return Path(state_dir) / f"{name}.npz"
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]
    digest = hashlib.sha256(f"{device}\0{stream}".encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return Path(state_dir) / f"{readable}~{digest}.npz"


def _is_state_file(name: str) -> bool:
    """A name `state_path` gives (other .npz files in the directory are not the agent's to prune).

    >>> [_is_state_file(n) for n in ("dev-a__0.npz", "node_1__0~1cc44d0caa0099e3444b.npz", "data.npz")]
    [True, True, False]
    """
    return name.endswith(".npz") and ("__" in name or "~" in name)


def stamped(snapshot: Snapshot, device: str, stream: str) -> Snapshot:
    """The snapshot with its (device, stream) in the metadata, which `restore` checks."""
    arrays, meta = snapshot
    return arrays, {**meta, "device": device, "stream": stream}


def restore(
    engine: Engine, state_dir: Path, device: str, stream: str, pending: Snapshot | None = None
) -> bool:
    """Load the stream's saved state into `engine`; whether there was one that fits. `pending`: a
    snapshot not written yet (`CheckpointWriter.take`), newer than the file.

    A state that does not fit (another model, a corrupt file, another stream's: a file copied or
    renamed by hand) is skipped: starting from source beats not starting."""
    path = state_path(state_dir, device, stream)
    if pending is None and not path.is_file():
        return False
    try:
        arrays, meta = load_state(path) if pending is None else pending
        source = f"state file {path}" if pending is None else f"the pending state of {path.name}"
        owner = (meta.get("device", device), meta.get("stream", stream))  # older files name none
        if owner != (device, stream):
            raise StateError(f"{source} belongs to device {owner[0]!r}, stream {owner[1]!r}")
        engine.restore_snapshot(arrays, meta, source=source)
    except StateError as exc:
        log.warning("state not restored, starting from source", extra={"fields": {"error": str(exc)}})
        return False
    log.info("adapted state restored", extra={"fields": {"device": device, "stream": stream}})
    return True


class CheckpointWriter(BackgroundWriter):
    """Writes snapshots to their files on a thread of its own, oldest submission first.

    The state directory holds at most `max_files` state files: device ids come and go (a fleet
    renamed, ids that carry a boot count, a flood of made-up ones), and a file per id ever seen
    would fill the disk in the end. Beyond the bound, the files written least recently go (those
    of devices gone longest; such a device starts from source if it comes back), counted in
    `pruned`. Temporary files that a killed agent left are removed at the start (the directory
    is this process's: `dirlock`)."""

    thread_name = "checkpoint-writer"

    def __init__(self, state_dir: Path, max_files: int, max_pending: int = 256) -> None:
        self.max_files, self.pruned = max_files, 0
        for temporary in Path(state_dir).glob(".*.npz.*.tmp"):  # `atomic_write`'s: .<name>.<random>.tmp
            target = temporary.name[1:].rsplit(".", 2)[0]
            if _is_state_file(target):
                temporary.unlink(missing_ok=True)
        found = [p for p in Path(state_dir).glob("*.npz") if _is_state_file(p.name)]
        found.sort(key=lambda p: p.stat().st_mtime_ns)
        self._files: OrderedDict[Path, None] = OrderedDict.fromkeys(found)  # oldest written first
        super().__init__(max_pending)

    def has_room(self) -> bool:
        with self._changed:
            return len(self._pending) < self.max_pending

    def submit(self, path: Path, snapshot: Snapshot, timeout: float | None = None) -> bool:
        """Queue `snapshot` for `path` (replacing a pending one); waits while `max_pending` others
        are pending (at most `timeout` s): memory stays bounded. Whether it was queued."""
        return self._queue(path, snapshot, timeout)

    def take(self, path: Path) -> Snapshot | None:
        """The pending snapshot of `path`, no longer to be written (a returning stream goes on from
        it); None when there is none, once a write of `path` in progress is done."""
        with self._changed:
            self._changed.wait_for(lambda: self._current != path)
            return self._pending.pop(path, None)

    def _write(self, path: Path, snapshot: Snapshot) -> None:
        save_state(path, *snapshot)
        self._files.pop(path, None)
        self._files[path] = None
        while len(self._files) > self.max_files:
            oldest, _ = self._files.popitem(last=False)
            oldest.unlink(missing_ok=True)
            self.pruned += 1
            fields = {"file": oldest.name, "pruned": self.pruned, "max_files": self.max_files}
            self._warn.warning(
                "pruned", "state file of the least recently written stream removed", fields=fields
            )

    def _failure(self, path: Path, snapshot: Snapshot, exc: OSError) -> tuple[str, str, dict[str, Any]]:
        return "checkpoint", "state checkpoint failed", {"file": path.name, "error": str(exc)}
