"""What an engine hands out about itself: a frozen value, so that nothing downstream (the drift
summaries) holds the engine or reaches into its policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from edge_ttt.adapt.policies import Policy


@dataclass(frozen=True)
class Report:
    """The engine's counters, and where its adapted state stands (`adaptation_level`)."""

    counters: Mapping[str, int]
    adaptation: Mapping[str, Any]

    @classmethod
    def of(
        cls,
        counters: Mapping[str, int],
        policy: Policy,
        mounting: str | None = None,
        noise_share: tuple[float, ...] | None = None,
    ) -> Report:
        """`mounting`: the orientation the input alignment found, in words (None: no search);
        `noise_share`: per channel, the white noise it found beyond the source's (None: not looked for)."""
        level = {**adaptation_level(policy), "mounting": mounting, "noise_share": noise_share}
        return cls(MappingProxyType(dict(counters)), MappingProxyType(level))


def adaptation_level(policy: Policy, eps: float = 1e-5) -> dict[str, Any]:
    """The policy's parameter change from source (L2, and relative to the source norm) and, for a
    policy that keeps statistics of its own, per batch-norm layer the mean over channels of
    |mu - mu_s| / sqrt(var_s + eps) and of |ln((var + eps) / (var_s + eps))| (None otherwise)."""
    layers = shifts = ratios = None
    if policy.keeps_stats:
        stats, source = policy.stats(), policy.source_stats
        layers = tuple(source)
        shifts, ratios = [], []
        for name in layers:
            (m, v), (ms, vs) = stats[name], source[name]
            m, v, ms, vs = (np.asarray(a, np.float64) for a in (m, v, ms, vs))
            shifts.append(float(np.mean(np.abs(m - ms) / np.sqrt(vs + eps))))
            ratios.append(float(np.mean(np.abs(np.log((v + eps) / (vs + eps))))))
        shifts, ratios = tuple(shifts), tuple(ratios)
    change, relative = policy.param_change()
    return {
        "norm_layers": layers,
        "norm_mean_shift": shifts,
        "norm_log_var_ratio": ratios,
        "param_change": change,
        "param_change_rel": relative,
    }
