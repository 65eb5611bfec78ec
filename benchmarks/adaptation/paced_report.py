"""The paced cells in the report: per model a table of every paced cell next to the same cell
unpaced, and the paced target (docs/adaptation-benchmark.md, "Paced scoring")."""

from __future__ import annotations

from benchmarks.adaptation.cells import ORDERS, result_key
from benchmarks.harness import FAIL, NOT_MEASURED, PASS, Target, share
from firmware_sim.corruptions import SHIFTS

TARGET_RATE_HZ = 50.0  # the watch's own sample rate


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def paced_rows(results: list[dict], paced: list[dict], model: str) -> list[str]:
    """One row per paced cell of `model`: accuracy unpaced (the same cell in `results`) and
    paced, windows predicted without adapting, median ms per call of each kind, lag at the end."""
    cells = [r for r in paced if r["model"] == model]
    if not cells:
        return []
    unpaced = {result_key(r): r for r in results}
    columns = list(dict.fromkeys(r["policy"] for r in cells))
    cells.sort(
        key=lambda r: (
            r["paced"]["rate_hz"],
            ORDERS.index(r["order"]),
            r["batch_size"],
            list(SHIFTS).index(r["corruption"]),
            columns.index(r["policy"]),
        )
    )
    lines = [
        "",
        'Paced (docs/adaptation-benchmark.md, "Paced scoring"): windows arrive one hop apart at the '
        "sensor rate and do not wait; one core adapts on a batch that finds it idle and predicts "
        "one that arrives while it is busy by the last state, without adapting. Accuracy (%) "
        "unpaced and paced, windows missed (predicted without adapting), median ms per adapting "
        "(`process`) and per predicting call, and how long the last window waited for its answer.",
        "",
        "| rate Hz | hop ms | order | batch | shift | policy | unpaced | paced | missed | windows "
        "| ms/process | ms/predict | lag ms |",
        "|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in cells:
        p = r["paced"]
        same = unpaced.get(result_key(r), {})
        lines.append(
            f"| {p['rate_hz']:g} | {p['hop_ms']:.2f} | {r['order']} | {r['batch_size']} | "
            f"{r['corruption']} | {r['policy']} | {share(same.get('accuracy'))} | {share(r['accuracy'])} | "
            f"{p['missed']} | {r['windows']} | {_ms(p['ms_per_process'])} | {_ms(p['ms_per_predict'])} | "
            f"{p['lag_ms']:.2f} |"
        )
    return lines


def paced_target(paced: list[dict], default: str | None) -> Target:
    """Paced at the watch's rate on one core, the default policy misses no window."""
    title = f"13. paced at {TARGET_RATE_HZ:g} Hz on one core, the default policy misses no window"
    if default is None:
        return Target(title, NOT_MEASURED, ["edge_ttt.adapt.engine defines no DEFAULT_POLICY"])
    cells = [r for r in paced if r["policy"] == default and r["paced"]["rate_hz"] == TARGET_RATE_HZ]
    if not cells:
        return Target(title, NOT_MEASURED, [f"no cell of {default} paced at {TARGET_RATE_HZ:g} Hz"])
    missed = [
        f"{r['model']} {r['corruption']} {r['order']} b={r['batch_size']}: "
        f"{r['paced']['missed']} of {r['windows']} missed"
        for r in cells
        if r["paced"]["missed"]
    ]
    summary = f"{len(cells)} cells of {default}, {sum(r['windows'] for r in cells)} windows"
    return Target(title, FAIL if missed else PASS, [summary, *missed])
