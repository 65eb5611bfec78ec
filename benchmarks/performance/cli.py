"""`python -m benchmarks.performance`: every measurement for every model, then the JSON and the report."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.adaptation import prepare_models
from benchmarks.harness import _batch_sizes, add_output_options, machine_info, name_list
from benchmarks.performance.measure import (
    PERF_MODELS,
    measure_gate,
    measure_replay,
    measure_rss,
    measure_windows,
)
from benchmarks.performance.report import markdown
from benchmarks.performance.targets import evaluate_targets
from edge_ttt.recordlog import write_log
from firmware_sim.corruptions import CORRUPTIONS, SEVERITIES
from firmware_sim.datasets.watch import watch_logs

DESCRIPTION = "The performance benchmark (issue #9): what adaptation costs next to inference and PyTorch."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.performance", description=DESCRIPTION)
    p.add_argument("--models", type=name_list(PERF_MODELS, "model"), default=PERF_MODELS)
    p.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 16])
    p.add_argument("--repeats", type=int, default=400, help="timed blocks per column")
    p.add_argument("--warmup", type=int, default=30, help="untimed batches per column first")
    p.add_argument("--corruption", choices=[c for c in CORRUPTIONS if c != "clean"], default="gain")
    p.add_argument("--severity", type=int, choices=SEVERITIES, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=100, help="devices in the peak-memory processes")
    p.add_argument("--device-windows", type=int, default=10, help="windows per device there")
    p.add_argument("--device-python", type=Path, help="a torch-free interpreter (default: make one)")
    p.add_argument("--log", type=Path, help="target log to replay (default: the seglearn target subjects)")
    add_output_options(p)
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
