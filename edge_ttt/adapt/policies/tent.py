"""`tent`: Tent (Wang et al., ICLR 2021), the reference entropy-minimization policy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.optim import Adam, Arrays
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.policies.base import NonNegative, Policy


class Tent(Policy):
    """Reference Tent: normalize with the batch's statistics, one Adam step on the mean entropy.

    Predictions are the logits before the step, as in Tent's `forward_and_adapt`.
    """

    name = "tent"
    batch_stats = True
    loss = "entropy"

    @dataclass(frozen=True)
    class Options(Policy.Options):
        lr: NonNegative = 1e-3

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        super().__init__(model, counters, options)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.opt = Adam(lr=self.options.lr)

    def update(self, x: np.ndarray) -> Outputs:
        out, _, grads = self._gradient(x, self.source_stats, 1.0, None)
        self._set_params(self.opt.step(self.param_vector, grads))
        self.counters.adapt_steps += 1
        return out

    def predict(self, x: np.ndarray) -> Outputs:
        return self.model.forward(x, self.source_stats, mix=1.0)

    def state(self) -> Arrays:
        return {**prefixed("params", self.params), **prefixed("adam", self.opt.state(self.layout))}

    def load_state(self, flat: Arrays) -> None:
        self._load_params(flat)
        self.opt.load_state(unprefixed("adam", flat), self.layout)
