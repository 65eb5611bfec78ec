"""The label-free accuracy estimates next to the truth, per (stream, device): what the estimate
target judges (the default policy's cells, and the `source` cells for the source model)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pair:
    """One device of one stream: an estimate and the true accuracy it estimates, in %."""

    corruption: str
    order: str
    device: str
    estimated: float
    true: float

    @property
    def error(self) -> float:
        return self.estimated - self.true


def estimate_pairs(results: list[dict], model: str, batch: int, severity: int, policy: str) -> list[Pair]:
    """For `policy`'s cells: its estimate of the accuracy it served against that accuracy, per
    (stream, device) with both known."""
    return [
        Pair(r["corruption"], r["order"], d["device"], 100 * d["estimated_accuracy"], 100 * d["accuracy"])
        for r in sorted(results, key=lambda r: (r["corruption"], r["order"]))
        if (r["model"], r["batch_size"], r["severity"], r["policy"]) == (model, batch, severity, policy)
        for d in r.get("devices", [])
        if d["accuracy"] is not None and d["estimated_accuracy"] is not None
    ]
