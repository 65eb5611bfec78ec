"""`norm`: batch norms normalize with momentum averages of the stream's moments; no gradients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.optim import Arrays
from edge_ttt.adapt.ort_model import OrtModel, Stats
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.policies.base import STAT_MOMENTUM, STAT_PRIOR_WINDOWS, Policy, Positive, Rate
from edge_ttt.adapt.statistics import LayerMoments, fold_moments


class Norm(Policy):
    """Batch norms normalize with EMAs of the stream's raw moments (see `MomentEMA`); no gradients.

    The horizon is long (about 500 windows, ten minutes at a 1.28 s hop) so that it spans many
    activities; the source statistics count as 100 windows, so the first windows move it fast.

    Group and layer norms normalize every window by its own moments, so for models without batch
    norms this policy equals `source`.
    """

    name = "norm"
    plain = True
    keeps_stats = True

    @dataclass(frozen=True)
    class Options(Policy.Options):
        momentum: Rate = STAT_MOMENTUM
        prior_windows: Positive | None = STAT_PRIOR_WINDOWS

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        super().__init__(model, counters, options)
        self.reset()

    def reset(self) -> None:
        """Back to the source statistics (the parameters never leave source)."""
        super().reset()
        self.moments = LayerMoments(self.source_stats, self.options.momentum, self.options.prior_windows)

    def stats(self) -> Stats:
        return self.moments.stats()

    def update(self, x: np.ndarray) -> Outputs:
        out = self.model.forward(x, self.stats())
        fold_moments(self.moments, out.moments, out.logits.argmax(axis=1))
        self.counters.adapt_steps += bool(self.moments)
        return out

    def predict(self, x: np.ndarray) -> Outputs:
        return self.model.forward(x, self.stats())

    def state(self) -> Arrays:
        return self.moments.state()

    def load_state(self, flat: Arrays) -> None:
        self.moments.load_state(flat)
