"""Test-time training on a self-supervised auxiliary task (Sun et al., ICML 2020), for IMU windows.

The bundle's model has a second head on the shared encoder that names which transformation
(`edge_ttt.adapt.transforms`) was applied to a window; its training graph's loss is that head's
cross-entropy. At test time the device builds every transformed copy of each incoming window,
knows their labels, and steps the encoder's normalization parameters on that loss before it
predicts the originals with the updated parameters. The labels do not come from the classifier,
so a confident mistake is not reinforced, and a long run of one activity pulls no class forward.

Statistics: `stats="balanced"` (the default) normalizes (the auxiliary step and the prediction
alike) with the default policy's momentum-averaged stream moments, each batch weighted down when
its predicted class dominates the recent stream; `stats="ema"` with the unweighted averages of
`norm`; `stats="source"` with the source statistics, as the original per-sample method.

Episodic mode is per window, as the original per-sample method: each window of a batch is adapted
on alone, predicted, and forgotten. Nothing is remembered, averages included, so whatever `stats`
says the batch norms normalize with the source statistics mixed with the window's own moments, the
source counting as `episode_prior` windows (the prior of Schneider et al., NeurIPS 2020): the
window's weight is 1 / (episode_prior + 1). Per window rather than per batch, because a batch of
consecutive windows is mostly one activity, whose moments are not the stream's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from annotated_types import Interval

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.optim import SGD, Adam, Arrays
from edge_ttt.adapt.ort_model import OrtModel, Stats
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.policies.base import (
    CLASS_PRIOR_MOMENTUM,
    STAT_MOMENTUM,
    STAT_PRIOR_WINDOWS,
    Count,
    NonNegative,
    Policy,
    Positive,
    Rate,
)
from edge_ttt.adapt.policies.norm import Norm
from edge_ttt.adapt.statistics import ClassBalance, fold_moments
from edge_ttt.adapt.transforms import TRANSFORMS, transformed_copies

EPISODE_PRIOR_WINDOWS = 4.0  # episodic mode: the source statistics count as this many windows


class TestTimeTraining(Norm):
    """Per batch: `steps` optimizer steps on the auxiliary loss of the windows' transformed copies,
    then the prediction with the updated parameters. `optimizer` is SGD (with `sgd_momentum`) or
    Adam; in online mode the parameters, optimizer state and statistics carry on to the next batch.
    """

    __test__ = False  # not a pytest test class, whatever its name
    name = "ttt"
    aligned = True
    loss = "auxiliary"

    @dataclass(frozen=True)
    class Options(Policy.Options):
        lr: NonNegative = 1e-3
        steps: Count = 1
        optimizer: Literal["sgd", "adam"] = "sgd"
        sgd_momentum: Annotated[float, Interval(ge=0.0, lt=1.0)] = 0.0
        stats: Literal["balanced", "ema", "source"] = "balanced"
        momentum: Rate = STAT_MOMENTUM
        prior_windows: Positive | None = STAT_PRIOR_WINDOWS
        prior_momentum: Rate = CLASS_PRIOR_MOMENTUM
        episode_prior: NonNegative = EPISODE_PRIOR_WINDOWS

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.stats not in ("balanced", "ema", "source"):
                raise ValueError(f"stats must be 'balanced', 'ema' or 'source', got {self.stats!r}")

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        super().__init__(model, counters, options)
        aux = model.manifest.auxiliary
        assert aux is not None  # the policy factory refused bundles without one
        unknown = [t for t in aux.transformations if t not in TRANSFORMS]
        if unknown:
            raise ValueError(
                f"bundle {model.bundle_path} uses auxiliary transformations {unknown} that this "
                f"edge-ttt does not know ({', '.join(TRANSFORMS)}); upgrade edge-ttt or re-export"
            )
        self.transformations = list(aux.transformations)
        self.channels = list(model.manifest.model.channels)
        self.use_ema = self.options.stats != "source"

    def reset(self) -> None:
        super().reset()
        o = self.options
        self.balance = ClassBalance(self.classes, o.prior_momentum) if o.stats == "balanced" else None
        self.opt: SGD | Adam = (
            SGD(lr=o.lr, momentum=o.sgd_momentum) if o.optimizer == "sgd" else Adam(lr=o.lr)
        )

    def stats(self) -> Stats:
        return super().stats() if self.use_ema else self.source_stats

    def aux_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every transformed copy of the windows, their one-hot targets and equal weights (a mean)."""
        copies, labels = transformed_copies(x, self.channels, self.transformations)
        target = np.eye(len(self.transformations), dtype=np.float32)[labels]
        return copies, target, np.full(len(copies), 1.0 / len(copies), np.float32)

    def _step_and_predict(self, x: np.ndarray, stats: Stats, mix: float) -> Outputs:
        """The auxiliary steps on x's transformed copies, then the prediction of x."""
        copies, target, weights = self.aux_batch(x)
        for _ in range(self.options.steps):
            self.model.forward_backward(copies, weights, stats, mix, target)
            grads = self.model.gradient_vector()
            self.model.discard_gradients()
            self._set_params(self.opt.step(self.param_vector, grads))
            self.counters.adapt_steps += 1
        return self.model.forward(x, stats, mix)

    def update(self, x: np.ndarray) -> Outputs:
        out = self._step_and_predict(x, self.stats(), 0.0)
        if self.use_ema:
            fold_moments(self.moments, out.moments, out.logits.argmax(axis=1), self.balance)
        return out

    def episode(self, x: np.ndarray) -> Outputs:
        """Each window alone: adapt on it with the source statistics mixed with its own moments
        (its transformed copies with theirs), predict it, forget."""
        mix = 1.0 / (self.options.episode_prior + 1.0)
        alone = []
        for i in range(len(x)):
            with self.restoring():
                alone.append(self._step_and_predict(x[i : i + 1], self.source_stats, mix).logits)
        return Outputs(logits=np.concatenate(alone), moments={})  # no moments of the batch as one

    def state(self) -> Arrays:
        opt = self.opt.state(self.layout)
        flat = {**super().state(), **prefixed("params", self.params), **prefixed("opt", opt)}
        if self.balance is not None:
            flat["class_share"] = self.balance.share.copy()
        return flat

    def load_state(self, flat: Arrays) -> None:
        super().load_state(flat)
        self._load_params(flat)
        self.opt.load_state(unprefixed("opt", flat), self.layout)
        if self.balance is not None:
            self.balance.share = np.asarray(flat["class_share"], np.float64)
