"""Clean wearers through the fleet side: which alerts fire on devices that did not drift?

Each target wearer's whole recording (subjects 6 to 10, no corruption: a new wearer is all that
differs from the source) runs through the default engine one window at a time, in recorded and in
class-sorted order, into drift summaries of 40 windows as the agent makes them; the alert rules run
over that dataset with their defaults. Per device: the monitor's estimates, the true accuracies and
the alerts. The clean control of `edge-ttt demo` is one such wearer; this is the rest of them.

    .venv/bin/python -m benchmarks.clean_wearers [--model cnn-bn] [--cache runs/bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.adaptation.models import prepare_models
from benchmarks.harness import machine_info, progress
from edge_ttt.adapt.engine import Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import load_bundle
from edge_ttt.drift.schema import to_table
from edge_ttt.drift.summary import Reference, SummaryCollector
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import evaluate
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.estimates import fleet_estimates
from edge_ttt.monitor.intervals import Intervals
from edge_ttt.stream.window import windows_from_log
from firmware_sim.datasets.watch import watch_logs

ORDERS = ("recorded", "class-sorted")
INTERVAL = 40  # windows per summary, as the demo's agents close them
T0 = 1_800_000_000.0


def run_order(bundle_dir: Path, order: str, location: str) -> list[dict]:
    """One order: every wearer through its own engine into summaries; per device what the monitor says."""
    bundle = load_bundle(bundle_dir)
    info = bundle.manifest.model
    windows, devices = windows_from_log(watch_logs()["target"], info.window, info.hop)
    model = OrtModel(bundle, threads=1)
    reference = Reference.from_manifest(bundle.manifest)
    made, truth = [], {}
    for device in np.unique(devices):
        own = np.flatnonzero(devices == device)
        if order == "class-sorted":
            own = own[np.argsort(windows.label[own], kind="stable")]
        engine = Engine(model)
        collector = SummaryCollector(
            reference, device, "0", bundle.sha256, engine.policy_name, 1e9, INTERVAL, now=T0
        )
        served = []
        for k, i in enumerate(own):
            out = engine.process(windows.x[i : i + 1])
            collector.observe_predictions(windows.x[i : i + 1], out)
            served.append(out.classes[0])
            if collector.due(T0 + k):
                made.append(collector.close(T0 + k + 0.5, engine.report()))
        made.append(collector.close(T0 + len(own), engine.report()))
        source = Engine(model, "source").process(windows.x[own]).classes
        label = windows.label[own]
        truth[str(device)] = (float((np.array(served) == label).mean()), float((source == label).mean()))
    dataset.append(location, to_table([s for s in made if s is not None]))
    rules = AlertsSection()
    table = dataset.read(location)
    intervals = Intervals.of(table, rules)
    alerts = [a for a in evaluate(table, rules, now=T0 + 1e4) if a.rule != "silent"]
    rows = []
    for device, e in zip(intervals.devices, fleet_estimates(intervals, rules.estimate_windows), strict=True):
        served_true, source_true = truth[device]
        rows.append(
            {
                "order": order,
                "device": device,
                "served_true": served_true,
                "served_estimate": e.served,
                "source_true": source_true,
                "source_estimate": e.source,
                "reference": e.reference,
                "alerts": [f"{a.rule} {a.value:.3f}" for a in alerts if a.device == device],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.clean_wearers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="cnn-bn", help="reference model")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench"), help="trained models and bundles")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/clean_wearers"), help="result files"
    )
    args = parser.parse_args(argv)
    bundle_dir = prepare_models([args.model], args.cache, False)[args.model].bundle
    rows = []
    for order in ORDERS:
        with tempfile.TemporaryDirectory() as location:
            rows += run_order(bundle_dir, order, location)
        progress(f"{order}: {sum(bool(r['alerts']) for r in rows if r['order'] == order)} devices alerted")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = machine_info("benchmarks.clean_wearers", sys.argv[1:] if argv is None else argv)
    (args.out / "clean_wearers.json").write_text(
        json.dumps({"meta": meta, "model": args.model, "rows": rows}, indent=1)
    )

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = [
        "# Clean wearers through the fleet side: alerts on devices that did not drift",
        "",
        f"Generated by `{meta['command']}` at commit {meta['git_commit']}; model {args.model}, the default "
        "policy and alert rules, summaries of 40 windows. See benchmarks/clean_wearers.py.",
        "",
        "| order | device | served % (estimate) | source % (estimate) | reference % | alerts |",
        "|---|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['order']} | {r['device']} | {pct(r['served_true'])} ({pct(r['served_estimate'])}) | "
        f"{pct(r['source_true'])} ({pct(r['source_estimate'])}) | {pct(r['reference'])} | "
        f"{', '.join(r['alerts']) or '-'} |"
        for r in rows
    ]
    (args.out / "clean_wearers.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'clean_wearers.md'}")


if __name__ == "__main__":
    main()
