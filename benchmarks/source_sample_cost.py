"""`python -m benchmarks.source_sample_cost [--repeats N]`: what the source model's sampled pass
costs the default policy at batch size 1 (`Engine(source_every=...)`): `steady` with the source
model on no window (0), every 4th (the default) and every window (1), and the `source` policy
alone for the cost of one source forward, side by side in one run on the cnn-bn reference model.

The columns take turns on blocks of 4 consecutive windows (a different column first each round),
processed one window at a time, so that every block holds exactly one sampled window at every
4th: a median over single windows would be that of the 3 windows in 4 without a source pass.

And what the sample costs the estimates: per device of the same stream, how far the source model's
estimates from every k-th window lie from those from all of its windows (the ATC-NE share that
the drift summaries carry, and the class-mix bound that `edge-ttt replay` reports).
Writes benchmarks/results/source_sample_cost.json and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.adaptation import Cell, make_stream, prepare_models
from benchmarks.harness import machine_info, progress
from benchmarks.performance.measure import summary_ms, time_turns
from edge_ttt.adapt.engine import DEFAULT_POLICY, SOURCE_EVERY, Engine
from edge_ttt.adapt.estimates import class_mix_cap, class_prior
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import Bundle, load_bundle
from firmware_sim.datasets.watch import watch_logs

MODEL = "cnn-bn"
BLOCK = SOURCE_EVERY  # windows per timed call: one of them sampled at the default
EVERY = (0, SOURCE_EVERY, 1)  # the columns' source_every
NOISE_EVERY = (2, 4, 8, 16)  # the samples whose estimates are compared with every window's


def engines(bundle: Bundle) -> dict[str, Engine]:
    """A fresh engine per column, each on a model of its own (threads=1)."""
    out = {
        f"{DEFAULT_POLICY} source_every={k}": Engine(OrtModel(bundle, threads=1), source_every=k)
        for k in EVERY
    }
    out["source"] = Engine(OrtModel(bundle, threads=1), "source")
    return out


def one_at_a_time(engine: Engine):
    """A runner that puts a block through the engine window by window (batch size 1)."""

    def run(block: np.ndarray) -> None:
        for i in range(len(block)):
            engine.process(block[i : i + 1])

    return run


def estimate_noise(bundle: Bundle, x: np.ndarray, devices: np.ndarray) -> dict:
    """Per k: the mean and largest difference over devices, in points, between the source
    model's estimates from a device's every k-th window (from its first) and from all of them."""
    source = Engine(OrtModel(bundle, threads=1), "source")
    out = [source.process(x[i : i + 256]) for i in range(0, len(x), 256)]
    right = np.concatenate([o.estimated_correct for o in out]).astype(np.float64)
    classes = np.concatenate([o.classes for o in out])
    prior = class_prior(bundle.manifest)
    rows = []
    for k in NOISE_EVERY:
        share, mix = [], []
        for d in np.unique(devices):
            own = devices == d
            share.append(abs(right[own][::k].mean() - right[own].mean()))
            mix.append(abs(class_mix_cap(classes[own][::k], prior) - class_mix_cap(classes[own], prior)))
        rows.append(
            {
                "source_every": k,
                "share_mean_pts": 100 * float(np.mean(share)),
                "share_max_pts": 100 * float(np.max(share)),
                "mix_mean_pts": 100 * float(np.mean(mix)),
                "mix_max_pts": 100 * float(np.max(mix)),
            }
        )
    return {"windows_per_device": float(np.unique(devices, return_counts=True)[1].mean()), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.source_sample_cost", description=__doc__)
    p.add_argument("--repeats", type=int, default=600, help="timed blocks of windows per column")
    p.add_argument("--warmup", type=int, default=10, help="untimed blocks first")
    p.add_argument("--cache", type=Path, default=Path("runs/bench"), help="trained models and bundles")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/source_sample_cost.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(prepare_models([MODEL], args.cache, retrain=False)[MODEL].bundle)
    info = bundle.manifest.model
    cell = Cell(MODEL, "gain", 4, "recorded", 1, DEFAULT_POLICY, 0)
    windows, devices = make_stream(watch_logs()["target"], cell, info.window, info.hop)
    stream = windows.x
    blocks = [stream[i : i + BLOCK] for i in range(0, len(stream) - BLOCK + 1, BLOCK)]
    columns = engines(bundle)
    progress(f"{MODEL} b=1: {len(columns)} columns x {args.repeats} blocks of {BLOCK} windows")
    times = time_turns({n: one_at_a_time(e) for n, e in columns.items()}, blocks, args.repeats, args.warmup)
    ms = {name: summary_ms(t, BLOCK) for name, t in times.items()}
    base = ms[f"{DEFAULT_POLICY} source_every=0"]["median_ms"]
    rows = [
        {
            "column": name,
            **ms[name],
            "ratio": ms[name]["median_ms"] / base,
            "counters": columns[name].counters.as_dict(),
        }
        for name in columns
    ]
    report = {
        "meta": {**machine_info("benchmarks.source_sample_cost", sys.argv[1:]), "model": MODEL},
        "stream": {"corruption": cell.corruption, "severity": cell.severity, "order": cell.order},
        "block_windows": BLOCK,
        "rows": rows,
        "estimate_noise": estimate_noise(bundle, stream, devices),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| column | median ms per window | p90 | / source_every=0 |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['column']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['ratio']:.2f} |")
    print("\n| source_every | ATC-NE share: mean / max points off | class-mix bound: mean / max |")
    print("|---:|---:|---:|")
    for r in report["estimate_noise"]["rows"]:
        share, mix = (f"{r[f'{e}_mean_pts']:.1f} / {r[f'{e}_max_pts']:.1f}" for e in ("share", "mix"))
        print(f"| {r['source_every']} | {share} | {mix} |")


if __name__ == "__main__":
    main()
