"""The performance benchmark's measurements: time per window, the drift gate on a drifting stream,
a fleet's peak resident memory and replay speed, each against its reference in the same run."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.adaptation import AUX_MODEL, Cell, ModelPaths, make_stream
from benchmarks.harness import progress
from benchmarks.torch_tent import TorchTent
from edge_ttt.adapt.engine import DEFAULT_POLICY, SOURCE_EVERY, Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies.steady import Steady
from edge_ttt.artifacts import load_bundle
from edge_ttt.metrics import accuracy
from edge_ttt.recordlog import RecordedLog, read_log
from edge_ttt.replay import replay
from export.checkpoint import load_checkpoint
from export.models import MODELS

ROOT = Path(__file__).resolve().parents[2]
ENGINE_POLICIES = ("source", "norm", "tent", DEFAULT_POLICY)
TORCH_INFERENCE, TORCH_TENT = "torch-inference", "torch-tent"
UNGATED = f"{DEFAULT_POLICY}-ungated"  # the default policy with its drift gate always open
UNGATED_OPTIONS = {"gate_shift": 0.0, "gate_spread": 0.0}
# The same without its fallback to source (on by default since 2026-12-06): what the fallback costs.
NO_FALLBACK = f"{UNGATED}-no-fallback"
# The same without input alignment (which the engine puts ahead of the default policy by default).
UNALIGNED = f"{UNGATED}-unaligned"
# The same with a gradient step on every window (`step_every=1`), as before the steps were sampled.
EVERY_STEP = f"{UNGATED}-step1"
TRAIN_PASS = "ort-train-pass"  # one OrtModel.forward_backward: the floor of any gradient step
# Every column but `source` steps on the entropy (or is PyTorch's Tent): not on an auxiliary-head model.
PERF_MODELS = [m for m in MODELS if m != AUX_MODEL]
COLUMNS = (
    *ENGINE_POLICIES,
    UNGATED,
    UNALIGNED,
    EVERY_STEP,
    NO_FALLBACK,
    TRAIN_PASS,
    TORCH_INFERENCE,
    TORCH_TENT,
)
TORCH_TENT_LR = 1e-3

Runner = Callable[[np.ndarray], object]
# Windows over which the default engine's work repeats at batch size 1: the source model's pass
# (every SOURCE_EVERY-th window) and the gradient step (every step_every-th). A median over single
# windows would be that of the windows with neither, so the columns are timed on blocks of these.
CYCLE = math.lcm(SOURCE_EVERY, Steady.Options.step_every)


def in_batches(run: Runner, batch: int) -> Runner:
    """A runner that puts a block of windows through `run` one batch of `batch` at a time."""

    def each(block: np.ndarray) -> None:
        for i in range(0, len(block), batch):
            run(block[i : i + batch])

    return each


def time_turns(
    runners: dict[str, Runner], batches: list[np.ndarray], rounds: int, warmup: int, seed: int = 0
) -> dict:
    """Seconds per call of every runner on the same batches, runners taking turns batch by batch
    so that load from other processes hits all alike, in a new random order each round (seeded):
    a runner that always came right after a near-twin would find the caches warmed for it (a
    rotation did that: `steady` right after `steady-ungated` took 6-8 % less time than right
    before it). The first `warmup` rounds are not recorded; batches are reused cyclically."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    order = np.random.default_rng(seed)
    for i in range(warmup + rounds):
        x = batches[i % len(batches)]
        for name in (names[j] for j in order.permutation(len(names))):
            start = time.perf_counter()
            runners[name](x)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return times


def summary_ms(seconds: list[float], batch_size: int) -> dict:
    """Median and 90th percentile, in ms per window."""
    per_window = np.asarray(seconds) * 1000 / batch_size
    return {
        "median_ms": float(np.median(per_window)),
        "p90_ms": float(np.percentile(per_window, 90)),
        "calls": len(per_window),
    }


