"""The adaptation benchmark: every policy on corrupted smartwatch streams, as a device would see them.

Papers evaluate test-time adaptation on shuffled batches of many windows; a wearable delivers one
window at a time, one exercise after another. So every (model, corruption, order, batch size)
stream is replayed through a fresh engine per policy, next to a PyTorch eager Tent as a cross-check
of the ONNX Runtime one, and the project's targets are evaluated from the numbers of the same run.
How to run it and read it: docs/adaptation-benchmark.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import edge_ttt
from benchmarks.torch_tent import tent_predictions
from edge_ttt.adapt import engine as engine_module
from edge_ttt.adapt.engine import POLICIES, Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import POLICY_TYPES, fits
from edge_ttt.artifacts import Bundle, BundleError, load_bundle
from edge_ttt.metrics import accuracy
from edge_ttt.recordlog import RecordedLog, write_log
from edge_ttt.replay import check_compatible
from edge_ttt.stream.window import WindowBatch, windows_from_log
from export.bundle import export_bundle
from export.checkpoint import load_checkpoint
from export.models import MODELS
from export.train import TrainConfig, train
from firmware_sim.corruptions import CORRUPTIONS, SEVERITIES, corrupt_log
from firmware_sim.datasets.watch import watch_logs

ORDERS = ("recorded", "shuffled", "class-sorted")
TARGET_ORDERS = ("recorded", "shuffled")  # the targets' streams; class-sorted is a stress test
TORCH_TENT = "torch-tent"
TORCH_TENT_LR = 1e-3
TARGET_MODEL = "cnn-bn"  # the targets are about the batch-norm model unless they say otherwise
AUX_MODEL = "cnn-bn-ttt"  # the same encoder with the auxiliary head: the auxiliary-task targets' model
AUX_POLICY = "ttt"
# Columns that are a policy with options: name -> (policy, engine options).
VARIANTS = {"ttt-episodic": ("ttt", {"episodic": True})}
COLUMNS = (*POLICIES, *VARIANTS)
PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "not measured"


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


@dataclass(frozen=True)
class Target:
    title: str
    status: str  # PASS, FAIL or NOT_MEASURED
    details: list[str]


# ---------------------------------------------------------------------------------------------
# Streams and cells


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


def make_stream(log: RecordedLog, cell: Cell, window: int, hop: int) -> WindowBatch:
    """The cell's corrupted windows, in the cell's order."""
    # One fault for the whole fleet: a shuffled stream mixes devices, and a per-device fault (each
    # its own bias signs, rotation axis) would then be no single shift that any policy could undo.
    corrupted = corrupt_log(log, cell.corruption, cell.severity, cell.seed, same_for_all_devices=True)
    batch, devices = windows_from_log(corrupted, window, hop)
    idx = stream_order(devices, batch.t_end_ns, batch.label, cell.order, cell.seed)
    return WindowBatch(x=batch.x[idx], t_end_ns=batch.t_end_ns[idx], label=batch.label[idx])


def run_cell(cell: Cell, paths: ModelPaths, log: RecordedLog) -> dict:
    """Replay the cell's stream through a fresh engine (or the torch Tent); accuracy, counters, timing."""
    bundle = load_bundle(paths.bundle)
    info = bundle.manifest.model
    check_compatible(log, info.channels, info.sample_rate_hz, "target log")
    stream = make_stream(log, cell, info.window, info.hop)
    predicted = np.full(len(stream), -1, dtype=np.int64)
    counters = None
    if cell.policy == TORCH_TENT:
        torch.set_num_threads(1)  # a cell is single-threaded whoever runs it (ORT: threads=1 below)
        model = load_checkpoint(paths.checkpoint).model
        start = time.perf_counter()
        predicted[:] = tent_predictions(model, stream.x, cell.batch_size, TORCH_TENT_LR)
    else:
        policy, options = VARIANTS.get(cell.policy, (cell.policy, {}))
        engine = Engine(OrtModel(bundle, threads=1), policy=policy, options=options)
        start = time.perf_counter()
        for i in range(0, len(stream), cell.batch_size):
            predicted[i : i + cell.batch_size] = engine.process(stream.x[i : i + cell.batch_size]).classes
        counters = engine.counters.as_dict()
    elapsed = time.perf_counter() - start
    return {
        **dataclasses.asdict(cell),
        "windows": len(stream),
        "accuracy": accuracy(stream.label, predicted),
        "counters": counters,
        "ms_per_window": 1000 * elapsed / max(len(stream), 1),
    }


