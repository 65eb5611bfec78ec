"""`python -m benchmarks.graph_paths [--repeats N] [--models A,B]`: a bundle's graph paths at batch
size 1, side by side in one run: the bundle as exported (`fixed`: the fixed-statistics graphs at
stat_mix 0), the same without them (`standard`: the standard-operator graphs, schema 2), and ORT's
training graph (`training`: a schema-1 copy, which needs onnxruntime-training); for each the
default policy with its drift gate open (steady-ungated) and one bare training pass, and PyTorch's
Tent for the ratio.

The columns run in a random order for every block of `CYCLE` consecutive windows (put through
one at a time: the default engine's gradient step and source pass come once a block): the
performance benchmark's rotation keeps one column always right after PyTorch's Tent, whose work
leaves the caches cold for it. Writes graph_paths.json and .md to --out
(benchmarks/results/graph_paths).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.adaptation import Cell, ModelPaths, make_stream, prepare_models
from benchmarks.harness import progress, write_json
from benchmarks.performance.measure import (
    CYCLE,
    PERF_MODELS,
    TORCH_TENT_LR,
    UNGATED_OPTIONS,
    in_batches,
    summary_ms,
)
from benchmarks.torch_tent import TorchTent
from edge_ttt.adapt.engine import DEFAULT_POLICY, Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import load_bundle
from edge_ttt.recordlog import RecordedLog
from export.checkpoint import load_checkpoint
from firmware_sim.datasets.watch import watch_logs
from tests.conftest import legacy_bundle, without_fixed_graphs

WARMUP = 30
# The bundle as exported (with the fixed-statistics graphs), without them, and as schema 1 (ORT's
# training graph, which needs onnxruntime-training).
PATHS = ("fixed", "standard", "training")


def runners(checkpoint: Path, bundles: dict[str, Path]) -> dict:
    """Per path (a bundle), steady-ungated and a bare training pass; and PyTorch's Tent."""
    out = {}
    for path, bundle_dir in bundles.items():
        engine = Engine(OrtModel(load_bundle(bundle_dir), threads=1), options=UNGATED_OPTIONS)
        bare = OrtModel(load_bundle(bundle_dir), threads=1)
        stats = bare.source_stats()

        def train_pass(x: np.ndarray, bare: OrtModel = bare, stats=stats) -> None:
            bare.forward_backward(x, np.full(len(x), 1.0 / len(x), np.float32), stats)
            bare.discard_gradients()

        out[f"steady-ungated/{path}"] = engine.process
        out[f"train-pass/{path}"] = train_pass
    out["torch-tent"] = TorchTent(load_checkpoint(checkpoint).model.eval(), TORCH_TENT_LR).forward_and_adapt
    return out


def measure(
    model: str, paths: ModelPaths, log: RecordedLog, repeats: int, order: random.Random, tmp: Path
) -> dict:
    """One model's columns, in random order per block: median ms per window, and the ratios."""
    bundles = {
        "fixed": paths.bundle,
        "standard": without_fixed_graphs(paths.bundle, tmp / model / "standard"),
        "training": legacy_bundle(paths.bundle, tmp / model / "training"),
    }
    info = load_bundle(paths.bundle).manifest.model
    cell = Cell(model, "gain", 4, "recorded", 1, DEFAULT_POLICY, 0)
    stream = make_stream(log, cell, info.window, info.hop)[0].x
    columns = runners(paths.checkpoint, bundles)
    times: dict[str, list[float]] = {name: [] for name in columns}
    blocks = len(stream) // CYCLE
    for i in range(WARMUP + repeats):
        x = stream[(i % blocks) * CYCLE : (i % blocks + 1) * CYCLE]  # whole cycles, a window at a time
        names = list(columns)
        order.shuffle(names)
        for name in names:
            run = in_batches(columns[name], 1)
            start = time.perf_counter()
            run(x)
            if i >= WARMUP:
                times[name].append(time.perf_counter() - start)
    shutil.rmtree(tmp / model)
    ms = {name: summary_ms(t, CYCLE)["median_ms"] for name, t in times.items()}
    return {
        "model": model,
        "median_ms": ms,
        "ratio_to_tent": {p: ms[f"steady-ungated/{p}"] / ms["torch-tent"] for p in PATHS},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.graph_paths", description=__doc__)
    p.add_argument("--repeats", type=int, default=600)
    p.add_argument("--cache", type=Path, default=Path("runs/bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/graph_paths"), help="result files")
    p.add_argument("--models", default=",".join(PERF_MODELS), help="comma-separated (default: %(default)s)")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(PERF_MODELS))
    if unknown:
        p.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(PERF_MODELS)}")
    torch.set_num_threads(1)
    paths = prepare_models(models, args.cache, retrain=False)
    log = watch_logs()["target"]
    order = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            progress(f"{model}: {args.repeats} blocks of {CYCLE} windows, {3 * len(PATHS) - 2} columns")
            rows.append(measure(model, paths[model], log, args.repeats, order, Path(tmp)))
    meta = write_json(args.out, "graph_paths", "benchmarks.graph_paths", argv, rows=rows)
    lines = [
        "# A bundle's graph paths side by side",
        "",
        f"Generated by `{meta['command']}` at commit {meta['git_commit']}; batch size 1, the `gain` 4 "
        f"stream, {args.repeats} blocks of {CYCLE} windows per column, columns in random order per "
        "block; median ms per window. Paths: the bundle as exported (`fixed`), without its "
        "fixed-statistics graphs (`standard`), as schema 1 (`training`, ORT's training graph). "
        "See benchmarks/graph_paths.py and docs/performance.md.",
        "",
        "| model | steady-ungated (ms) | training pass (ms) | steady-ungated / Tent | fixed / standard |",
        f"| | {' / '.join(PATHS)} | {' / '.join(PATHS)} | {' / '.join(PATHS)} | ungated, training pass |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ms = row["median_ms"]
        values = [[ms[f"{column}/{p}"] for p in PATHS] for column in ("steady-ungated", "train-pass")]
        values.append([row["ratio_to_tent"][p] for p in PATHS])
        cells = [" / ".join(f"{v:.3f}" for v in column) for column in values]
        gains = f"{values[0][0] / values[0][1]:.2f}, {values[1][0] / values[1][1]:.2f}"
        lines.append(f"| {row['model']} | {' | '.join(cells)} | {gains} |")
    (args.out / "graph_paths.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 3 :]))
    print(f"wrote {args.out / 'graph_paths.md'}")


if __name__ == "__main__":
    main()
