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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        meta = meta if isinstance(meta, dict) else {}
        raise StateError(f"state file {path} has format {meta.get('format')!r}, expected {FORMAT}")
    return arrays, meta


Layout = dict[str, tuple[tuple[int, ...], bool]]


def fresh_layout(arrays: dict[str, np.ndarray]) -> Layout:
    """Of an engine not yet run: each array's shape and whether it is all finite (NaN means "none
    yet" in some), leaving out the empty ones (histories, which may grow to any length)."""
    return {
        k: (v.shape, v.dtype.kind not in "fc" or bool(np.isfinite(v).all()))
        for k, v in arrays.items()
        if v.size
    }


def check_restored(
    fresh: Layout, restored: dict[str, np.ndarray], meta: dict[str, Any], counters: dict[str, int]
) -> dict[str, int]:
    """The engine counters (named in `counters`) that a restored state's metadata holds, as
    integers; ValueError (TypeError) when they are not, or when the engine's state after the restore
    holds what no state it saved can: a NaN or infinite value where a fresh engine holds finite
    ones (adapted parameters of NaN made every prediction NaN, published as valid), or an array
    shaped unlike the fresh engine's (a mounting matrix of another shape made every window of the
    stream fail)."""
    for key, value in restored.items():
        if key not in fresh:
            continue
        shape, finite = fresh[key]
        if value.shape != shape:
            raise ValueError(f"{key} has shape {value.shape}, this engine's is {shape}")
        if finite and value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise ValueError(f"{key} holds NaN or infinite values")
    return {k: int(v) for k, v in dict(meta.get("counters", {})).items() if k in counters}