# ---------------------------------------------------------------------------------------------
# Models


def runs_on(column: str, bundle: Bundle) -> bool:
    """Whether the column's policy can run on the bundle (entropy policies and the torch Tent need
    an entropy training graph; the auxiliary-task policy needs an auxiliary head)."""
    if column == TORCH_TENT:
        return bundle.manifest.auxiliary is None  # its ORT counterpart `tent` cannot run otherwise
    return fits(POLICY_TYPES[VARIANTS.get(column, (column,))[0]], bundle.manifest)


def cached(paths: ModelPaths, name: str) -> bool:
    """A checkpoint next to a bundle that verifies and holds the named model."""
    try:
        bundle = load_bundle(paths.bundle)
    except BundleError:
        return False
    return bundle.manifest.model.name == name and paths.checkpoint.is_file()


def prepare_models(names: list[str], cache: Path, retrain: bool) -> dict[str, ModelPaths]:
    """Train (TrainConfig defaults) and export every model that has no valid cached bundle."""
    paths = {name: ModelPaths(cache / name, cache / f"{name}.pt") for name in names}
    todo = [name for name in names if retrain or not cached(paths[name], name)]
    if todo:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "watch_source.parquet"
            write_log(source, watch_logs()["source"])
            for name in todo:
                _progress(f"training {name} on the source subjects and exporting it to {paths[name].bundle}")
                src = train(source, paths[name].checkpoint, TrainConfig(model=name), show_progress=False)
                export_bundle(src, paths[name].bundle, force=True)
    return paths


# ---------------------------------------------------------------------------------------------
# Workers


@functools.lru_cache(maxsize=1)
def _target_log() -> RecordedLog:
    return watch_logs()["target"]


def _work(task: tuple[Cell, ModelPaths]) -> dict:
    cell, paths = task
    return run_cell(cell, paths, _target_log())


