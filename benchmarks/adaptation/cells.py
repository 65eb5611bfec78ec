"""A cell of the adaptation benchmark: one policy on one corrupted stream, replayed as a device
would see it, and the workers that run cells side by side."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.adaptation.paced import replay_paced
from benchmarks.torch_tent import tent_predictions
from edge_ttt.adapt.engine import (
    AUTO_INPUTS,
    AUTO_RUNS,
    DEFAULT_POLICY,
    POLICIES,
    AutoInputs,
    AutoRuns,
    Engine,
)
from edge_ttt.adapt.estimates import class_prior, device_estimates, stream_estimate
from edge_ttt.adapt.fallback import FallbackOptions
from edge_ttt.adapt.fallback_setup import AUTO_FALLBACK, AutoFallback
from edge_ttt.adapt.input_alignment import InputOptions
from edge_ttt.adapt.label_runs import RunOptions
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import POLICY_TYPES, fits
from edge_ttt.artifacts import Bundle, load_bundle
from edge_ttt.metrics import accuracy
from edge_ttt.recordlog import RecordedLog
from edge_ttt.replay import check_compatible
from edge_ttt.stream.window import WindowBatch, windows_from_log
from export.checkpoint import load_checkpoint
from firmware_sim.corruptions import corrupt_log
from firmware_sim.datasets.watch import watch_logs

ORDERS = ("recorded", "shuffled", "class-sorted")
TORCH_TENT = "torch-tent"
TORCH_TENT_LR = 1e-3


@dataclass(frozen=True)
class Variant:
    """How a column runs: the engine's policy, its options, its fallback to source, its input
    alignment and its label-run switch (None: off; by default each as the engine runs it)."""

    policy: str
    options: dict[str, Any] = field(default_factory=dict)
    fallback: FallbackOptions | AutoFallback | None = AUTO_FALLBACK  # as the engine runs by default
    inputs: InputOptions | AutoInputs | None = AUTO_INPUTS  # as the engine runs by default
    runs: RunOptions | AutoRuns | None = AUTO_RUNS  # as the engine runs by default

    def engine(self, model: OrtModel) -> Engine:
        """A fresh engine on `model` that runs this column."""
        how = {"fallback": self.fallback, "inputs": self.inputs, "runs": self.runs}
        return Engine(model, self.policy, self.options, **how)


NO_FALLBACK_COLUMN = f"{DEFAULT_POLICY}-no-fallback"
INPUT_COLUMN = "input"  # input alignment alone, ahead of the source model
DEFAULT_INPUT_COLUMN = f"{DEFAULT_POLICY}+input"
UNALIGNED_COLUMN = f"{DEFAULT_POLICY}-unaligned"
RUNS_COLUMN = f"{DEFAULT_POLICY}-runs"
INSTANCE_COLUMN = f"{DEFAULT_POLICY}-instance"
BLEND_COLUMN = f"{DEFAULT_POLICY}-instance-blend"
RUN_BLEND_COLUMN = f"{DEFAULT_POLICY}-blend"
NO_RUNS_COLUMN = f"{DEFAULT_POLICY}-no-runs"
NO_DENOISE_COLUMN = f"{DEFAULT_POLICY}-no-denoise"
# Columns that are not a policy as the engine runs it by default: name -> Variant.
VARIANTS = {
    "ttt-episodic": Variant("ttt", {"episodic": True}),
    # The default policy without its fallback to source (docs/adaptation.md), as it ran before 2026-12-06.
    NO_FALLBACK_COLUMN: Variant(DEFAULT_POLICY, fallback=None),
    # Input alignment (docs/adaptation.md), alone and ahead of the default policy.
    INPUT_COLUMN: Variant("source", inputs=InputOptions()),
    DEFAULT_INPUT_COLUMN: Variant(DEFAULT_POLICY, inputs=InputOptions()),
    # The default policy as it ran before input alignment: what the default is judged against.
    UNALIGNED_COLUMN: Variant(DEFAULT_POLICY, inputs=None),
    # The default policy with the opt-in label-run switch (docs/adaptation.md).
    RUNS_COLUMN: Variant(DEFAULT_POLICY, runs=RunOptions(horizon=64.0, serve="source", instance_offsets=0.0)),
    # The default policy with the opt-in instance offsets of the first batch norm (docs/adaptation.md).
    INSTANCE_COLUMN: Variant(DEFAULT_POLICY, {"instance_offsets": 4.0}),
    # Both, with label runs that serve the blend of the source model and the held policy, over
    # the longer horizon that leaves a device's few-minute activities to `steady` (docs/adaptation.md).
    BLEND_COLUMN: Variant(
        DEFAULT_POLICY,
        {"instance_offsets": 4.0},
        runs=RunOptions(horizon=128.0, serve="blend", instance_offsets=0.0),
    ),
    # Those label runs alone, the instance offsets only in a run, for both models that blend:
    # the default since 2026-12-06 (benchmarks/results/runs_follow/ has it under this name).
    RUN_BLEND_COLUMN: Variant(
        DEFAULT_POLICY, runs=RunOptions(horizon=128.0, serve="blend", instance_offsets=4.0)
    ),
    # The default policy without label runs, as it ran before 2026-12-06.
    NO_RUNS_COLUMN: Variant(DEFAULT_POLICY, runs=None),
    # The default policy without the white-noise smoothing ahead of it (docs/adaptation.md).
    NO_DENOISE_COLUMN: Variant(DEFAULT_POLICY, inputs=AutoInputs(InputOptions(denoise=False))),
}
COLUMNS = (*POLICIES, *VARIANTS)


def variant(column: str) -> Variant:
    """A column's engine settings: a variant's own, else the policy as the engine runs it by
    default, as the agent and replay do."""
    return VARIANTS.get(column, Variant(column))


@dataclass(frozen=True)
class ModelPaths:
    """Where a trained model lives: its bundle (for the engine) and checkpoint (for the torch Tent)."""

    bundle: Path
    checkpoint: Path


@dataclass(frozen=True)
class Cell:
    """One measurement: a policy (or TORCH_TENT) on one stream."""

    model: str
    corruption: str
    severity: int
    order: str
    batch_size: int
    policy: str
    seed: int


def result_key(r: dict) -> tuple[str, str, str, int, str]:
    """A result's cell as the tables and targets look it up: (model, corruption, order, batch
    size, policy); the severity and seed are the run's."""
    return (r["model"], r["corruption"], r["order"], r["batch_size"], r["policy"])


