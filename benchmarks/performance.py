"""The performance benchmark (issue #9): what adaptation costs next to inference and PyTorch.

Four measurements from one run, each against its reference in the same run:
- time per window of every model at every batch size: the engine (`Engine.process`, the agent's
  code path) with `source`, `norm`, `tent` and the default policy, and PyTorch eager inference and
  a Tent step on the same model, all single-threaded, taking turns batch by batch;
- the default policy on a drifting stream (clean, then corrupted): with its drift gate, and with
  a gradient pass on every window;
- peak resident memory of a process adapting 100 devices: the agent's engines in a torch-free
  environment, against PyTorch Tent;
- replay of the target smartwatch log with the default policy, as a multiple of real time.
How to run it and read it: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.adaptation import (
    AUX_MODEL,
    FAIL,
    NOT_MEASURED,
    PASS,
    Cell,
    ModelPaths,
    Target,
    _batch_sizes,
    _names,
    _progress,
    machine_info,
    make_stream,
    prepare_models,
)
from benchmarks.torch_tent import TorchTent
from edge_ttt.adapt.engine import DEFAULT_POLICY, Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import load_bundle
from edge_ttt.metrics import accuracy
from edge_ttt.recordlog import RecordedLog, read_log, write_log
from edge_ttt.replay import replay
from export.checkpoint import load_checkpoint
from export.models import MODELS
from firmware_sim.corruptions import CORRUPTIONS, SEVERITIES
from firmware_sim.datasets.watch import watch_logs

ROOT = Path(__file__).resolve().parents[1]
ENGINE_POLICIES = ("source", "norm", "tent", DEFAULT_POLICY)
TORCH_INFERENCE, TORCH_TENT = "torch-inference", "torch-tent"
UNGATED = f"{DEFAULT_POLICY}-ungated"  # the default policy with its drift gate always open
UNGATED_OPTIONS = {"gate_shift": 0.0, "gate_spread": 0.0}
TRAIN_PASS = "ort-train-pass"  # one OrtModel.forward_backward: the floor of any gradient step
# Every column but `source` steps on the entropy (or is PyTorch's Tent): not on an auxiliary-head model.
PERF_MODELS = [m for m in MODELS if m != AUX_MODEL]
COLUMNS = (*ENGINE_POLICIES, UNGATED, TRAIN_PASS, TORCH_INFERENCE, TORCH_TENT)
TORCH_TENT_LR = 1e-3
# Targets of issue #9.
MAX_VS_TORCH_TENT = 0.5  # default policy / PyTorch Tent step, batch size 1
MAX_VS_INFERENCE = 3.0  # default policy / engine inference only, batch size 1
MAX_RSS_SHARE = 1 / 3  # engine fleet peak RSS / PyTorch fleet peak RSS
MIN_REPLAY_SPEED = 200.0  # x real time
NO_HARM_POINTS = 1.0  # the adaptation benchmark's no-harm margin, in accuracy points

Runner = Callable[[np.ndarray], object]


# ---------------------------------------------------------------------------------------------
# Time per window


def time_turns(runners: dict[str, Runner], batches: list[np.ndarray], rounds: int, warmup: int) -> dict:
    """Seconds per call of every runner on the same batches, runners taking turns batch by batch
    (starting with a different one each round) so that load from other processes hits all alike.
    The first `warmup` rounds are not recorded; batches are reused cyclically."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + rounds):
        x = batches[i % len(batches)]
        k = i % len(names)
        for name in names[k:] + names[:k]:
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
    stream = make_stream(log, cell, info.window, info.hop).x
    rows = []
    for batch in args.batch_sizes:
        _progress(f"{model} b={batch}: time per window, {len(COLUMNS)} columns x {args.repeats} batches")
        batches = [stream[i : i + batch] for i in range(0, len(stream) - batch + 1, batch)]
        runners, engines = window_runners(paths)
        times = time_turns(runners, batches, args.repeats, args.warmup)
        for name in COLUMNS:
            row = {"model": model, "batch_size": batch, "column": name, **summary_ms(times[name], batch)}
            if name in engines:
                row["counters"] = engines[name].counters.as_dict()
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# The drift gate on a drifting stream


def drifting_stream(model: str, paths: ModelPaths, log: RecordedLog, args: argparse.Namespace):
    """Recorded order; the first half of the windows clean, the second half corrupted."""
    info = load_bundle(paths.bundle).manifest.model
    clean = make_stream(
        log, Cell(model, "clean", args.severity, "recorded", 1, "", args.seed), info.window, info.hop
    )
    bad = make_stream(
        log, Cell(model, args.corruption, args.severity, "recorded", 1, "", args.seed), info.window, info.hop
    )
    half = len(clean) // 2
    return np.concatenate([clean.x[:half], bad.x[half:]]), np.concatenate(
        [clean.label[:half], bad.label[half:]]
    )