def run_cells(tasks: list[tuple[Cell, ModelPaths]], jobs: int) -> Iterable[dict]:
    """Results as they finish; every cell is independent and single-threaded, so `jobs` changes no number."""
    # Slowest first (batch size 1, then the torch reference) so that no worker idles at the end.
    tasks = sorted(tasks, key=lambda t: (t[0].batch_size != 1, t[0].policy != TORCH_TENT))
    if jobs == 1:
        yield from map(_work, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap_unordered(_work, tasks)


# ---------------------------------------------------------------------------------------------
# Targets


Accuracies = dict[tuple[str, str, str, int, str], float]  # (model, corruption, order, batch, policy) -> %


def accuracies(results: list[dict]) -> Accuracies:
    return {
        (r["model"], r["corruption"], r["order"], r["batch_size"], r["policy"]): 100.0 * r["accuracy"]
        for r in results
        if r["accuracy"] is not None
    }


def corrupted_names(acc: Accuracies, model: str) -> list[str]:
    """The corruptions measured for `model`, clean excluded, in suite order."""
    measured = {key[1] for key in acc if key[0] == model}
    return [name for name in CORRUPTIONS if name in measured and name != "clean"]


def mean_over_corruptions(acc: Accuracies, model: str, order: str, batch: int, policy: str) -> float | None:
    """Mean accuracy (%) over the corruptions (clean excluded); None unless every one was measured."""
    names = corrupted_names(acc, model)
    values = [acc.get((model, name, order, batch, policy)) for name in names]
    return None if not names or None in values else float(np.mean(values))


def _cell_name(key: tuple[str, str, str, int, str]) -> str:
    model, corruption, order, batch, _ = key
    return f"{model} {corruption} {order} b={batch}"


def _target_default_vs_tent(acc: Accuracies, default: str | None) -> Target:
    title = (
        f"1. {default or 'default policy'} at batch size 1 in recorded order, mean over corruptions, "
        f">= tent on shuffled batches of 16 ({TARGET_MODEL})"
    )
    if default is None:
        return Target(title, NOT_MEASURED, ["edge_ttt.adapt.engine defines no DEFAULT_POLICY"])
    mine = mean_over_corruptions(acc, TARGET_MODEL, "recorded", 1, default)
    tent = mean_over_corruptions(acc, TARGET_MODEL, "shuffled", 16, "tent")
    if mine is None or tent is None:
        missing = [
            name
            for name, value in ((f"{default} recorded b=1", mine), ("tent shuffled b=16", tent))
            if value is None
        ]
        return Target(title, NOT_MEASURED, [f"no complete row for {', '.join(missing)}"])
    return Target(title, PASS if mine >= tent else FAIL, [f"{default} {mine:.1f} vs tent {tent:.1f}"])


def _violations(
    acc: Accuracies, policy: str, reference: str, allowed: Callable[[tuple, float, float], bool]
) -> tuple[int, list[str]]:
    """Cells measured for both policies, and the ones where `allowed(key, mine, ref)` is false."""
    compared, failed = 0, []
    for key, ref in sorted(acc.items()):
        if (
            key[4] != reference
            or key[2] not in TARGET_ORDERS
            or (mine := acc.get((*key[:4], policy))) is None
        ):
            continue
        compared += 1
        if not allowed(key, mine, ref):
            failed.append(
                f"{_cell_name(key)}: {policy} {mine:.1f} vs {reference} {ref:.1f} ({mine - ref:+.2f})"
            )
    return compared, failed


def _verdict(title: str, compared: int, failed: list[str], what: str) -> Target:
    if compared == 0:
        return Target(title, NOT_MEASURED, [f"no cell has both {what}"])
    summary = f"{compared - len(failed)} of {compared} cells within the target"
    return Target(title, FAIL if failed else PASS, [summary, *failed])


def _target_no_harm(acc: Accuracies, default: str | None) -> Target:
    title = (
        f"2. {default or 'default policy'} never more than 1 point below source, "
        "and not below it on clean data (every model)"
    )
    if default is None:
        return Target(title, NOT_MEASURED, ["edge_ttt.adapt.engine defines no DEFAULT_POLICY"])
    compared, failed = _violations(
        acc, default, "source", lambda key, mine, ref: mine >= ref - (0.0 if key[1] == "clean" else 1.0)
    )
    return _verdict(title, compared, failed, f"{default} and source")


def _target_tent_parity(acc: Accuracies) -> Target:
    title = f"3. ORT tent within 1 point of {TORCH_TENT} in every cell (every model)"
    compared, failed = _violations(acc, "tent", TORCH_TENT, lambda key, mine, ref: abs(mine - ref) <= 1.0)
    return _verdict(title, compared, failed, f"tent and {TORCH_TENT}")


def _target_auxiliary(acc: Accuracies, number: int, column: str) -> Target:
    """The auxiliary-task policy on its own model, on the stream the issue names (batch size 1 in
    recorded order: labels in runs): never more than 1 point below that model's source in any
    corruption, and its mean over corruptions above Tent's. Tent cannot step on the auxiliary
    model's training graph, so its numbers are those of the model with the same encoder and no
    auxiliary head. The other streams' means are listed beside it, not judged."""
    title = (
        f"{number}. {column} ({AUX_MODEL}) at batch size 1 in recorded order: never more than 1 point "
        f"below source, and its mean over corruptions above tent ({TARGET_MODEL}) on the same stream"
    )
    harm = {k: v for k, v in acc.items() if k[0] == AUX_MODEL and k[2] == "recorded" and k[3] == 1}
    compared, below = _violations(harm, column, "source", lambda key, mine, ref: mine >= ref - 1.0)
    judged, behind, others = None, [], []
    for order in TARGET_ORDERS:
        for batch in sorted({k[3] for k in acc if k[0] == AUX_MODEL and k[4] == column}):
            mine = mean_over_corruptions(acc, AUX_MODEL, order, batch, column)
            tent = mean_over_corruptions(acc, TARGET_MODEL, order, batch, "tent")
            if mine is None or tent is None:
                continue
            line = f"mean over corruptions, {order} b={batch}: {column} {mine:.1f} vs tent {tent:.1f}"
            if (order, batch) == ("recorded", 1):
                judged = line
                if mine <= tent:
                    behind.append(f"not above tent: {line}")
            else:
                others.append(f"not judged: {line}" + (" (not above tent)" if mine <= tent else ""))
    if compared == 0 or judged is None:
        return Target(
            title,
            NOT_MEASURED,
            [f"needs {column} and source on {AUX_MODEL}, tent on {TARGET_MODEL}, recorded b=1"],
        )
    summary = f"{compared - len(below)} of {compared} cells within 1 point of source"
    return Target(title, FAIL if below or behind else PASS, [summary, *below, judged, *behind, *others])


def evaluate_targets(results: list[dict], default: str | None) -> list[Target]:
    """The targets of docs/adaptation-benchmark.md, from this run's numbers only."""
    acc = accuracies(results)
    return [
        _target_default_vs_tent(acc, default),
        _target_no_harm(acc, default),
        _target_tent_parity(acc),
        _target_auxiliary(acc, 4, AUX_POLICY),
        _target_auxiliary(acc, 5, "ttt-episodic"),
    ]


# ---------------------------------------------------------------------------------------------
# Report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mean_ms(results: list[dict], model: str, batch: int, policy: str) -> str:
    times = [
        r["ms_per_window"]
        for r in results
        if (r["model"], r["batch_size"], r["policy"]) == (model, batch, policy)
    ]
    return f"{np.mean(times):.2f}" if times else "-"


def markdown(results: list[dict], targets: list[Target], meta: dict) -> str:
    """Per model a table (rows: order, batch size, corruption; a column per policy), then the targets."""
    acc = accuracies(results)
    columns = list(dict.fromkeys(r["policy"] for r in results))
    severity = meta["severity"]
    levels = ", ".join(
        f"{name} {CORRUPTIONS[name].levels[severity - 1]} ({CORRUPTIONS[name].parameter})"
        for name in dict.fromkeys(r["corruption"] for r in results)
        if name != "clean"
    )
    lines = [
        "# Adaptation benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date_utc']} at commit {meta['git_commit']}"
        f"{' (uncommitted changes)' if meta['git_dirty'] else ''}; {meta['wall_s'] / 60:.1f} min wall time "
        f"with {meta['jobs']} worker(s) on {meta['cpus']} CPUs. See docs/adaptation-benchmark.md.",
        "",
        f"Accuracy (%) on the smartwatch target subjects, severity {severity}: {levels}. "
        f"`{TORCH_TENT}` is the PyTorch eager Tent (lr {TORCH_TENT_LR:g}). Default policy: "
        f"{meta['default_policy'] or 'none defined'}.",
    ]
    for model in dict.fromkeys(r["model"] for r in results):
        info = meta["models"][model]
        lines += [
            "",
            f"## {model}",
            "",
            f"Source model: validation accuracy {100 * info['source_val_accuracy']:.1f}% on held-out "
            f"source subjects; bundle {info['bundle_sha256'][:12]}.",
            "",
            "| order | batch | corruption | " + " | ".join(columns) + " |",
            "|---|---:|---|" + "---:|" * len(columns),
        ]
        rows = sorted(
            {(r["order"], r["batch_size"], r["corruption"]) for r in results if r["model"] == model},
            key=lambda k: (ORDERS.index(k[0]), k[1], list(CORRUPTIONS).index(k[2])),
        )
        for i, (order, batch, corruption) in enumerate(rows):
            cells = [_pct(acc.get((model, corruption, order, batch, p))) for p in columns]
            lines.append(f"| {order} | {batch} | {corruption} | " + " | ".join(cells) + " |")
            if i + 1 == len(rows) or rows[i + 1][:2] != (order, batch):
                means = [_pct(mean_over_corruptions(acc, model, order, batch, p)) for p in columns]
                lines.append(f"| {order} | {batch} | **mean over corruptions** | " + " | ".join(means) + " |")
        lines += ["", "Mean ms per window:", "", "| batch | " + " | ".join(columns) + " |"]
        lines.append("|---:|" + "---:|" * len(columns))
        for batch in sorted({r["batch_size"] for r in results if r["model"] == model}):
            times = [_mean_ms(results, model, batch, p) for p in columns]
            lines.append(f"| {batch} | " + " | ".join(times) + " |")
    lines += ["", "## Targets", ""]
    for target in targets:
        lines.append(f"- **{target.status}** {target.title}")
        lines += [f"  - {detail}" for detail in target.details]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _model_info(bundle: Bundle) -> dict:
    return {"bundle_sha256": bundle.sha256, "source_val_accuracy": bundle.manifest.reference.val_accuracy}


def machine_info(module: str, argv: list[str]) -> dict:
    """When, where and with what a benchmark ran: date, commit, command, versions, CPUs."""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "command": shlex.join(["python", "-m", module, *argv]),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "edge_ttt": edge_ttt.__version__,
        },
        "cpus": os.cpu_count(),
    }