def stream_order(
    devices: np.ndarray, t_end_ns: np.ndarray, labels: np.ndarray, order: str, seed: int
) -> np.ndarray:
    """Window indices in stream order.

    `recorded`: device after device (sorted by id), each device's windows in time order, so
    labels arrive in runs as they were recorded. `shuffled`: a permutation drawn from `seed`.
    `class-sorted`: every window of one class before the next class (recorded order within a
    class): one activity for minutes on end, the stream on which published methods collapse.
    """
    if order == "recorded":
        return np.lexsort((t_end_ns, devices))
    if order == "class-sorted":
        return np.lexsort((t_end_ns, devices, labels))
    if order == "shuffled":
        return np.random.default_rng(seed).permutation(len(devices))
    raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")


def device_streams(
    devices: np.ndarray, t_end_ns: np.ndarray, labels: np.ndarray, order: str
) -> list[np.ndarray]:
    """One stream per device (sorted by id), as the agent adapts one engine per device: each the
    device's window indices in `order` (`recorded` or `class-sorted`, `stream_order`)."""
    streams = []
    for device in np.unique(devices):
        idx = np.flatnonzero(devices == device)
        streams.append(idx[stream_order(devices[idx], t_end_ns[idx], labels[idx], order, 0)])
    return streams


def make_stream(log: RecordedLog, cell: Cell, window: int, hop: int) -> tuple[WindowBatch, np.ndarray]:
    """The cell's shifted windows in the cell's order, and each window's device id."""
    # One fault for the whole fleet: a shuffled stream mixes devices, and a per-device fault (each
    # its own bias signs, rotation axis) would then be no single shift that any policy could undo.
    corrupted = corrupt_log(log, cell.corruption, cell.severity, cell.seed, same_for_all_devices=True)
    batch, devices = windows_from_log(corrupted, window, hop)
    idx = stream_order(devices, batch.t_end_ns, batch.label, cell.order, cell.seed)
    return WindowBatch(x=batch.x[idx], t_end_ns=batch.t_end_ns[idx], label=batch.label[idx]), devices[idx]


