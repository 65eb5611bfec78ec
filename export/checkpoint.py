"""The source-model checkpoint (`model.pt`): weights plus everything export needs to build a bundle.

A plain dict of tensors, numbers, strings and lists, loaded with `weights_only=True` so that
opening a checkpoint never runs code from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.models import build_model

CHECKPOINT_FORMAT = "edge-ttt-checkpoint/1"


@dataclass(frozen=True)
class SourceModel:
    """A trained reference model and the facts about its source data."""

    model: nn.Module
    name: str
    channels: list[str]
    classes: list[str]
    window: int
    hop: int
    sample_rate_hz: float
    reference: dict[str, Any]
    norm_source: dict[str, tuple[list[float], list[float]]]
    report: dict[str, Any]


def save_checkpoint(path: Path, src: SourceModel) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "name": src.name,
        "state_dict": src.model.state_dict(),
        "channels": src.channels,
        "classes": src.classes,
        "window": src.window,
        "hop": src.hop,
        "sample_rate_hz": src.sample_rate_hz,
        "reference": src.reference,
        "norm_source": {k: [list(m), list(v)] for k, (m, v) in src.norm_source.items()},
        "report": src.report,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> SourceModel:
    """Load and rebuild the model; a file that is not our checkpoint fails with one line.

    torch's own reasons (an unpickling error and its advice to load untrusted code, or a bare
    KeyError) say nothing useful to someone who passed the wrong file, so they are not repeated.
    """
    path = Path(path)
    fix = "Fix: pass the model.pt that `edge-ttt train` wrote"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist. {fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not an edge-ttt checkpoint (torch cannot load it as plain weights: "
            f"{type(exc).__name__}). {fix}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an edge-ttt checkpoint (expected format {CHECKPOINT_FORMAT}). {fix}")
    model = build_model(payload["name"], len(payload["channels"]), len(payload["classes"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return SourceModel(
        model=model,
        name=payload["name"],
        channels=list(payload["channels"]),
        classes=list(payload["classes"]),
        window=int(payload["window"]),
        hop=int(payload["hop"]),
        sample_rate_hz=float(payload["sample_rate_hz"]),
        reference=payload["reference"],
        norm_source={k: (list(m), list(v)) for k, (m, v) in payload["norm_source"].items()},
        report=payload["report"],
    )
