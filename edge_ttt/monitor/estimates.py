"""Per device, label-free estimates of accuracy over its latest windows: of the predictions it
served and of the source model (on the windows the engine ran it on), set against the reference
(the source model's held-out accuracy).

The estimate is the class-mix bound of each model's predicted classes (docs/adaptation.md): a model
cannot be right more often than its predicted mix overlaps the source class shares, when the stream's
classes come in about those proportions; times how steady its classes were from one window to the
next against the source model's on held-out windows (`edge_ttt.steadiness`, counted on the device),
which catches part of the errors that keep the mix. It needs a span long enough to hold the stream's
classes: hence the horizon in windows (`[alerts] estimate_windows`), and no estimate where the
classes seen are too few to say anything of the models (`MIX_FRACTION`). The summaries' ATC shares
are not used here: on clean held-out wearers the source model's ranged from 39 % to 98 % at true
accuracies of 80 % and 84 %, which read as losses that were not there (docs/monitoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge_ttt.class_mix import class_mix_cap, effective_classes
from edge_ttt.monitor.intervals import Intervals, numbers, sane
from edge_ttt.steadiness import stay_factor

MIX_FRACTION = 0.5  # the bound applies where the classes seen hold half the prior's effective classes
COUNTED = ("class_counts", "source_class_counts")
STAYS = (("stays_kept", "stays_expected"), ("source_stays_kept", "source_stays_expected"))
COLUMNS = ("windows", *COUNTED, *(c for pair in STAYS for c in pair), "ref_class_prior", "ref_accuracy")


@dataclass(frozen=True)
class Estimates:
    served: float | None  # estimated accuracy of the served predictions
    source: float | None  # of the source model on the same stretch (None: no source pass)
    reference: float | None  # the source model's held-out accuracy, as the summaries carry it
    windows: int  # windows of the horizon

    def lost(self, which: str) -> float | None:
        """Reference minus the `served` or `source` estimate (None where either is unknown)."""
        value = getattr(self, which)
        return None if value is None or self.reference is None else self.reference - value


@dataclass(frozen=True)
class Rolling:
    """A device's estimates at the end of each of its intervals, each over the intervals up to it
    that hold `span` windows (NaN: none)."""

    served: np.ndarray
    source: np.ndarray
    windows: np.ndarray  # windows behind each
    reference: float | None

    def latest(self) -> Estimates:
        def last(values: np.ndarray) -> float | None:
            return None if np.isnan(values[-1]) else float(values[-1])

        return Estimates(last(self.served), last(self.source), self.reference, int(self.windows[-1]))


def _counts(table: pa.Table, name: str, k: int) -> np.ndarray:
    """A list column of k counts per row as [rows, k]; rows without them (null, other length) NaN."""
    column = table.column(name).combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
    out = np.full((len(column), k), np.nan)
    fits = lengths == k
    if k and fits.any():  # k = 0: a row without classes (null), nothing to count
        out[fits] = (
            pc.list_flatten(column.filter(pa.array(fits)))
            .to_numpy(zero_copy_only=False)  # a null count (a broken payload) is NaN, not an error
            .astype(np.float64)
            .reshape(-1, k)
        )
    return sane(out)  # a negative count (a broken payload) is NaN too


def _span_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of `values` rows [starts[j], j] for each j, NaN rows counting as 0."""
    total = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(np.nan_to_num(values), axis=0)])
    return total[1:] - total[starts]


def _bounds(table: pa.Table, prior: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class-mix bounds of the served and the source model's classes at each interval, times
    their steadiness (`_steadiness`); NaN where the two models' classes together hold fewer than
    MIX_FRACTION of the prior's effective classes: a stream in one long activity (a sedentary
    wearer, a label run), where a low bound says nothing of the models."""
    served, source = (_span_sums(_counts(table, c, len(prior)), starts) for c in COUNTED)
    together = served + source
    with np.errstate(invalid="ignore", divide="ignore"):
        mix = effective_classes(together / together.sum(axis=-1, keepdims=True))
    diverse = np.nan_to_num(mix) >= MIX_FRACTION * effective_classes(prior)
    steady = (_steadiness(table, kept, expected, starts) for kept, expected in STAYS)
    return tuple(
        np.where(diverse, class_mix_cap(c, prior) * f, np.nan)
        for c, f in zip((served, source), steady, strict=True)
    )


def _steadiness(table: pa.Table, kept: str, expected: str, starts: np.ndarray) -> np.ndarray:
    """`stay_factor` over each span; 1 where none was expected (older summaries, which lack the
    counts, or no pair of windows)."""
    return stay_factor(*(_span_sums(numbers(table, name), starts) for name in (kept, expected)))


def rolling(intervals: Intervals, i: int, span: int) -> Rolling:
    """Device i's estimates at each of its intervals (see the module docstring for which estimate)."""
    at = intervals.scores(i)
    table = intervals.table.slice(at.start, at.stop - at.start)
    windows = np.nan_to_num(numbers(table, "windows"))
    held = np.concatenate([[0.0], np.cumsum(windows)])
    # the latest start whose intervals up to j hold `span` windows (0 when none does)
    starts = np.maximum(np.searchsorted(held, held[1:] - span, side="right") - 1, 0)
    latest = (
        table.slice(len(table) - 1).select(["class_counts", "ref_class_prior", "ref_accuracy"]).to_pylist()[0]
    )
    k = len(latest["class_counts"] or [])
    prior = np.asarray(latest["ref_class_prior"] or np.full(k, 1.0 / max(k, 1)), np.float64)
    served, source = _bounds(table, prior, starts)
    return Rolling(served, source, held[1:] - held[starts], _share(latest["ref_accuracy"]))


def _share(value: float | None) -> float | None:
    """A share (0 to 1) as the summary carries it; None where it cannot be one (NaN, 7.5)."""
    return value if value is not None and 0.0 <= value <= 1.0 else None


def device_estimates(intervals: Intervals, i: int, span: int) -> Estimates:
    """Device i's estimates over its latest intervals holding `span` windows."""
    return rolling(intervals, i, span).latest()


def fleet_estimates(intervals: Intervals, span: int) -> list[Estimates]:
    """Every device's latest estimates, in `intervals.devices` order (the alerts and the report
    share one pass)."""
    return [device_estimates(intervals, i, span) for i in range(len(intervals.devices))]
