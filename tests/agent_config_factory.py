"""Agent configs for the config tests: the required sections, a file writer, and the refusal a load gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_ttt.agent.config import load_config
from edge_ttt.config_file import ConfigError

AGENT = '[agent]\nid = "a"\n'
MODEL = '[model]\nartifacts = "bundle"\n'
BASE = AGENT + MODEL


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems(path: Path, **kwargs) -> str:
    """The ConfigError message; every line must name the file first."""
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    message = str(info.value)
    assert all(line.startswith(f"{path}: ") for line in message.splitlines()), message
    return message
