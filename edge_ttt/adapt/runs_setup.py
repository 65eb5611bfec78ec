"""Where the label runs (`edge_ttt.adapt.label_runs`) are on by default: `AutoRuns`, ahead of the
policies whose statistics a run of one activity would drag (`Policy.label_runs`: the default,
`steady`), never in episodic mode (each batch is forgotten: there is no run to keep apart).
The published methods run as their papers run them (docs/adaptation.md, "Label runs")."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_ttt.adapt.label_runs import RunOptions
from edge_ttt.adapt.policies import POLICY_TYPES


@dataclass(frozen=True)
class AutoRuns:
    """The label runs as they are on by default, with these options."""

    options: RunOptions = field(default_factory=RunOptions)

    def resolve(self, policy: str, episodic: bool) -> RunOptions | None:
        """The options for `policy`; None: no label runs."""
        return self.options if POLICY_TYPES[policy].label_runs and not episodic else None


AUTO_RUNS = AutoRuns()
