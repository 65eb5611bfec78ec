"""Adapted state on disk, one file per (device, stream), so that a restarted agent goes on adapting
from where it was instead of from the source model."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from edge_ttt.adapt.engine import Engine, StateError
from edge_ttt.config_file import ConfigPath, Section

log = logging.getLogger(__package__)


class StateSection(Section):
    dir: ConfigPath = Field(Path("state"), validate_default=True)
    checkpoint_interval_s: float = Field(300.0, gt=0)


def state_path(state_dir: Path, device: str, stream: str) -> Path:
    """The stream's file: device and stream ids made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{device}__{stream}")
    return Path(state_dir) / f"{safe}.npz"


def restore(engine: Engine, state_dir: Path, device: str, stream: str) -> bool:
    """Load the stream's saved state into `engine`; whether there was one that fits.

    A state that does not fit (another model, a corrupt file) is skipped: starting from source
    beats not starting."""
    path = state_path(state_dir, device, stream)
    if not path.is_file():
        return False
    try:
        engine.load_state(path)
    except StateError as exc:
        log.warning("state not restored, starting from source", extra={"fields": {"error": str(exc)}})
        return False
    log.info("adapted state restored", extra={"fields": {"device": device, "stream": stream}})
    return True


def save(state_dir: Path, streams: Iterable[tuple[str, str, Engine]]) -> None:
    """Save every (device, stream, engine)'s adapted state (atomic per file)."""
    for device, stream, engine in streams:
        engine.save_state(state_path(state_dir, device, stream))
