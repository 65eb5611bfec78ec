"""Adapted state on disk, one file per (device, stream), so that a restarted agent goes on adapting
from where it was instead of from the source model.

Writing a state file costs two fsyncs; done on the worker, a round of checkpoints over many
streams stalls every prediction behind it. So the worker only copies a stream's state arrays
(`Engine.snapshot`, microseconds) and hands them to `CheckpointWriter`, whose own thread writes
them atomically: at most one pending snapshot per file (a newer one replaces it) and a single
writer, so a file is never written twice at once; the pending snapshots are bounded in number.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from edge_ttt.adapt.engine import Engine, StateError
from edge_ttt.adapt.snapshot import save_state
from edge_ttt.config_file import ConfigPath, Section
from edge_ttt.logs import RateLimitedLog

log = logging.getLogger(__package__)

Snapshot = tuple[dict[str, np.ndarray], dict[str, Any]]  # (arrays, metadata), as Engine.snapshot


class StateSection(Section):
    dir: ConfigPath = Field(Path("state"), validate_default=True)
    checkpoint_interval_s: float = Field(300.0, gt=0)
    max_streams: int = Field(1000, ge=1, description="live streams; the least recently used is evicted")
    stop_timeout_s: float = Field(5.0, ge=0, description="time a stop may spend writing states, summaries")


def state_path(state_dir: Path, device: str, stream: str) -> Path:
    """The stream's file: device and stream ids made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{device}__{stream}")
    return Path(state_dir) / f"{safe}.npz"


def restore(
    engine: Engine, state_dir: Path, device: str, stream: str, pending: Snapshot | None = None
) -> bool:
    """Load the stream's saved state into `engine`; whether there was one that fits. `pending`: a
    snapshot not written yet (`CheckpointWriter.take`), newer than the file.

    A state that does not fit (another model, a corrupt file) is skipped: starting from source
    beats not starting."""
    path = state_path(state_dir, device, stream)
    if pending is None and not path.is_file():
        return False
    try:
        if pending is None:
            engine.load_state(path)
        else:
            engine.restore_snapshot(*pending, source=f"the pending state of {path.name}")
    except StateError as exc:
        log.warning("state not restored, starting from source", extra={"fields": {"error": str(exc)}})
        return False
    log.info("adapted state restored", extra={"fields": {"device": device, "stream": stream}})
    return True


class CheckpointWriter:
    """Writes snapshots to their files on a thread of its own, oldest submission first."""

    def __init__(self, max_pending: int = 256) -> None:
        self.max_pending = max_pending
        self.written = 0
        self.failed = 0
        self._pending: OrderedDict[Path, Snapshot] = OrderedDict()
        self._writing: Path | None = None
        self._closing = False
        self._changed = threading.Condition()
        self._warn = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def has_room(self) -> bool:
        with self._changed:
            return len(self._pending) < self.max_pending

    def pending(self) -> int:
        with self._changed:
            return len(self._pending) + (self._writing is not None)

    def submit(self, path: Path, snapshot: Snapshot, timeout: float | None = None) -> bool:
        """Queue `snapshot` for `path` (replacing a pending one); waits while `max_pending` others
        are pending (at most `timeout` s): memory stays bounded. Whether it was queued."""
        with self._changed:
            has_room = lambda: path in self._pending or len(self._pending) < self.max_pending  # noqa: E731
            if not self._changed.wait_for(has_room, timeout):
                return False
            self._pending[path] = snapshot
            self._changed.notify_all()
            return True

    def take(self, path: Path) -> Snapshot | None:
        """The pending snapshot of `path`, no longer to be written (a returning stream goes on from
        it); None when there is none, once a write of `path` in progress is done."""
        with self._changed:
            self._changed.wait_for(lambda: self._writing != path)
            return self._pending.pop(path, None)

    def close(self, timeout: float) -> int:
        """Write what is pending for at most `timeout` s, then stop; how many snapshots were left."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._changed.wait_for(lambda: not self._pending and self._writing is None, timeout)
            self._closing = True
            left = len(self._pending)
            self._pending.clear()
            self._changed.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return left

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closing)
                if self._closing:
                    return
                path, snapshot = self._pending.popitem(last=False)
                self._writing = path
                self._changed.notify_all()
            try:
                save_state(path, *snapshot)
                self.written += 1
            except OSError as exc:  # a full or failing disk must not end checkpointing
                self.failed += 1
                fields = {"file": path.name, "error": str(exc)}
                self._warn.warning("checkpoint", "state checkpoint failed", fields=fields)
            finally:
                with self._changed:
                    self._writing = None
                    self._changed.notify_all()
