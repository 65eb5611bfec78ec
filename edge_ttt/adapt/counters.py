"""What the engine did, counted: reported by replay, the agent's status and the drift summaries."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Counters:
    windows: int = 0
    adapt_steps: int = 0  # batches that changed the adapted state
    skipped_unreliable: int = 0  # valid windows a reliability filter kept out of a gradient step
    skipped_no_drift: int = 0  # valid windows with no gradient step because the input looks like source
    rejected_invalid: int = 0  # windows the input guard kept away from any state
    windows_filled: int = 0  # windows with a few dropped samples filled in (`guard.fill_gaps`), kept
    resets: int = 0  # returns to the source state
    rollbacks: int = 0  # returns to an earlier healthy snapshot
    fallbacks: int = 0  # switches to serving the source model (`edge_ttt.adapt.fallback`)
    windows_on_source: int = 0  # windows the source model served instead of the policy
    windows_in_runs: int = 0  # windows served in a label run (`edge_ttt.adapt.label_runs`)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