def run_metadata(
    argv: list[str], args: argparse.Namespace, paths: dict[str, ModelPaths], default: str | None
) -> dict:
    return {
        **machine_info("benchmarks.adaptation", argv),
        "jobs": args.jobs,
        "severity": args.severity,
        "seed": args.seed,
        "default_policy": default,
        "torch_tent_lr": TORCH_TENT_LR,
        "models": {name: _model_info(load_bundle(p.bundle)) for name, p in paths.items()},
    }


def _names(known: Iterable[str], what: str):
    known = tuple(known)

    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {', '.join(known)}")
        return names

    return parse


def _batch_sizes(text: str) -> list[int]:
    sizes = [int(n) for n in text.split(",") if n]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.adaptation", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=_names(MODELS, "model"), default=list(MODELS))
    p.add_argument("--corruptions", type=_names(CORRUPTIONS, "corruption"), default=list(CORRUPTIONS))
    p.add_argument("--policies", type=_names(COLUMNS, "policy"), default=list(COLUMNS))
    p.add_argument("--no-torch-tent", action="store_true", help=f"skip the {TORCH_TENT} reference column")
    p.add_argument("--orders", type=_names(ORDERS, "order"), default=list(ORDERS))
    p.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 16])
    p.add_argument("--severity", type=int, choices=SEVERITIES, default=4)
    p.add_argument("--seed", type=int, default=0, help="corruption draws and the shuffled order")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, each single-threaded")
    p.add_argument("--cache", type=Path, default=Path("runs/bench"), help="trained models and bundles")
    p.add_argument("--retrain", action="store_true", help="train and export again even if cached")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(1)  # training too: reproducible, and faster than two threads on small batches
    default = getattr(engine_module, "DEFAULT_POLICY", None)
    paths = prepare_models(args.models, args.cache, args.retrain)
    columns = args.policies + ([] if args.no_torch_tent else [TORCH_TENT])
    bundles = {model: load_bundle(paths[model].bundle) for model in args.models}
    tasks = [
        (Cell(model, corruption, args.severity, order, batch, policy, args.seed), paths[model])
        for model in args.models
        for corruption in args.corruptions
        for order in args.orders
        for batch in args.batch_sizes
        for policy in columns
        if runs_on(policy, bundles[model])
    ]
    results = []
    for k, r in enumerate(run_cells(tasks, args.jobs), 1):
        results.append(r)
        _progress(
            f"[{k}/{len(tasks)}] {r['model']} {r['corruption']} {r['order']} b={r['batch_size']} "
            f"{r['policy']}: {_pct(None if r['accuracy'] is None else 100 * r['accuracy'])}% "
            f"({r['ms_per_window']:.2f} ms/window)"
        )
    canonical = {
        (c.model, c.corruption, c.order, c.batch_size, c.policy): i for i, (c, _) in enumerate(tasks)
    }
    results.sort(
        key=lambda r: canonical[(r["model"], r["corruption"], r["order"], r["batch_size"], r["policy"])]
    )
    meta = run_metadata(argv, args, paths, default)
    meta["wall_s"] = time.perf_counter() - start
    targets = evaluate_targets(results, default)
    report = markdown(results, targets, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adaptation.json").write_text(json.dumps({"meta": meta, "cells": results}, indent=1) + "\n")
    (args.out / "adaptation.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
