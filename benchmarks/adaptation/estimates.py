"""The label-free accuracy estimates next to the truth, per (stream, device): what the estimate
target judges. A cell knows its served predictions' true accuracy, but the source model's true
accuracy on the same windows is in the `source` cell of the same stream, so the pairs are built
across cells here."""

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


def _cells(results: list[dict], model: str, batch: int, severity: int, policy: str) -> dict[tuple, dict]:
    return {
        (r["corruption"], r["order"]): r
        for r in results
        if (r["model"], r["batch_size"], r["severity"], r["policy"]) == (model, batch, severity, policy)
    }


def estimate_pairs(
    results: list[dict], model: str, batch: int, severity: int, policy: str
) -> tuple[list[Pair], list[Pair]]:
    """For `policy`'s cells: (its estimate of the served accuracy vs that accuracy) and (its
    estimate of the source model's accuracy vs the `source` cell's accuracy on the same stream),
    per device with both numbers known."""
    served, source = [], []
    sources = _cells(results, model, batch, severity, "source")
    for (corruption, order), cell in sorted(_cells(results, model, batch, severity, policy).items()):
        truth = {d["device"]: d["accuracy"] for d in sources.get((corruption, order), {}).get("devices", [])}
        for d in cell.get("devices", []):
            if d["accuracy"] is not None and d["estimated_accuracy"] is not None:
                served.append(
                    Pair(corruption, order, d["device"], 100 * d["estimated_accuracy"], 100 * d["accuracy"])
                )
            true_source = truth.get(d["device"])
            if true_source is not None and d["source_estimated_accuracy"] is not None:
                source.append(
                    Pair(
                        corruption,
                        order,
                        d["device"],
                        100 * d["source_estimated_accuracy"],
                        100 * true_source,
                    )
                )
    return served, source