def per_device(
    devices: np.ndarray, labels: np.ndarray, classes: np.ndarray, estimated: dict, source: dict
) -> list[dict]:
    """Per device: windows, true accuracy of the served predictions and both label-free estimates."""
    return [
        {
            "device": str(device),
            "windows": int((devices == device).sum()),
            "accuracy": accuracy(labels[devices == device], classes[devices == device]),
            "estimated_accuracy": estimated[device][1],
            "source_estimated_accuracy": source[device][1],
        }
        for device in sorted(estimated)
    ]


def run_cell(cell: Cell, paths: ModelPaths, log: RecordedLog, rate_hz: float | None = None) -> dict:
    """Replay the cell's stream through a fresh engine (or the torch Tent): accuracy, the label-free
    estimates (the torch Tent has no source one), per device and in total, counters, timing.

    With `rate_hz` (the sensor's sample rate) the stream is paced (`paced`): windows arrive one
    hop apart at that rate and do not wait for the policy; the result then has a `paced` entry."""
    bundle = load_bundle(paths.bundle)
    info = bundle.manifest.model
    check_compatible(log, info.channels, info.sample_rate_hz, "target log")
    stream, devices = make_stream(log, cell, info.window, info.hop)
    served = np.full(len(stream), -1, np.int64)
    source = np.full(len(stream), -1, np.int64)  # the source model's classes, where it ran
    counters = paced = None
    if cell.policy == TORCH_TENT:
        if rate_hz is not None:
            raise ValueError(f"{TORCH_TENT} has no predict-only path: it cannot be paced")
        torch.set_num_threads(1)  # a cell is single-threaded whoever runs it (ORT: threads=1 below)
        model = load_checkpoint(paths.checkpoint).model
        start = time.perf_counter()
        served[:] = tent_predictions(model, stream.x, cell.batch_size, TORCH_TENT_LR)
    else:
        engine = variant(cell.policy).engine(OrtModel(bundle, threads=1))
        start = time.perf_counter()
        if rate_hz is None:
            for i in range(0, len(stream), cell.batch_size):
                out = engine.process(stream.x[i : i + cell.batch_size])
                served[i : i + cell.batch_size] = out.classes
                source[i : i + cell.batch_size] = out.source_classes
        else:
            hop_s = info.hop / rate_hz
            paced = replay_paced(engine, stream.x, cell.batch_size, hop_s, served, source)
            paced = paced.summary(rate_hz, hop_s)
        counters = engine.counters.as_dict()
    elapsed = time.perf_counter() - start
    # As `edge-ttt replay` estimates: per device, from the predicted class mix and its steadiness.
    prior, stay = class_prior(bundle.manifest), bundle.manifest.reference.stay
    estimated = device_estimates(served, devices, prior, stay)
    source_estimated = device_estimates(source, devices, prior, stay)
    result = {
        **dataclasses.asdict(cell),
        "windows": len(stream),
        "accuracy": accuracy(stream.label, served),
        "estimated_accuracy": stream_estimate(estimated),
        "source_estimated_accuracy": stream_estimate(source_estimated),
        "devices": per_device(devices, stream.label, served, estimated, source_estimated),
        "counters": counters,
        "ms_per_window": 1000 * elapsed / max(len(stream), 1),
    }
    return result if paced is None else {**result, "paced": paced}


def runs_on(column: str, bundle: Bundle) -> bool:
    """Whether the column's policy can run on the bundle (entropy policies and the torch Tent need
    an entropy training graph; the auxiliary-task policy needs an auxiliary head)."""
    if column == TORCH_TENT:
        return bundle.manifest.auxiliary is None  # its ORT counterpart `tent` cannot run otherwise
    return fits(POLICY_TYPES[variant(column).policy], bundle.manifest)


@functools.lru_cache(maxsize=1)
def _target_log() -> RecordedLog:
    return watch_logs()["target"]


Task = tuple[Cell, ModelPaths, float | None]  # the cell, its model, the paced rate (None: unpaced)


def _work(task: Task) -> dict:
    cell, paths, rate_hz = task
    return run_cell(cell, paths, _target_log(), rate_hz)


def run_cells(tasks: list[Task], jobs: int) -> Iterable[dict]:
    """Results as they finish; every cell is independent and single-threaded, so `jobs` changes
    no accuracy (paced cells: their timings, hence what they miss, depend on the machine's load)."""
    # Slowest first (batch size 1, then the torch reference) so that no worker idles at the end.
    tasks = sorted(tasks, key=lambda t: (t[0].batch_size != 1, t[0].policy != TORCH_TENT))
    if jobs == 1:
        yield from map(_work, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap_unordered(_work, tasks)