def measure_gate(model: str, paths: ModelPaths, log: RecordedLog, args: argparse.Namespace) -> dict:
    """Mean time per window and accuracy over the drifting stream: source, gated, ungated."""
    x, labels = drifting_stream(model, paths, log, args)
    _progress(f"{model}: drifting stream of {len(x)} windows through source, {DEFAULT_POLICY}, {UNGATED}")
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
        _progress(f"creating the torch-free environment {venv} (pip install . without extras)")
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
    stream = make_stream(log, cell, info.window, info.hop).x
    python = device_python(args)
    with tempfile.TemporaryDirectory() as tmp:
        windows = Path(tmp) / "windows.npy"
        np.save(windows, stream[: args.device_windows])
        _progress(f"{model}: peak RSS of {args.devices} devices x {args.device_windows} windows")
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
    _progress(f"{model}: replay of {log_path} with {DEFAULT_POLICY}")
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


# ---------------------------------------------------------------------------------------------
# Targets


def _median(rows: list[dict], model: str, batch: int, column: str) -> float | None:
    for r in rows:
        if (r["model"], r["batch_size"], r["column"]) == (model, batch, column):
            return r["median_ms"]
    return None


def ratio(rows: list[dict], model: str, batch: int, num: str, den: str) -> float | None:
    """Ratio of two columns' medians in the same run, or None when either is missing."""
    a, b = _median(rows, model, batch, num), _median(rows, model, batch, den)
    return None if a is None or b is None else a / b


def _all_within(title: str, checks: list[tuple[str, float | None, bool]]) -> Target:
    """PASS when every measured check holds; NOT_MEASURED when none was measured."""
    measured = [(name, value, ok) for name, value, ok in checks if value is not None]
    if not measured:
        return Target(title, NOT_MEASURED, ["nothing measured"])
    details = [f"{name}: {value:.2f} ({'ok' if ok else 'missed'})" for name, value, ok in measured]
    return Target(title, PASS if all(ok for _, _, ok in measured) else FAIL, details)


def evaluate_targets(results: dict) -> list[Target]:
    """Issue #9's targets from this run's numbers only."""
    rows, models = results["windows"], list(dict.fromkeys(r["model"] for r in results["windows"]))
    # The default policy's cost when it adapts: a gradient pass on every window (gate open).
    vs_torch = [(m, ratio(rows, m, 1, UNGATED, TORCH_TENT)) for m in models]
    vs_source = [(m, ratio(rows, m, 1, UNGATED, "source")) for m in models]
    first = _all_within(
        f"1. {UNGATED} at b=1: time per window <= {MAX_VS_TORCH_TENT:g} x PyTorch eager Tent step",
        [(m, r, r is not None and r <= MAX_VS_TORCH_TENT) for m, r in vs_torch],
    )
    floors = [(m, ratio(rows, m, 1, TRAIN_PASS, TORCH_TENT)) for m in models]
    floor = [f"{m}: {TRAIN_PASS} alone {r:.2f}" for m, r in floors if r is not None]
    first = Target(first.title, first.status, first.details + floor)
    targets = [
        first,
        _all_within(
            f"2. {UNGATED} at b=1: time per window <= {MAX_VS_INFERENCE:g} x inference (source)",
            [(m, r, r is not None and r <= MAX_VS_INFERENCE) for m, r in vs_source],
        ),
    ]
    gate = results["gate"]
    gate_checks = []
    for g in gate:
        mine, ungated, source = g[DEFAULT_POLICY], g[UNGATED], g["source"]
        ok = (
            mine["mean_ms"] < ungated["mean_ms"]
            and 100 * mine["accuracy"] >= 100 * source["accuracy"] - NO_HARM_POINTS
            and 100 * mine["accuracy"] >= 100 * ungated["accuracy"] - NO_HARM_POINTS
        )
        gate_checks.append((f"{g['model']} gated / ungated time", mine["mean_ms"] / ungated["mean_ms"], ok))
    targets.append(
        _all_within(
            f"2b. drifting stream: {DEFAULT_POLICY} (gated) faster per window than {UNGATED}, accuracy "
            f"within {NO_HARM_POINTS:g} point of both {UNGATED} and source",
            gate_checks,
        )
    )
    rss_checks = []
    for r in results["rss"]:
        share = r["engine"]["peak_rss_mib"] / r["torch"]["peak_rss_mib"]
        clean = not r["engine"]["torch_importable"]
        rss_checks.append((f"{r['model']} engine / torch peak RSS", share, clean and share <= MAX_RSS_SHARE))
    targets.append(
        _all_within(
            f"3. engine fleet peak RSS (torch-free) <= {MAX_RSS_SHARE:.2f} x PyTorch fleet", rss_checks
        )
    )
    targets.append(
        _all_within(
            f"4. replay of the target log with {DEFAULT_POLICY} >= {MIN_REPLAY_SPEED:g} x real time",
            [
                (f"{r['model']} x real time", r["x_real_time"], r["x_real_time"] >= MIN_REPLAY_SPEED)
                for r in results["replay"]
            ],
        )
    )
    return targets


