"""The source reference a drift summary is scored against: the manifest's channel histograms and
moments, its in-distribution PSI limits, class prior and held-out accuracy, as plain values that
travel in every summary (so merged summaries are scored again, and the fleet side needs no bundle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reference:
    """The source distribution a summary is scored against (from the manifest's `reference`)."""

    channels: tuple[str, ...]
    mean: tuple[float, ...]
    var: tuple[float, ...]
    edges: tuple[tuple[float, ...], ...]  # inner histogram edges per channel
    share: tuple[tuple[float, ...], ...]  # source share per bin, per channel
    classes: tuple[str, ...]
    limit_windows: tuple[int, ...] = ()  # interval sizes of the in-distribution PSI limits
    limit_psi: tuple[tuple[float, ...], ...] = ()  # [size][channel]; empty: not calibrated
    class_prior: tuple[float, ...] = ()  # source class shares; empty: not recorded
    accuracy: float | None = None  # the source model's held-out validation accuracy
    stay: tuple[float, ...] = ()  # its held-out class stay rates per lag (`edge_ttt.steadiness`); empty: none

    @classmethod
    def from_manifest(cls, manifest: Any) -> Reference:
        ref = manifest.reference.channels
        limits = manifest.reference.drift_limits
        return cls(
            tuple(c.name for c in ref),
            tuple(c.mean for c in ref),
            tuple(c.var for c in ref),
            tuple(tuple(c.hist_edges) for c in ref),
            tuple(tuple(c.hist_share) for c in ref),
            tuple(manifest.model.classes),
            () if limits is None else tuple(limits.windows),
            () if limits is None else tuple(tuple(row) for row in limits.psi),
            tuple(manifest.reference.class_prior or ()),
            manifest.reference.val_accuracy,
            tuple(manifest.reference.stay or ()),
        )
