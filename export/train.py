"""Train a reference model on a labeled recorded log (the source domain).

Validation holds out whole devices (subjects, in the smartwatch data), because the question a
source model must answer is how it does on a wearer it has not seen. With a single device the
last fifth of its windows in time is held out instead.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from edge_ttt.adapt.mounting import posture_reference
from edge_ttt.adapt.transforms import TRANSFORMS, transform_each, transformed_copies, triads
from edge_ttt.recordlog import RecordedLog, read_log
from edge_ttt.steadiness import stay_rates
from edge_ttt.stream.window import WindowBatch, windows_from_log
from export.checkpoint import SourceModel, load_checkpoint, save_checkpoint
from export.models import build_model
from export.norm_moments import class_norm_moments, norm_source_moments
from export.reference import channel_reference, class_channels, entropy_quantiles, held_out_limits

log = logging.getLogger(__name__)


# What `train` writes into a checkpoint's `reference` (the manifest's); a cached checkpoint without
# one of them predates it (the demo trains such a one again).
REFERENCE_KEYS = (
    "channels",
    "entropy",
    "samples",
    "val_windows",
    "val_accuracy",
    "class_prior",
    "class_channels",
    "mounting",
    "drift_limits",
    "class_norms",
    "stay",
)
# And the keys added within one of them since, dotted: a checkpoint without one predates it too.
REFERENCE_PATHS = (*REFERENCE_KEYS, "class_channels.noise_share")


def missing_reference(checkpoint: Path) -> list[str]:
    """What this version's training writes into the reference and a cached checkpoint lacks (one
    from an older version: its bundle would run without, e.g., the calibrated drift limits); a file
    that is no checkpoint lacks all of it."""
    try:
        reference = load_checkpoint(checkpoint).reference
    except (ValueError, FileNotFoundError):
        return list(REFERENCE_PATHS)
    return [key for key in REFERENCE_PATHS if not _holds(reference, key.split("."))]


def _holds(reference: dict, path: list[str]) -> bool:
    """Whether the nested dict holds the dotted key's parts, one within another."""
    head, *rest = path
    return head in reference and (not rest or _holds(reference[head] or {}, rest))


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn-bn"
    window: int = 128
    hop: int = 64
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.2
    aux_weight: float = 1.0  # models with an auxiliary head: loss = CE(classes) + aux_weight * CE(aux)


@dataclass(frozen=True)
class Split:
    train: WindowBatch
    val: WindowBatch
    train_devices: list[str]
    val_devices: list[str]
    train_ids: np.ndarray  # the device of each training window
    val_ids: np.ndarray  # and of each held-out one


def split_by_device(log_: RecordedLog, cfg: TrainConfig) -> Split:
    """Labeled windows, split into training and held-out validation (see module docstring)."""
    batch, devices = windows_from_log(log_, cfg.window, cfg.hop)
    keep = batch.label >= 0
    batch, devices = _take(batch, keep), devices[keep]
    if len(batch) == 0:
        raise ValueError("the log has no labeled windows: training needs a `label` column with values >= 0")
    names = sorted(set(devices.tolist()))
    if len(names) >= 2:
        rng = np.random.default_rng(cfg.seed)
        n_val = max(1, round(cfg.val_fraction * len(names)))
        val_devices = sorted(rng.permutation(names)[:n_val].tolist())
        is_val = np.isin(devices, val_devices)
    else:
        val_devices = names
        order = np.argsort(batch.t_end_ns, kind="stable")
        is_val = np.zeros(len(batch), dtype=bool)
        is_val[order[int(len(order) * (1 - cfg.val_fraction)) :]] = True
    train_devices = sorted(set(devices[~is_val].tolist()))
    train, val = _take(batch, ~is_val), _take(batch, is_val)
    return Split(train, val, train_devices, val_devices, devices[~is_val], devices[is_val])


def _take(batch: WindowBatch, mask: np.ndarray) -> WindowBatch:
    return WindowBatch(x=batch.x[mask], t_end_ns=batch.t_end_ns[mask], label=batch.label[mask])


