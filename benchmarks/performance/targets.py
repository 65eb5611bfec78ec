"""Issue #9's targets, and issue #18's cost target, judged from one run's numbers."""

from __future__ import annotations

from benchmarks.harness import FAIL, NOT_MEASURED, PASS, Target
from benchmarks.performance.measure import DEFAULT_POLICY, TORCH_TENT, TRAIN_PASS, UNGATED

MAX_VS_TORCH_TENT = 0.5  # default policy / PyTorch Tent step, batch size 1
MAX_VS_INFERENCE = 3.0  # default policy / engine inference only, batch size 1
MAX_RSS_SHARE = 1 / 3  # engine fleet peak RSS / PyTorch fleet peak RSS
MIN_REPLAY_SPEED = 200.0  # x real time
NO_HARM_POINTS = 1.0  # the adaptation benchmark's no-harm margin, in accuracy points


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
    # The default policy's cost when it adapts: its gate open, a gradient pass every step_every
    # windows, its label-free estimates and its fallback's source passes included (issue #18).
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
