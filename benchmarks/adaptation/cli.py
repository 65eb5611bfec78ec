"""`python -m benchmarks.adaptation`: every cell the options name, then the JSON and the report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.adaptation.cells import (
    COLUMNS,
    ORDERS,
    TORCH_TENT,
    TORCH_TENT_LR,
    Cell,
    ModelPaths,
    result_key,
    run_cells,
    runs_on,
    variant,
)
from benchmarks.adaptation.models import prepare_models
from benchmarks.adaptation.paced_report import paced_target
from benchmarks.adaptation.peer_targets import target_default_vs_peers, target_peer_claims
from benchmarks.adaptation.report import markdown
from benchmarks.adaptation.targets import evaluate_targets
from benchmarks.harness import _batch_sizes, add_output_options, machine_info, name_list, progress, share
from edge_ttt.adapt.engine import DEFAULT_POLICY, SOURCE_EVERY, AutoFallback, AutoInputs, AutoRuns
from edge_ttt.adapt.fallback import DEFAULT_FALLBACK
from edge_ttt.artifacts import Bundle, load_bundle
from export.models import MODELS
from firmware_sim.corruptions import SEVERITIES, SHIFTS

# The options that choose the cells. A run that narrows one of them must not replace the committed
# tables of the full run (docs/adaptation-benchmark.md), unless --out names them.
SCOPE = ("models", "corruptions", "policies", "no_torch_tent", "orders", "batch_sizes", "severity", "seed")
RESULTS_OUT = Path("benchmarks/results")
PARTIAL_OUT = Path("runs/bench/partial")

DESCRIPTION = (
    "The adaptation benchmark: every policy on shifted smartwatch streams (the corruption suite and "
    "the deployment shifts), as a device would see them."
)


def _model_info(bundle: Bundle) -> dict:
    return {"bundle_sha256": bundle.sha256, "source_val_accuracy": bundle.manifest.reference.val_accuracy}


def _column_info(column: str) -> dict:
    how = variant(column)
    fallback = how.fallback
    if isinstance(fallback, AutoFallback):  # as the engine resolves it for the column
        fallback = fallback.resolve(how.policy, SOURCE_EVERY)
    fallback = None if fallback is None else dataclasses.asdict(fallback)
    inputs = (
        None
        if how.inputs is None
        else {"auto": isinstance(how.inputs, AutoInputs), **dataclasses.asdict(how.inputs)}
    )
    runs = how.runs
    if isinstance(runs, AutoRuns):  # as the engine resolves it for the column
        runs = runs.resolve(how.policy, bool(how.options.get("episodic")))
    runs = None if runs is None else dataclasses.asdict(runs)
    return {
        "policy": how.policy,
        "options": how.options,
        "fallback": fallback,
        "inputs": inputs,
        "runs": runs,
    }


def run_metadata(argv: list[str], args: argparse.Namespace, paths: dict[str, ModelPaths]) -> dict:
    return {
        **machine_info("benchmarks.adaptation", argv),
        "jobs": args.jobs,
        "severity": args.severity,
        "seed": args.seed,
        "default_policy": DEFAULT_POLICY,
        "fallback": dataclasses.asdict(DEFAULT_FALLBACK),
        "columns": {column: _column_info(column) for column in args.policies},
        "torch_tent_lr": TORCH_TENT_LR,
        "models": {name: _model_info(load_bundle(p.bundle)) for name, p in paths.items()},
    }


def _rates(text: str) -> list[float]:
    """An argparse type: comma-separated sample rates in Hz."""
    try:
        rates = [float(n) for n in text.split(",") if n]
    except ValueError:
        rates = []
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be positive numbers of Hz, got {text!r}")
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.adaptation", description=DESCRIPTION)
    p.add_argument("--models", type=name_list(MODELS, "model"), default=list(MODELS), help="reference models")
    p.add_argument(
        "--corruptions",
        type=name_list(SHIFTS, "shift"),
        default=list(SHIFTS),
        help="corruptions and deployment shifts (clean included)",
    )
    p.add_argument(
        "--policies", type=name_list(COLUMNS, "policy"), default=list(COLUMNS), help="policies and variants"
    )
    p.add_argument("--no-torch-tent", action="store_true", help=f"skip the {TORCH_TENT} reference column")
    p.add_argument("--orders", type=name_list(ORDERS, "order"), default=list(ORDERS), help="stream orders")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 16], help="windows per engine call")
    p.add_argument("--severity", type=int, choices=SEVERITIES, default=4, help="of every corruption")
    p.add_argument("--seed", type=int, default=0, help="corruption draws and the shuffled order")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, each single-threaded")
    p.add_argument(
        "--paced",
        type=_rates,
        action="extend",
        metavar="RATE",
        help="also replay every engine cell paced at these sensor rates in Hz (comma list, repeatable)",
    )
    p.add_argument("--retrain", action="store_true", help="train and export again even if cached")
    add_output_options(p)
    p.set_defaults(out=None)  # resolved below: where a run's tables go depends on what it covers
    p.epilog = (
        f"A run that narrows any of {', '.join('--' + o.replace('_', '-') for o in SCOPE)} writes to "
        f"{PARTIAL_OUT} unless --out says otherwise; only a full run replaces {RESULTS_OUT}."
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.out is None:
        full = all(getattr(args, o) == p.get_default(o) for o in SCOPE)
        args.out = RESULTS_OUT if full else PARTIAL_OUT
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(1)  # training too: reproducible, and faster than two threads on small batches
    paths = prepare_models(args.models, args.cache, args.retrain)
    columns = args.policies + ([] if args.no_torch_tent else [TORCH_TENT])
    bundles = {model: load_bundle(paths[model].bundle) for model in args.models}
    cells = [
        (Cell(model, corruption, args.severity, order, batch, policy, args.seed), paths[model])
        for model in args.models
        for corruption in args.corruptions
        for order in args.orders
        for batch in args.batch_sizes
        for policy in columns
        if runs_on(policy, bundles[model])
    ]
    rates = list(dict.fromkeys(args.paced or []))
    tasks = [(cell, path, None) for cell, path in cells]
    tasks += [(cell, path, rate) for rate in rates for cell, path in cells if cell.policy != TORCH_TENT]
    results, paced = [], []
    for k, r in enumerate(run_cells(tasks, args.jobs), 1):
        (paced if "paced" in r else results).append(r)
        how = f" paced at {r['paced']['rate_hz']:g} Hz, {r['paced']['missed']} missed" if "paced" in r else ""
        progress(
            f"[{k}/{len(tasks)}] {r['model']} {r['corruption']} {r['order']} b={r['batch_size']} "
            f"{r['policy']}: {share(r['accuracy'])}% "
            f"({r['ms_per_window']:.2f} ms/window){how}"
        )
    canonical = {result_key(dataclasses.asdict(c)): i for i, (c, _) in enumerate(cells)}
    results.sort(key=lambda r: canonical[result_key(r)])
    paced.sort(
        key=lambda r: (
            rates.index(r["paced"]["rate_hz"]),
            canonical[result_key(r)],
        )
    )
    meta = run_metadata(argv, args, paths)
    meta["wall_s"] = time.perf_counter() - start
    targets = evaluate_targets(results, DEFAULT_POLICY)
    targets += [target_default_vs_peers(results, DEFAULT_POLICY), target_peer_claims(results)]
    document = {"meta": meta, "cells": results}
    if rates:  # without --paced the output is as before it existed
        meta["paced_hz"] = rates
        targets.append(paced_target(paced, DEFAULT_POLICY))
        document["paced"] = paced
    report = markdown(results, targets, meta, paced)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adaptation.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "adaptation.md").write_text(report)
    print(report)
    progress(f"wrote {args.out / 'adaptation.json'} and {args.out / 'adaptation.md'}")