def _standardization(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


@torch.no_grad()
def _logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def aux_loss(model: nn.Module, x: np.ndarray, channels: list[str], rng: np.random.Generator) -> torch.Tensor:
    """Cross-entropy of the auxiliary head on one randomly transformed copy of each window.

    The pass runs with the batch norms in eval mode, normalizing with the running statistics of
    clean windows, because that is what the device does with its transformed copies (the
    statistics it feeds describe the stream, not the copies); it also keeps the copies out of
    the running statistics that become the source statistics.
    """
    labels = rng.integers(len(TRANSFORMS), size=len(x))
    copies = torch.from_numpy(transform_each(x, labels, channels))
    model.eval()
    try:
        logits = model.aux_logits(copies)
    finally:
        model.train()
    return nn.functional.cross_entropy(logits, torch.from_numpy(labels))


@torch.no_grad()
def aux_accuracy(model: nn.Module, x: np.ndarray, channels: list[str]) -> float:
    """Share of every transformed copy of the windows whose transformation the head names."""
    model.eval()
    copies, labels = transformed_copies(x, channels)
    logits = torch.cat(
        [model.aux_logits(torch.from_numpy(c)) for c in np.array_split(copies, 1 + len(copies) // 512)]
    )
    return float((logits.argmax(1).numpy() == labels).mean())


def train(
    log_path: Path,
    out: Path,
    cfg: TrainConfig,
    show_progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> SourceModel:
    """Train, keep the epoch with the best held-out accuracy, and save the checkpoint. `say`, where
    the bar draws nothing (piped, logged), gets a line per epoch: no silent minute."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    src = read_log(log_path)
    if src.class_names is None:
        raise ValueError(
            f"{log_path}: training needs class names in the log metadata (edge_ttt.class_names). Fix: "
            "import the recording with `edge-ttt datasets import ... --label COLUMN --classes NAME,...`"
        )
    split = split_by_device(src, cfg)
    if len(split.train) == 0 or len(split.val) == 0:
        raise ValueError(f"{log_path}: too few labeled windows to hold out a validation set")
    train_values = src.values[np.isin(src.device_id, split.train_devices)]
    mean, std = _standardization(train_values)

    model = build_model(cfg.model, len(src.channels), len(src.class_names))
    model.standardize.mean.copy_(torch.from_numpy(mean))
    model.standardize.std.copy_(torch.from_numpy(std))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x_train = np.nan_to_num(split.train.x)
    y_train = torch.from_numpy(split.train.label.astype(np.int64))
    x_val = np.nan_to_num(split.val.x)
    has_aux = hasattr(model, "aux_head")
    best_acc, best_state = -1.0, None
    steps = (len(x_train) + cfg.batch_size - 1) // cfg.batch_size
    began = time.monotonic()
    with Progress(
        TextColumn("[bold]train {task.fields[model]}"),
        BarColumn(),
        TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}  val acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task(
            "train", total=cfg.epochs * steps, model=cfg.model, epoch=0, epochs=cfg.epochs, acc="-"
        )
        for epoch in range(cfg.epochs):
            model.train()
            order = rng.permutation(len(x_train))
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                if len(idx) < 2:
                    continue  # batch norm needs two windows
                loss = nn.functional.cross_entropy(model(torch.from_numpy(x_train[idx])), y_train[idx])
                if has_aux:
                    loss = loss + cfg.aux_weight * aux_loss(model, x_train[idx], list(src.channels), rng)
                opt.zero_grad()
                loss.backward()
                opt.step()
                progress.advance(task)
            acc = float((_logits(model, x_val).argmax(1) == split.val.label).mean())
            if acc > best_acc:
                best_acc, best_state = acc, copy.deepcopy(model.state_dict())
            progress.update(task, epoch=epoch + 1, acc=f"{acc:.3f}")
            if say is not None and not show_progress:
                took = time.monotonic() - began
                say(f"epoch {epoch + 1}/{cfg.epochs}: held-out accuracy {acc:.3f}, {took:.0f} s")
            log.info("epoch %d val_accuracy %.4f", epoch + 1, acc)
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    val_logits = _logits(model, x_val)
    aux_report = {"aux_val_accuracy": aux_accuracy(model, x_val, list(src.channels))} if has_aux else {}
    result = SourceModel(
        model=model,
        name=cfg.model,
        channels=list(src.channels),
        classes=list(src.class_names),
        window=cfg.window,
        hop=cfg.hop,
        sample_rate_hz=src.sample_rate_hz,
        reference={
            "channels": (channels := channel_reference(train_values, list(src.channels))),
            "entropy": entropy_quantiles(val_logits),
            "samples": len(train_values),
            "val_windows": len(x_val),
            "val_accuracy": best_acc,
            "class_prior": (
                np.bincount(split.train.label, minlength=len(src.class_names)) / len(split.train)
            ).tolist(),
            "class_channels": class_channels(
                x_train, split.train.label, len(src.class_names), split.train_ids
            ),
            "mounting": posture_reference(x_train, split.train.label, split.train_ids, triads(src.channels)),
            # Every source device, held-out ones included: the offsets must hold for new wearers.
            "class_norms": class_norm_moments(
                model,
                np.concatenate((x_train, x_val)),
                np.concatenate((split.train.label, split.val.label)),
                len(src.class_names),
            ),
            "drift_limits": held_out_limits(*windows_from_log(src, cfg.window, cfg.hop), channels),
            # Each held-out device's windows are in time order (`windows_from_log`, split keeps it).
            "stay": stay_rates(val_logits.argmax(axis=1), split.val_ids),
        },
        norm_source=norm_source_moments(model, x_val),
        report={
            "val_accuracy": best_acc,
            "train_windows": len(x_train),
            "val_windows": len(x_val),
            "train_devices": split.train_devices,
            "val_devices": split.val_devices,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "log": str(log_path),
            **aux_report,
        },
    )
    save_checkpoint(out, result)
    return result