# ---------------------------------------------------------------------------------------------
# Report


def _ms(rows: list[dict], model: str, batch: int, column: str) -> str:
    for r in rows:
        if (r["model"], r["batch_size"], r["column"]) == (model, batch, column):
            return f"{r['median_ms']:.3f} ({r['p90_ms']:.3f})"
    return "-"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


RATIOS = (
    (UNGATED, TORCH_TENT),
    (TRAIN_PASS, TORCH_TENT),
    (UNGATED, "source"),
    (DEFAULT_POLICY, "source"),
    ("tent", TORCH_TENT),
    ("source", TORCH_INFERENCE),
)


def markdown(results: dict, targets: list[Target]) -> str:
    """Tables of this run's numbers, then the targets."""
    meta, rows = results["meta"], results["windows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch_size"] for r in rows})
    lines = [
        "# Performance benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date_utc']} at commit {meta['git_commit']}"
        f"{' (uncommitted changes)' if meta['git_dirty'] else ''}; {meta['wall_s'] / 60:.1f} min wall time "
        f"on {meta['cpus']} CPUs, one thread per engine and per PyTorch model. See docs/performance.md.",
        "",
        f"## Time per window (ms, median (p90)), {meta['corruption']} {meta['severity']}, recorded order",
        "",
        f"Columns take turns batch by batch, {meta['repeats']} batches each after {meta['warmup']} warm-up "
        f"batches. `{TRAIN_PASS}`: one bare ORT training pass (`OrtModel.forward_backward`, no policy). "
        f"`{TORCH_INFERENCE}` and `{TORCH_TENT}`: the same model in PyTorch eager mode "
        f"(inference; Tent step, lr {TORCH_TENT_LR:g}).",
        "",
        "| model | batch | " + " | ".join(COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for model in models:
        for batch in batches:
            cells = [_ms(rows, model, batch, c) for c in COLUMNS]
            lines.append(f"| {model} | {batch} | " + " | ".join(cells) + " |")
    closed = [
        f"{r['model']} b={r['batch_size']}: {r['counters']['skipped_no_drift']} of {r['counters']['windows']}"
        for r in rows
        if r["column"] == DEFAULT_POLICY
    ]
    lines += [
        "",
        f"`{UNGATED}`: {DEFAULT_POLICY} with its drift gate always open (a gradient pass on every window, "
        f"its cost while it adapts). Windows on which {DEFAULT_POLICY}'s gate was closed (forward only), "
        f"warm-up included: {'; '.join(closed)}.",
        "",
        "Ratios of medians:",
        "",
        "| model | batch | " + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |",
    ]
    lines.append("|---|---:|" + "---:|" * len(RATIOS))
    for model in models:
        for batch in batches:
            cells = [_x(ratio(rows, model, batch, a, b)) for a, b in RATIOS]
            lines.append(f"| {model} | {batch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Drifting stream: {DEFAULT_POLICY} with and without its drift gate",
        "",
        "Recorded order, batch size 1; the first half of the windows clean, the second half corrupted "
        f"({meta['corruption']} severity {meta['severity']}). Mean ms per window over the whole stream, "
        "accuracy, and the windows that took no gradient pass because the gate was closed.",
        "",
        "| model | windows | source ms | source acc % | "
        f"{DEFAULT_POLICY} ms | {DEFAULT_POLICY} acc % | gate closed | {UNGATED} ms | {UNGATED} acc % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in results["gate"]:
        src, mine, ung = g["source"], g[DEFAULT_POLICY], g[UNGATED]
        lines.append(
            f"| {g['model']} | {g['windows']} | {src['mean_ms']:.3f} | {100 * src['accuracy']:.1f} | "
            f"{mine['mean_ms']:.3f} | {100 * mine['accuracy']:.1f} | "
            f"{mine['counters']['skipped_no_drift']} | "
            f"{ung['mean_ms']:.3f} | {100 * ung['accuracy']:.1f} |"
        )
    lines += [
        "",
        f"## Peak resident memory, {meta['devices']} devices x {meta['device_windows']} windows",
        "",
        "Each in its own process (VmHWM). `engine`: the agent's engines (one shared `OrtModel`, one "
        f"`Engine` per device, {DEFAULT_POLICY}) under `{meta['device_python']}`; `engine beside torch`: "
        "the same in the benchmark's own environment, where importing onnxruntime loads torch; `torch`: "
        "one PyTorch model, per-device norm affines and Adam state, one Tent step per window.",
        "",
        "| model | engine MiB | torch importable there | engine beside torch MiB | torch MiB "
        "| engine / torch |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in results["rss"]:
        e, b, t = r["engine"], r["engine_beside_torch"], r["torch"]
        lines.append(
            f"| {r['model']} | {e['peak_rss_mib']:.0f} | {'yes' if e['torch_importable'] else 'no'} | "
            f"{b['peak_rss_mib']:.0f} | {t['peak_rss_mib']:.0f} | "
            f"{e['peak_rss_mib'] / t['peak_rss_mib']:.2f} |"
        )
    lines += [
        "",
        f"## Replay of `{meta['log']}` with {DEFAULT_POLICY}",
        "",
        "Wall time of the whole `edge_ttt.replay.replay` call (loading, windowing, engine) against the "
        "recorded sensor time (samples / sample rate, all devices; gaps between recordings not counted).",
        "",
        "| model | windows | recorded s | wall s | x real time | ms per window | accuracy % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["replay"]:
        lines.append(
            f"| {r['model']} | {r['windows']} | {r['log_seconds']:.0f} | {r['wall_s']:.2f} | "
            f"{r['x_real_time']:.0f} | {r['ms_per_window']:.3f} | {100 * r['accuracy']:.1f} |"
        )
    lines += ["", "## Targets", ""]
    for target in targets:
        lines.append(f"- **{target.status}** {target.title}")
        lines += [f"  - {detail}" for detail in target.details]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.performance", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=_names(PERF_MODELS, "model"), default=PERF_MODELS)
    p.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 16])
    p.add_argument("--repeats", type=int, default=400, help="timed batches per column")
    p.add_argument("--warmup", type=int, default=30, help="untimed batches per column first")
    p.add_argument("--corruption", choices=[c for c in CORRUPTIONS if c != "clean"], default="gain")
    p.add_argument("--severity", type=int, choices=SEVERITIES, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=100, help="devices in the peak-memory processes")
    p.add_argument("--device-windows", type=int, default=10, help="windows per device there")
    p.add_argument("--device-python", type=Path, help="a torch-free interpreter (default: make one)")
    p.add_argument("--log", type=Path, help="target log to replay (default: the seglearn target subjects)")
    p.add_argument("--cache", type=Path, default=Path("runs/bench"), help="trained models and bundles")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    if min(args.repeats, args.devices, args.device_windows) < 1 or args.warmup < 0:
        p.error("--repeats, --devices and --device-windows must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(1)  # the same thread count as every engine (threads=1)
    paths = prepare_models(args.models, args.cache, retrain=False)
    target_log = watch_logs()["target"]
    results: dict = {"windows": [], "gate": [], "rss": [], "replay": []}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = args.log
        if log_path is None:
            log_path = Path(tmp) / "watch_target.parquet"
            write_log(log_path, target_log)
        for model in args.models:
            results["windows"] += measure_windows(model, paths[model], target_log, args)
            results["gate"].append(measure_gate(model, paths[model], target_log, args))
            results["rss"].append(measure_rss(model, paths[model], target_log, args))
            results["replay"].append(measure_replay(model, paths[model], log_path))
    results["meta"] = {
        **machine_info("benchmarks.performance", argv),
        "wall_s": time.perf_counter() - start,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "corruption": args.corruption,
        "severity": args.severity,
        "seed": args.seed,
        "devices": args.devices,
        "device_windows": args.device_windows,
        "device_python": results["rss"][0]["engine"]["python"] if results["rss"] else None,
        "log": str(args.log or "seglearn target subjects (edge-ttt datasets watch)"),
        "threads": 1,
    }
    targets = evaluate_targets(results)
    results["targets"] = [{"title": t.title, "status": t.status, "details": t.details} for t in targets]
    report = markdown(results, targets)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "performance.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "performance.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
