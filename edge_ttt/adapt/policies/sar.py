"""`sar`: SAR (Niu et al., ICLR 2023): entropy filter, sharpness-aware update, reset on collapse."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.optim import SGD, Arrays
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.policies.base import NonNegative, Policy


class Sar(Policy):
    """Reference SAR: reliable-entropy filter, SAM two-pass update, reset when the loss EMA collapses.

    Filter E0 = 0.4 ln C; perturbation rho = 0.05 along the normalized gradient; SGD with
    momentum 0.9 at the paper's rate (0.00025 for batches of 64 and up, (0.00025 / 64) * 2 * B
    below 32) unless `lr` is given; reset to source when the EMA (0.9) of the second-pass loss
    falls below 0.2.
    """

    name = "sar"
    batch_stats = True
    loss = "entropy"
    rho = 0.05
    reset_below = 0.2

    @dataclass(frozen=True)
    class Options(Policy.Options):
        lr: NonNegative | None = None  # None: the paper's rate for the batch size

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        super().__init__(model, counters, options)
        self.margin = 0.4 * math.log(self.classes)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.opt = SGD(lr=self.options.lr or 0.0, momentum=0.9)
        self.loss_ema: float | None = None

    def update(self, x: np.ndarray) -> Outputs:
        n = len(x)
        if self.options.lr is None:  # a function of the batch size, set before every step
            self.opt.lr = 0.00025 if n >= 32 else 0.00025 / 64 * n * 2

        def first(out: Outputs) -> np.ndarray:
            keep = out.entropy < self.margin
            return keep / max(keep.sum(), 1)

        out, w1, grads = self._gradient(x, self.source_stats, 1.0, first)
        self.counters.skipped_unreliable += int((w1 == 0).sum())
        if grads is not None:
            self._sharpness_aware_step(x, w1, grads)
        if self.loss_ema is not None and self.loss_ema < self.reset_below:
            self.reset()
            self.counters.resets += 1
        return out

    def _sharpness_aware_step(self, x: np.ndarray, w1: np.ndarray, grads: np.ndarray) -> None:
        """Ascend to the worst point within rho, take the gradient there, step from the origin."""
        norm = math.sqrt(self._layer_sum(grads.astype(np.float64) ** 2))
        scale = self.rho / (norm + 1e-12)
        origin = self.param_vector
        self.model.write_parameters(origin + scale * grads)

        def second(out: Outputs) -> np.ndarray:
            keep = (w1 > 0) & (out.entropy < self.margin)
            return keep / max(keep.sum(), 1)

        perturbed, w2, grads2 = self._gradient(x, self.source_stats, 1.0, second)
        self.model.write_parameters(origin)
        if grads2 is not None:
            loss = float(perturbed.entropy[w2 > 0].mean())
            self.loss_ema = loss if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * loss
            self._set_params(self.opt.step(origin, grads2))
            self.counters.adapt_steps += 1

    def predict(self, x: np.ndarray) -> Outputs:
        return self.model.forward(x, self.source_stats, mix=1.0)

    def state(self) -> Arrays:
        ema = np.asarray(np.nan if self.loss_ema is None else self.loss_ema)
        sgd = self.opt.state(self.layout)
        return {**prefixed("params", self.params), **prefixed("sgd", sgd), "loss_ema": ema}

    def load_state(self, flat: Arrays) -> None:
        self._load_params(flat)
        self.opt.load_state(unprefixed("sgd", flat), self.layout)
        ema = float(flat["loss_ema"])
        self.loss_ema = None if math.isnan(ema) else ema
