"""Issue #23's targets: the default policy against the peers built for correlated streams
(NOTE, UnMix-TNS, RoTTA), and each peer's own claim on our data (docs/adaptation-benchmark.md)."""

from __future__ import annotations

from benchmarks.adaptation.targets import (
    SHIFT_ORDERS,
    SHIFT_SEVERITY,
    TARGET_MODEL,
    Accuracies,
    mean_over_corruptions,
    severity_cells,
)
from benchmarks.harness import FAIL, NOT_MEASURED, PASS, Target

PEERS = ("note", "unmix-tns", "rotta")
PEER_BATCH = 1
MAX_BEHIND_PEER = 2.0  # points, any cell, against the best peer of its order
CLAIM_ORDER, CLAIM_BATCH, CLAIM_BASELINE = "class-sorted", 16, "tent"


def _cells(results: list[dict]) -> Accuracies:
    return {k: v for k, v in severity_cells(results).items() if k[0] == TARGET_MODEL}


def best_peer(acc: Accuracies, order: str, batch: int) -> tuple[str, float] | None:
    """The peer with the highest mean over the corruptions in this order and batch size."""
    means = [(mean_over_corruptions(acc, TARGET_MODEL, order, batch, p), p) for p in PEERS]
    measured = [(m, p) for m, p in means if m is not None]
    return None if not measured else max(measured)[::-1]


def target_default_vs_peers(results: list[dict], default: str | None) -> Target:
    title = (
        f"11. {default or 'default policy'} at batch size {PEER_BATCH}: mean over corruptions at least the "
        f"best peer's ({', '.join(PEERS)}) in {' and '.join(SHIFT_ORDERS)} order, and no cell more than "
        f"{MAX_BEHIND_PEER:.0f} points below that peer's ({TARGET_MODEL}, severity {SHIFT_SEVERITY})"
    )
    acc = _cells(results)
    details, failed, compared = [], False, 0
    for order in SHIFT_ORDERS:
        peer = best_peer(acc, order, PEER_BATCH)
        mine = default and mean_over_corruptions(acc, TARGET_MODEL, order, PEER_BATCH, default)
        if peer is None or mine is None:
            details.append(f"{order}: needs {default} and a peer on every corruption")
            continue
        name, theirs = peer
        compared += 1
        failed |= mine < theirs
        details.append(
            f"{order}: {default} {mine:.1f} vs best peer {name} {theirs:.1f} ({mine - theirs:+.1f})"
        )
        for key, value in sorted(acc.items()):
            own = acc.get((*key[:4], default)) if key[2:] == (order, PEER_BATCH, name) else None
            if own is not None and own < value - MAX_BEHIND_PEER:
                failed = True
                details.append(
                    f"{key[1]} {order}: {default} {own:.1f} vs {name} {value:.1f} ({own - value:+.1f})"
                )
    status = NOT_MEASURED if compared < len(SHIFT_ORDERS) and not failed else (FAIL if failed else PASS)
    return Target(title, status, details)


def target_peer_claims(results: list[dict]) -> Target:
    title = (
        f"12. each peer above {CLAIM_BASELINE} on the label-correlated ({CLAIM_ORDER}) stream at batch size "
        f"{CLAIM_BATCH}, mean over corruptions: the claim NOTE, UnMix-TNS and RoTTA all make, that they hold "
        f"where test-batch normalization fails ({TARGET_MODEL}, severity {SHIFT_SEVERITY})"
    )
    acc = _cells(results)
    base = mean_over_corruptions(acc, TARGET_MODEL, CLAIM_ORDER, CLAIM_BATCH, CLAIM_BASELINE)
    details, verdicts = [], []
    for peer in PEERS:
        mine = mean_over_corruptions(acc, TARGET_MODEL, CLAIM_ORDER, CLAIM_BATCH, peer)
        if base is None or mine is None:
            details.append(f"{peer}: needs {peer} and {CLAIM_BASELINE} on every corruption")
            continue
        verdicts.append(mine > base)
        details.append(f"{peer} {mine:.1f} vs {CLAIM_BASELINE} {base:.1f} ({mine - base:+.1f})")
    if len(verdicts) < len(PEERS):
        return Target(title, FAIL if not all(verdicts) else NOT_MEASURED, details)
    return Target(title, PASS if all(verdicts) else FAIL, details)
