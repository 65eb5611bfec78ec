"""The adaptation benchmark's Markdown report: per model an accuracy table and the default
policy's label-free estimates, then the targets."""

from __future__ import annotations

import numpy as np

from benchmarks.adaptation.cells import NO_FALLBACK_COLUMN, ORDERS, TORCH_TENT, TORCH_TENT_LR
from benchmarks.adaptation.paced_report import paced_rows
from benchmarks.adaptation.targets import accuracies, mean_over_corruptions, mean_over_deployment_shifts
from benchmarks.harness import Target, pct, share, target_lines
from firmware_sim.corruptions import CORRUPTIONS, SHIFTS

MEANS = (
    ("original", "**mean over corruptions**", mean_over_corruptions),
    ("deployment", "**mean over deployment shifts**", mean_over_deployment_shifts),
)


def _mean_ms(results: list[dict], model: str, batch: int, policy: str) -> str:
    times = [
        r["ms_per_window"]
        for r in results
        if (r["model"], r["batch_size"], r["policy"]) == (model, batch, policy)
    ]
    return f"{np.mean(times):.2f}" if times else "-"


def _level(name: str, severity: int) -> str:
    shift = SHIFTS[name]
    level = shift.levels[severity - 1]
    return f"{name} ({shift.parameter})" if level is None else f"{name} {level} ({shift.parameter})"


def _suite(name: str) -> str:
    return "original" if name in CORRUPTIONS else "deployment"


def _accuracy_rows(results: list[dict], model: str, columns: list[str]) -> list[str]:
    """One row per (order, batch size, shift), each (order, batch size) block closed by its means."""
    acc = accuracies(results)
    lines = [
        "| order | batch | suite | shift | " + " | ".join(columns) + " |",
        "|---|---:|---|---|" + "---:|" * len(columns),
    ]
    rows = sorted(
        {(r["order"], r["batch_size"], r["corruption"]) for r in results if r["model"] == model},
        key=lambda k: (ORDERS.index(k[0]), k[1], list(SHIFTS).index(k[2])),
    )
    for i, (order, batch, name) in enumerate(rows):
        cells = [pct(acc.get((model, name, order, batch, p))) for p in columns]
        lines.append(f"| {order} | {batch} | {_suite(name)} | {name} | " + " | ".join(cells) + " |")
        if i + 1 < len(rows) and rows[i + 1][:2] == (order, batch):
            continue
        block = {name for o, b, name in rows if (o, b) == (order, batch)}
        for suite, title, mean in MEANS:
            if any(_suite(n) == suite and n != "clean" for n in block):
                means = [pct(mean(acc, model, order, batch, p)) for p in columns]
                lines.append(f"| {order} | {batch} | {suite} | {title} | " + " | ".join(means) + " |")
    return lines


def _options(options: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in options.items())


def _estimate_rows(results: list[dict], model: str, default: str) -> list[str]:
    """Per stream: the default policy's true and estimated accuracy, its switches to source and share
    of windows on source, the source model's (its own cell), and the policy without the fallback."""
    cells = {
        (r["order"], r["batch_size"], r["corruption"], r["policy"]): r for r in results if r["model"] == model
    }
    keys = sorted(
        (k[:3] for k in cells if k[3] == default),
        key=lambda k: (ORDERS.index(k[0]), k[1], list(SHIFTS).index(k[2])),
    )
    if not keys:
        return []
    lines = [
        "",
        f"Label-free estimates (per device class-mix bound times steadiness, weighted by windows), % "
        f"over the stream: `{default}` true and estimated, its switches to source and share of windows "
        f"on source, `source` true and estimated, and `{NO_FALLBACK_COLUMN}` (the same policy without "
        "the fallback).",
        "",
        f"| order | batch | shift | {default} | estimated | fallbacks | on source | source | estimated | "
        f"{NO_FALLBACK_COLUMN} |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for order, batch, name in keys:
        r = cells[(order, batch, name, default)]
        source = cells.get((order, batch, name, "source"), {})
        without = cells.get((order, batch, name, NO_FALLBACK_COLUMN), {})
        counters = r["counters"] or {}
        on_source = counters.get("windows_on_source", 0) / max(counters.get("windows", 0), 1)
        lines.append(
            f"| {order} | {batch} | {name} | {share(r['accuracy'])} | {share(r['estimated_accuracy'])} | "
            f"{counters.get('fallbacks', '-')} | {share(on_source)} | {share(source.get('accuracy'))} | "
            f"{share(source.get('estimated_accuracy'))} | {share(without.get('accuracy'))} |"
        )
    return lines


def markdown(results: list[dict], targets: list[Target], meta: dict, paced: list[dict] | None = None) -> str:
    """Per model the accuracy table (rows: order, batch size, shift; a column per policy), the
    milliseconds per window, the default policy's estimates and the paced cells if any, then the
    targets."""
    columns = list(dict.fromkeys(r["policy"] for r in results))
    severity = meta["severity"]
    default = meta["default_policy"]
    levels = ", ".join(
        _level(name, severity) for name in dict.fromkeys(r["corruption"] for r in results) if name != "clean"
    )
    lines = [
        "# Adaptation benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date_utc']} at commit {meta['git_commit']}"
        f"{' (uncommitted changes)' if meta['git_dirty'] else ''}; {meta['wall_s'] / 60:.1f} min wall time "
        f"with {meta['jobs']} worker(s) on {meta['cpus']} CPUs. See docs/adaptation-benchmark.md.",
        "",
        f"Accuracy (%) on the smartwatch target subjects, severity {severity}: {levels}. Rows of suite "
        "`original` are the corruption suite, `deployment` the deployment shifts. "
        f"`{TORCH_TENT}` is the PyTorch eager Tent (lr {TORCH_TENT_LR:g}). Every policy runs as the "
        f"engine runs it by default; the default policy is {default or 'none defined'}, with its "
        f"fallback to source ({_options(meta['fallback'])}), and `{NO_FALLBACK_COLUMN}` is it without.",
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
            *_accuracy_rows(results, model, columns),
        ]
        lines += ["", "Mean ms per window:", "", "| batch | " + " | ".join(columns) + " |"]
        lines.append("|---:|" + "---:|" * len(columns))
        for batch in sorted({r["batch_size"] for r in results if r["model"] == model}):
            times = [_mean_ms(results, model, batch, p) for p in columns]
            lines.append(f"| {batch} | " + " | ".join(times) + " |")
        lines += _estimate_rows(results, model, default) if default else []
        lines += paced_rows(results, paced or [], model)
    lines += target_lines(targets)
    return "\n".join(lines) + "\n"
