"""The adapted state on disk: one .npz of arrays plus JSON metadata, written atomically.

A device that restarts picks up where it left off instead of re-adapting from source; the
metadata ties the state to the bundle it was adapted on, so it is never restored onto another.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_ttt.atomic import atomic_write

FORMAT = "edge-ttt-state/1"
_META = "__meta__"


class StateError(RuntimeError):
    """A state file is unreadable, of another format, or belongs to another bundle or policy."""


def save_state(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Temporary file, fsync, rename: a crash leaves the old state or the new one, never a mix."""
    blob = np.frombuffer(json.dumps({"format": FORMAT, **meta}).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **{_META: blob}, **arrays))


def load_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise StateError(f"state file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        # numpy reads a file that is no archive as a pickle and advises loading it unsafely: not for a state
        why = "not an .npz archive of arrays" if "pickle" in str(exc) else str(exc)
        raise StateError(f"state file {path} cannot be read ({why}); delete it to start from source") from exc
    try:
        meta = json.loads(arrays.pop(_META).tobytes())
    except (KeyError, ValueError) as exc:
        raise StateError(f"state file {path} has no readable metadata; delete it to start over") from exc
    if meta.get("format") != FORMAT:
        raise StateError(f"state file {path} has format {meta.get('format')!r}, expected {FORMAT}")
    return arrays, meta
