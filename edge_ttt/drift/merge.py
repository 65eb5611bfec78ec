"""Several drift summaries as one: consecutive intervals of a device, or several devices (the
monitor's spans, a fleet's totals). Pure."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable

from edge_ttt.drift.summary import COUNTERS, DriftSummary, add_counts

_MERGED = uuid.UUID("6c1d5e2a-3f0b-4b8e-9a51-0d7e4c2f9b10")  # namespace of merged summaries' ids
ANY = "*"  # an identity field that differs between merged summaries


def _same(values: Iterable[str]) -> str:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else ANY


def merge_summaries(summaries: Iterable[DriftSummary]) -> DriftSummary:
    """Exact for counts, moments and histograms; the accuracy estimates are window-weighted means.
    Identity fields that differ become "*"; the adaptation level is the latest interval's when all
    are of one (device, stream), else None.
    The merged id is derived from the inputs' ids, so merging the same summaries twice gives one id.
    """
    parts = sorted(summaries, key=lambda s: (s.end, s.summary_id))
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    if any(p.reference != first.reference for p in parts):
        raise ValueError("summaries scored against different references cannot merge")
    out = copy.deepcopy(first)  # the inputs stay as they are
    out.summary_id = uuid.uuid5(_MERGED, ",".join(sorted(p.summary_id for p in parts))).hex
    for p in parts[1:]:
        out.moments = out.moments + p.moments
        out.channel_hist = [a + b for a, b in zip(out.channel_hist, p.channel_hist, strict=True)]
        out.class_counts = out.class_counts + p.class_counts
        out.source_class_counts = add_counts(out.source_class_counts, p.source_class_counts)
        out.confidence, out.entropy, out.latency = (
            out.confidence + p.confidence,
            out.entropy + p.entropy,
            out.latency + p.latency,
        )
        out.estimated = out.estimated + p.estimated
        out.source_estimated = out.source_estimated + p.source_estimated
        out.stays, out.source_stays = out.stays + p.stays, out.source_stays + p.source_stays
        out.windows += p.windows
        out.invalid_windows += p.invalid_windows
        out.counters = {k: out.counters.get(k, 0) + p.counters.get(k, 0) for k in COUNTERS}
        out.spool_dropped += p.spool_dropped
        out.frames_missing += p.frames_missing
    for name in ("device", "stream", "model_sha256", "policy", "agent_version"):
        setattr(out, name, _same(getattr(p, name) for p in parts))
    out.start, out.end = min(p.start for p in parts), max(p.end for p in parts)
    one_stream = ANY not in (out.device, out.stream)
    out.adaptation = parts[-1].adaptation if one_stream else None
    return out
