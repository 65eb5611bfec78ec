"""Replay a recorded log through the same windowing and engine as the live agent."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from edge_ttt.adapt.engine import DEFAULT_POLICY, Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import POLICY_TYPES, fits
from edge_ttt.artifacts import load_bundle
from edge_ttt.manifest import check_fits
from edge_ttt.metrics import accuracy, macro_f1
from edge_ttt.recordlog import RecordedLog, read_log
from edge_ttt.stream.window import WindowBatch, windows_from_log


class ReplayError(ValueError):
    """The log does not fit the model (channels, sample rate)."""


def check_compatible(log: RecordedLog, channels: list[str], sample_rate_hz: float, where: str) -> None:
    """Refuse a log whose channels or sample rate the model was not trained for (`check_fits`)."""
    misfit = check_fits(
        channels, sample_rate_hz, channels=list(log.channels), period_ns=1e9 / log.sample_rate_hz
    )
    if misfit == "channels":
        raise ReplayError(
            f"{where}: channels {list(log.channels)} do not match the model's {channels} "
            "(same names, same order)"
        )
    if misfit == "rate":
        raise ReplayError(
            f"{where}: sample rate {log.sample_rate_hz} Hz, the model expects {sample_rate_hz} Hz"
        )


def replay(
    artifacts: Path,
    log_path: Path,
    policies: Sequence[str] | None = (DEFAULT_POLICY,),
    batch_size: int = 1,
    device: str = "cpu",
    show_progress: bool = False,
    episodic: bool = False,
) -> list[dict[str, Any]]:
    """Run the log in time order once per policy; one summary (what `--json` prints) per policy.

    All devices' windows go through one engine in live-stream order (by window end time), as
    an agent serving every device of the log would see them. Each policy starts from source.
    `policies=None` means every policy the bundle can run (with `episodic`, every gradient one).
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    bundle = load_bundle(artifacts)
    info = bundle.manifest.model
    log = read_log(log_path)
    check_compatible(log, info.channels, info.sample_rate_hz, str(log_path))
    windows, _devices = windows_from_log(log, info.window, info.hop)
    if policies is None:
        policies = [
            name
            for name, policy in POLICY_TYPES.items()
            if fits(policy, bundle.manifest) and (policy.loss is not None or not episodic)
        ]
    options = {"episodic": True} if episodic else None
    return [
        _run(Engine(OrtModel(bundle, device=device), p, options), windows, batch_size, show_progress)
        for p in policies
    ]


def _run(engine: Engine, windows: WindowBatch, batch_size: int, show_progress: bool) -> dict[str, Any]:
    predicted = np.full(len(windows), -1, dtype=np.int64)
    start = time.perf_counter()
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"replay {engine.policy_name}", total=len(windows))
        for i in range(0, len(windows), batch_size):
            predicted[i : i + batch_size] = engine.process(windows.x[i : i + batch_size]).classes
            progress.advance(task, min(batch_size, len(windows) - i))
    elapsed = time.perf_counter() - start
    c = engine.counters
    return {
        "policy": engine.policy_name,
        "episodic": engine.episodic,
        "windows": len(windows),
        "accuracy": accuracy(windows.label, predicted),
        "macro_f1": macro_f1(windows.label, predicted, len(engine.model.manifest.model.classes)),
        **{k: v for k, v in c.as_dict().items() if k != "windows"},  # adapt_steps, skips, resets, ...
        "ms_per_window": 1000 * elapsed / max(len(windows), 1),
        "batch_size": batch_size,
        "bundle_sha256": engine.model.bundle_sha256,
    }
