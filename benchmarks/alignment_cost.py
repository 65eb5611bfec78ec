"""`python -m benchmarks.alignment_cost [--model M]`: what input alignment costs the default policy
at batch size 1 for each block size it learns in (`InputOptions.learn_every`), side by side in one
run: `steady` with its drift gate open (its cost while it adapts, as the performance
benchmark's `steady-ungated`) at `learn_every` 1 (every window folded on its own), 4, 16 (the
default) and 64, and the same without alignment. (Ratios to PyTorch's Tent step are the performance
benchmark's: on 64 consecutive windows a column runs with warm caches, which favours the Tent step.)

The columns take turns on blocks of 64 consecutive windows (a different column first each round),
processed one window at a time, so that every block holds whole blocks of learning for every
column: a median over single windows would be that of the windows that learn nothing.
Writes `<out>/alignment_cost.json` and prints the table.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from benchmarks.adaptation import Cell, make_stream, prepare_models
from benchmarks.harness import one_model_args, progress, write_json
from benchmarks.performance.measure import UNGATED_OPTIONS, summary_ms, time_turns
from edge_ttt.adapt.engine import AUTO_INPUTS, DEFAULT_POLICY, AutoInputs, Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import Bundle, load_bundle
from firmware_sim.datasets.watch import watch_logs

BLOCK = 64  # windows per timed call: whole blocks of learning at every learn_every below
LEARN_EVERY = (1, 4, AUTO_INPUTS.options.learn_every, BLOCK)
UNALIGNED = "unaligned"


def engines(bundle: Bundle) -> dict[str, Engine]:
    """A fresh gate-open engine per column, each on a model of its own (threads=1)."""
    out = {
        f"learn_every={k}": Engine(
            OrtModel(bundle, threads=1),
            options=UNGATED_OPTIONS,
            inputs=AutoInputs(replace(AUTO_INPUTS.options, learn_every=k)),
        )
        for k in LEARN_EVERY
    }
    out[UNALIGNED] = Engine(OrtModel(bundle, threads=1), options=UNGATED_OPTIONS, inputs=None)
    return out


def one_at_a_time(step):
    """A runner that puts a block through `step` window by window (batch size 1)."""

    def run(block: np.ndarray) -> None:
        for i in range(len(block)):
            step(block[i : i + 1])

    return run


def main(argv: list[str] | None = None) -> None:
    args = one_model_args("benchmarks.alignment_cost", __doc__, "benchmarks/results/input_alignment", argv)
    bundle = load_bundle(prepare_models([args.model], args.cache, retrain=False)[args.model].bundle)
    info = bundle.manifest.model
    cell = Cell(args.model, "gain", 4, "recorded", 1, DEFAULT_POLICY, 0)
    stream = make_stream(watch_logs()["target"], cell, info.window, info.hop)[0].x
    blocks = [stream[i : i + BLOCK] for i in range(0, len(stream) - BLOCK + 1, BLOCK)]
    columns = engines(bundle)
    runners = {name: one_at_a_time(e.process) for name, e in columns.items()}
    repeats = 3 * len(blocks)
    progress(f"{args.model} b=1: {len(runners)} columns x {repeats} blocks of {BLOCK} windows")
    times = time_turns(runners, blocks, repeats, warmup=2)
    ms = {name: summary_ms(t, BLOCK) for name, t in times.items()}
    bare = ms[UNALIGNED]["median_ms"]
    rows = [
        {
            "column": name,
            **ms[name],
            "over_unaligned_ms": ms[name]["median_ms"] - bare,
            "over_unaligned": ms[name]["median_ms"] / bare,
            "counters": columns[name].counters.as_dict(),
        }
        for name in runners
    ]
    stream_info = {"corruption": cell.corruption, "severity": cell.severity, "order": cell.order}
    write_json(
        args.out,
        "alignment_cost",
        "benchmarks.alignment_cost",
        argv,
        model=args.model,
        stream=stream_info,
        rows=rows,
    )
    print("| column | median ms per window | p90 | alignment's ms (over unaligned) | / unaligned |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['column']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['over_unaligned_ms']:+.3f} "
            f"| {r['over_unaligned']:.2f} |"
        )


if __name__ == "__main__":
    main()