def window_runners(paths: ModelPaths) -> tuple[dict[str, Runner], dict[str, Engine]]:
    """One fresh engine per policy (threads=1), the bare ORT training pass with source
    statistics and uniform weights (no policy around it), and the PyTorch model for inference and Tent."""
    bundle = load_bundle(paths.bundle)
    engines = {p: Engine(OrtModel(bundle, threads=1), policy=p) for p in ENGINE_POLICIES}
    engines[UNGATED] = Engine(OrtModel(bundle, threads=1), options=UNGATED_OPTIONS)
    engines[UNALIGNED] = Engine(OrtModel(bundle, threads=1), options=UNGATED_OPTIONS, inputs=None)
    engines[EVERY_STEP] = Engine(OrtModel(bundle, threads=1), options={**UNGATED_OPTIONS, "step_every": 1})
    engines[NO_FALLBACK] = Engine(OrtModel(bundle, threads=1), options=UNGATED_OPTIONS, fallback=None)
    bare = OrtModel(bundle, threads=1)
    stats = bare.source_stats()

    def train_pass(x: np.ndarray) -> None:
        bare.forward_backward(x, np.full(len(x), 1.0 / len(x), np.float32), stats)
        bare.discard_gradients()

    model = load_checkpoint(paths.checkpoint).model.eval()
    tent = TorchTent(model, TORCH_TENT_LR)

    def torch_inference(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    runners: dict[str, Runner] = {p: e.process for p, e in engines.items()}
    runners[TRAIN_PASS] = train_pass
    runners[TORCH_INFERENCE] = torch_inference
    runners[TORCH_TENT] = tent.forward_and_adapt
    return runners, engines


def measure_windows(model: str, paths: ModelPaths, log: RecordedLog, args: argparse.Namespace) -> list[dict]:
    """Per batch size: every column's time per window on the corrupted stream in recorded order."""
    info = load_bundle(paths.bundle).manifest.model
    cell = Cell(model, args.corruption, args.severity, "recorded", 1, DEFAULT_POLICY, args.seed)
    stream = make_stream(log, cell, info.window, info.hop)[0].x
    rows = []
    for batch in args.batch_sizes:
        size = batch * max(1, CYCLE // batch)  # windows per timed call: whole batches, whole cycles
        progress(
            f"{model} b={batch}: time per window, {len(COLUMNS)} columns x {args.repeats} blocks of {size}"
        )
        blocks = [stream[i : i + size] for i in range(0, len(stream) - size + 1, size)]
        runners, engines = window_runners(paths)
        runners = {name: in_batches(run, batch) for name, run in runners.items()}
        times = time_turns(runners, blocks, args.repeats, args.warmup)
        for name in COLUMNS:
            row = {"model": model, "batch_size": batch, "column": name, **summary_ms(times[name], size)}
            if name in engines:
                row["counters"] = engines[name].counters.as_dict()
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# The drift gate on a drifting stream


def drifting_stream(model: str, paths: ModelPaths, log: RecordedLog, args: argparse.Namespace):
    """Recorded order; the first half of the windows clean, the second half corrupted."""
    info = load_bundle(paths.bundle).manifest.model
    clean, _ = make_stream(
        log, Cell(model, "clean", args.severity, "recorded", 1, "", args.seed), info.window, info.hop
    )
    bad, _ = make_stream(
        log, Cell(model, args.corruption, args.severity, "recorded", 1, "", args.seed), info.window, info.hop
    )
    half = len(clean) // 2
    return np.concatenate([clean.x[:half], bad.x[half:]]), np.concatenate(
        [clean.label[:half], bad.label[half:]]
    )


def measure_gate(model: str, paths: ModelPaths, log: RecordedLog, args: argparse.Namespace) -> dict:
    """Mean time per window and accuracy over the drifting stream: source, gated, ungated."""
    x, labels = drifting_stream(model, paths, log, args)
    progress(f"{model}: drifting stream of {len(x)} windows through source, {DEFAULT_POLICY}, {UNGATED}")
    bundle = load_bundle(paths.bundle)
    engines = {
        "source": Engine(OrtModel(bundle, threads=1), policy="source"),
        DEFAULT_POLICY: Engine(OrtModel(bundle, threads=1)),
        UNGATED: Engine(OrtModel(bundle, threads=1), options=UNGATED_OPTIONS),
    }
    predicted = {name: np.empty(len(x), np.int64) for name in engines}
    seconds = {name: 0.0 for name in engines}
    names = list(engines)
    for i in range(len(x)):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            predicted[name][i] = engines[name].process(x[i : i + 1]).classes[0]
            seconds[name] += time.perf_counter() - start
    return {
        "model": model,
        "windows": len(x),
        "corrupted_from": len(x) // 2,
        **{
            name: {
                "mean_ms": 1000 * seconds[name] / len(x),
                "accuracy": accuracy(labels, predicted[name]),
                "counters": engines[name].counters.as_dict(),
            }
            for name in engines
        },
    }


# ---------------------------------------------------------------------------------------------
# Peak resident memory


def device_python(args: argparse.Namespace) -> Path:
    """The interpreter of a torch-free environment: `--device-python`, or a venv made (once) under
    the cache with the project's own dependencies only (`pip install .`, no extras)."""
    if args.device_python is not None:
        return args.device_python
    venv = args.cache / "device-venv"
    python = venv / "bin" / "python"
    if not python.is_file():
        progress(f"creating the torch-free environment {venv} (pip install . without extras)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], check=True)
    return python


def run_workload(python: Path, kind: str, paths: ModelPaths, windows: Path, devices: int) -> dict:
    """One `benchmarks.rss_workload` child; it runs this checkout's code (cwd first on sys.path)."""
    cmd = [str(python), "-m", "benchmarks.rss_workload", kind, "--bundle", str(paths.bundle)]
    cmd += ["--checkpoint", str(paths.checkpoint), "--windows", str(windows), "--devices", str(devices)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_rss(model: str, paths: ModelPaths, log: RecordedLog, args: argparse.Namespace) -> dict:
    """Peak RSS of the engine fleet (torch-free and, for comparison, beside torch) and the torch fleet."""
    info = load_bundle(paths.bundle).manifest.model
    cell = Cell(model, args.corruption, args.severity, "recorded", 1, DEFAULT_POLICY, args.seed)
    stream = make_stream(log, cell, info.window, info.hop)[0].x
    python = device_python(args)
    with tempfile.TemporaryDirectory() as tmp:
        windows = Path(tmp) / "windows.npy"
        np.save(windows, stream[: args.device_windows])
        progress(f"{model}: peak RSS of {args.devices} devices x {args.device_windows} windows")
        return {
            "model": model,
            "engine": run_workload(python, "engine", paths, windows, args.devices),
            "engine_beside_torch": run_workload(Path(sys.executable), "engine", paths, windows, args.devices),
            "torch": run_workload(Path(sys.executable), "torch", paths, windows, args.devices),
        }


# ---------------------------------------------------------------------------------------------
# Replay


def log_seconds(log: RecordedLog) -> float:
    """Recorded sensor time in the log: samples / rate (gaps between recordings do not count)."""
    return len(log.t_ns) / log.sample_rate_hz


def measure_replay(model: str, paths: ModelPaths, log_path: Path) -> dict:
    """`edge-ttt replay` of the log with the default policy: wall time of the whole call."""
    progress(f"{model}: replay of {log_path} with {DEFAULT_POLICY}")
    seconds = log_seconds(read_log(log_path))
    start = time.perf_counter()
    (result,) = replay(paths.bundle, log_path, [DEFAULT_POLICY])
    wall = time.perf_counter() - start
    return {
        "model": model,
        "log_seconds": seconds,
        "wall_s": wall,
        "x_real_time": seconds / wall,
        "windows": result["windows"],
        "ms_per_window": result["ms_per_window"],
        "accuracy": result["accuracy"],
    }
