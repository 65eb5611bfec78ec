"""Adaptation policies: what to normalize with, which windows to learn from, how to step.

Every policy sees only windows that passed the input guard (`update`), and predicts the others
without touching its state (`predict`). ORT computes logits, layer moments and gradients; the
statistics, optimizers and guards here are numpy, so a policy's whole state is a dict of arrays
that can be snapshotted, rolled back and restored exactly.

- `source`: the source model, untouched.
- `norm`: batch norms normalize with momentum averages of the stream's first and second moments.
- `tent`: Tent (Wang et al., 2021): batch statistics, entropy minimization of the norm affines, Adam.
- `sar`: SAR (Niu et al., 2023): entropy filter, sharpness-aware two-pass update, reset on collapse.
- `steady` (default): class-balanced momentum statistics + filtered, class-balanced entropy steps
  on the norm affines, averaged (EMA) and anchored to source, with collapse rollback.
- `ttt` (`edge_ttt.adapt.auxiliary`): test-time training on a self-supervised auxiliary task; needs
  a bundle with an auxiliary head, on which the entropy policies refuse to run.

Every gradient policy also runs episodically (`episode`): adapt on a batch, predict, forget.

Results on the smartwatch data are in docs/adaptation.md; the benchmark that measures them is
benchmarks/adaptation.py.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.drift_gate import DriftGate
from edge_ttt.adapt.guard import CollapseDetector
from edge_ttt.adapt.optim import SGD, Adam, Arrays
from edge_ttt.adapt.ort_model import OrtModel, Outputs, Stats
from edge_ttt.adapt.statistics import ClassBalance, LayerMoments, fold_moments
from edge_ttt.manifest import Manifest

STAT_MOMENTUM = 0.002  # weight of one window in the moment EMAs: a horizon of about 500 windows
STAT_PRIOR_WINDOWS = 100.0  # the source statistics count as this many windows
CLASS_PRIOR_MOMENTUM = 0.02  # EMA of the predicted-class histogram, for class-balanced statistics


def _prefixed(prefix: str, flat: Arrays) -> Arrays:
    return {f"{prefix}/{k}": v for k, v in flat.items()}


def _unprefixed(prefix: str, flat: Arrays) -> Arrays:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in flat.items() if k.startswith(prefix + "/")}


class PolicyMismatchError(ValueError):
    """The policy steps on a loss that the bundle's training graph does not compute."""


def bundle_loss(manifest: Manifest) -> str:
    """The loss the bundle's training graph computes: 'auxiliary' or 'entropy'."""
    return "entropy" if manifest.auxiliary is None else "auxiliary"


def fits(policy: type[Policy], manifest: Manifest) -> bool:
    """Whether the policy can run on the bundle (gradient-free policies run on any)."""
    return policy.loss is None or policy.loss == bundle_loss(manifest)


# Never change after __init__, so `episode` does not copy them.
_NEVER_CHANGE = ("model", "counters", "source_params", "source_stats", "source_vector", "layout")


class Policy:
    """Base: holds the model, the source parameters and statistics, and the shared counters."""

    name: ClassVar[str]
    loss: ClassVar[str | None] = None  # the training loss its steps need: 'entropy', 'auxiliary', None

    def __init__(self, model: OrtModel, counters: Counters) -> None:
        manifest = model.manifest
        if not fits(type(self), manifest):
            usable = ", ".join(p.name for p in POLICY_TYPES.values() if fits(p, manifest))
            raise PolicyMismatchError(
                f"policy {self.name!r} steps on the {self.loss} loss, but bundle {model.bundle_path} "
                f"(model {manifest.model.name}) was exported with the {bundle_loss(manifest)} loss; "
                f"run it with one of {usable}, or export a model made for {self.name!r}"
                + (" (a model with an auxiliary head, e.g. cnn-bn-ttt)" if self.loss == "auxiliary" else "")
            )
        self.model = model
        self.counters = counters
        self.classes = len(model.manifest.model.classes)
        self.source_stats = model.source_stats()
        self.source_params = model.parameters()
        self.layout = model.layout  # of the flat parameter vectors (`edge_ttt.adapt.flat`)
        self.source_vector = self.layout.flatten(self.source_params, np.float32)
        self.param_vector = self.source_vector  # what the model must hold while this policy runs
        self._source_norm = math.sqrt(self._layer_sum(self.source_vector.astype(np.float64) ** 2))

    @property
    def params(self) -> Arrays:
        """The predicting parameters by name (views of `param_vector`)."""
        return self.layout.split(self.param_vector)

    def _layer_sum(self, vector: np.ndarray) -> float:
        """The sum of a flat vector, layer by layer in the manifest's order: sums over layers,
        not over the whole vector, round as they always have."""
        parts = self.layout.split(vector)
        return sum(float(parts[k].sum()) for k in self.source_params)

    def param_change(self) -> tuple[float, float]:
        """How far the predicting parameters moved from source: L2 distance, and that distance
        relative to the source parameters' norm (guards and drift summaries report it)."""
        sq = self._layer_sum((self.param_vector.astype(np.float64) - self.source_vector) ** 2)
        return math.sqrt(sq), math.sqrt(sq) / max(self._source_norm, 1e-12)

    def activate(self) -> None:
        """Load this policy's parameters into a model that other policies (devices) share."""
        self.model.write_parameters(self.param_vector)

    def update(self, x: np.ndarray) -> Outputs:
        """Logits for valid windows; may change the policy's state."""
        return self.predict(x)

    def predict(self, x: np.ndarray) -> Outputs:
        """Logits without any state change."""
        return self.model.forward(x, self.source_stats)

    def episode(self, x: np.ndarray) -> Outputs:
        """Episodic mode: `update` on x (adapt, predict), then return to the state before it."""
        return self._forgetting(self.update, x)

    def _forgetting(self, adapt: Callable[[np.ndarray], Outputs], x: np.ndarray) -> Outputs:
        """`adapt(x)`, then back to the state before it, bit for bit (everything the policy holds,
        not only `state()`: snapshots, detectors, gates)."""
        saved = copy.deepcopy({k: v for k, v in vars(self).items() if k not in _NEVER_CHANGE})
        try:
            return adapt(x)
        finally:
            vars(self).update(saved)
            self.model.write_parameters(self.param_vector)

    def state(self) -> Arrays:
        return {}

    def load_state(self, flat: Arrays) -> None:
        """Restore what `state` returned."""

    def _gradient(self, x: np.ndarray, stats: Stats, mix: float, weigh) -> tuple:
        """One entropy gradient with per-window weights `weigh(outputs)` (None: uniform).

        When the weights are known to come out uniform (batch size 1, or `weigh` None), the
        training pass comes first and its logits are the outputs; the gradient is rescaled
        exactly (the loss is linear in the weights). Otherwise the batch is first run through
        the eval graph (the same logits and moments bit for bit, without a backward pass) and
        then through one training pass: with uniform weights, rescaled, when the weights come
        out equal, else with the final weights, and none when every weight is 0. Returns
        (outputs, weights, flat gradients or None when every weight is 0).
        """
        n = len(x)
        uniform = np.full(n, 1.0 / n, np.float32)
        trained = n == 1 or weigh is None
        if trained:
            out = self.model.forward_backward(x, uniform, stats, mix)
        else:
            out = self.model.forward(x, stats, mix)
        weights = np.full(n, 1.0 / n) if weigh is None else np.asarray(weigh(out), np.float64)
        if not weights.any():
            self.model.discard_gradients()
            return out, weights, None
        if (weights == weights[0]).all():
            if not trained:
                self.model.forward_backward(x, uniform, stats, mix)
            grads = self.model.gradient_vector() * (weights[0] * n)
        else:  # only when not trained: uniform weights never get here
            self.model.forward_backward(x, weights.astype(np.float32), stats, mix)
            grads = self.model.gradient_vector()
        self.model.discard_gradients()
        return out, weights, grads

    def _set_params(self, vector: np.ndarray) -> None:
        self.param_vector = np.asarray(vector, np.float32)
        self.model.write_parameters(self.param_vector)

    def _load_params(self, flat: Arrays) -> None:
        """Restore the predicting parameters from a state's `params/<name>` arrays."""
        self._set_params(self.layout.flatten(_unprefixed("params", flat), np.float32))


class Source(Policy):
    name = "source"


class Norm(Policy):
    """Batch norms normalize with EMAs of the stream's raw moments (see `MomentEMA`); no gradients.

    The horizon is long (about 500 windows, ten minutes at a 1.28 s hop) so that it spans many
    activities; the source statistics count as 100 windows, so the first windows move it fast.

    Group and layer norms normalize every window by its own moments, so for models without batch
    norms this policy equals `source`.
    """

    name = "norm"

    def __init__(
        self,
        model: OrtModel,
        counters: Counters,
        momentum: float = STAT_MOMENTUM,
        prior_windows: float | None = STAT_PRIOR_WINDOWS,
    ) -> None:
        super().__init__(model, counters)
        self.moments = LayerMoments(self.source_stats, momentum, prior_windows)

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


class Tent(Policy):
    """Reference Tent: normalize with the batch's statistics, one Adam step on the mean entropy.

    Predictions are the logits before the step, as in Tent's `forward_and_adapt`.
    """

    name = "tent"
    loss = "entropy"

    def __init__(self, model: OrtModel, counters: Counters, lr: float = 1e-3) -> None:
        super().__init__(model, counters)
        self.opt = Adam(lr=lr)

    def update(self, x: np.ndarray) -> Outputs:
        out, _, grads = self._gradient(x, self.source_stats, 1.0, None)
        self._set_params(self.opt.step(self.param_vector, grads))
        self.counters.adapt_steps += 1
        return out

    def predict(self, x: np.ndarray) -> Outputs:
        return self.model.forward(x, self.source_stats, mix=1.0)

    def state(self) -> Arrays:
        return {**_prefixed("params", self.params), **_prefixed("adam", self.opt.state(self.layout))}

    def load_state(self, flat: Arrays) -> None:
        self._load_params(flat)
        self.opt.load_state(_unprefixed("adam", flat), self.layout)


class Sar(Policy):
    """Reference SAR: reliable-entropy filter, SAM two-pass update, reset when the loss EMA collapses.

    Filter E0 = 0.4 ln C; perturbation rho = 0.05 along the normalized gradient; SGD with
    momentum 0.9 at the paper's rate (0.00025 for batches of 64 and up, (0.00025 / 64) * 2 * B
    below 32); reset to source when the EMA (0.9) of the second-pass loss falls below 0.2.
    """

    name = "sar"
    loss = "entropy"
    rho = 0.05
    reset_below = 0.2

    def __init__(self, model: OrtModel, counters: Counters, lr: float | None = None) -> None:
        super().__init__(model, counters)
        self.margin = 0.4 * math.log(self.classes)
        self.lr = lr
        self._reset()

    def _reset(self) -> None:
        self._set_params(self.source_vector)
        self.opt = SGD(lr=self.lr or 0.0, momentum=0.9)
        self.loss_ema: float | None = None

    def update(self, x: np.ndarray) -> Outputs:
        n = len(x)
        if self.lr is None:
            self.opt.lr = 0.00025 if n >= 32 else 0.00025 / 64 * n * 2

        def first(out: Outputs) -> np.ndarray:
            keep = out.entropy < self.margin
            return keep / max(keep.sum(), 1)

        out, w1, grads = self._gradient(x, self.source_stats, 1.0, first)
        self.counters.skipped_unreliable += int((w1 == 0).sum())
        if grads is not None:
            self._sharpness_aware_step(x, w1, grads)
        if self.loss_ema is not None and self.loss_ema < self.reset_below:
            self._reset()
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
        return {**_prefixed("params", self.params), **_prefixed("sgd", sgd), "loss_ema": ema}

    def load_state(self, flat: Arrays) -> None:
        self._load_params(flat)
        self.opt.load_state(_unprefixed("sgd", flat), self.layout)
        ema = float(flat["loss_ema"])
        self.loss_ema = None if math.isnan(ema) else ema


@dataclass(frozen=True)
class SteadyConfig:
    """Knobs of the default policy; thresholds on entropy are quantiles of the source's own."""

    stat_momentum: float = STAT_MOMENTUM
    stat_prior_windows: float = STAT_PRIOR_WINDOWS
    lr: float = 1e-4  # Adam on the fast norm affines
    param_ema: float = 0.2  # weight of the fast parameters in the averaged ones used to predict
    anchor: float = 0.05  # per step, pull the fast parameters this share of the way back to source
    reliable_quantile: float = 0.5  # learn only from windows below this source entropy quantile
    prior_momentum: float = CLASS_PRIOR_MOMENTUM
    gate_shift: float = 0.5  # drift gate: mean input shift, in source stds, that opens it
    gate_spread: float = 0.5  # drift gate: mean |log variance ratio| that opens it
    collapse_entropy_ratio: float = 0.5  # collapse floor = ratio * source 5% entropy quantile
    collapse_horizon: int = 64
    watch_every: int = 8  # updates between two looks of the collapse detector
    snapshot_every: int = 32  # updates between snapshots (a multiple of watch_every)
    rollback_cooldown: int = 64

    def __post_init__(self) -> None:
        if self.watch_every < 1 or self.snapshot_every % self.watch_every:
            raise ValueError(
                f"snapshot_every ({self.snapshot_every}) must be a multiple of "
                f"watch_every ({self.watch_every})"
            )


class Steady(Policy):
    """The default: safe at batch size 1 on label-correlated, noisy streams.

    1. Batch norms normalize with long-horizon moment EMAs started from source (as `norm`), but
       each window counts less when its pseudo-class dominates the recent predictions: a long
       run of one activity cannot drag the statistics toward that activity. (Separate estimates
       per pseudo-class were tried and lost: misclassified windows contaminate them.)
    2. While the drift gate (`DriftGate`) sees the input away from source, entropy steps only
       from reliable windows (entropy below a source quantile), weighted
       down when their pseudo-class dominates recent predictions (so a run cannot pull the
       model toward always predicting it), with Adam on fast parameters that are pulled back
       toward source every step; predictions use an EMA of the fast parameters.
    3. A collapse detector (`CollapseDetector`) rolls back to the older of the last two healthy
       snapshots, and resets to source when collapse returns within a cooldown.
    """

    name = "steady"
    loss = "entropy"

    def __init__(self, model: OrtModel, counters: Counters, **options: float) -> None:
        super().__init__(model, counters)
        self.cfg = cfg = SteadyConfig(**options)
        ref = model.manifest.reference.entropy
        self.reliable_entropy = float(np.interp(cfg.reliable_quantile, ref.q, ref.value))
        self.detector = CollapseDetector(
            entropy_floor=cfg.collapse_entropy_ratio * float(np.interp(0.05, ref.q, ref.value)),
            classes=self.classes,
            horizon=cfg.collapse_horizon,
        )
        self.snapshots: deque[Arrays] = deque(maxlen=2)
        self._to_source()

    def _to_source(self) -> None:
        self.moments = LayerMoments(self.source_stats, self.cfg.stat_momentum, self.cfg.stat_prior_windows)
        ref = self.model.manifest.reference.channels
        self.gate = DriftGate.from_reference(
            np.array([c.mean for c in ref]),
            np.array([c.var for c in ref]),
            self.cfg.stat_momentum,
            self.cfg.stat_prior_windows,
            self.cfg.gate_shift,
            self.cfg.gate_spread,
        )
        self.fast = self.source_vector.astype(np.float64)  # flat, as `param_vector`
        self._set_params(self.source_vector)
        self.opt = Adam(lr=self.cfg.lr)
        self.balance = ClassBalance(self.classes, self.cfg.prior_momentum)
        self.updates = 0
        self.last_rollback = -(10**9)
        self.detector.clear()

    def stats(self) -> Stats:
        return self.moments.stats()

    def _weights(self, out: Outputs) -> np.ndarray:
        h = out.entropy
        reliable = h < self.reliable_entropy
        return (
            reliable
            * self.balance.weights(out.logits.argmax(axis=1))
            * np.exp(self.reliable_entropy - h)
            / len(out.logits)
        )

    def update(self, x: np.ndarray) -> Outputs:
        cfg = self.cfg
        self.gate.observe(x)
        drifting = self.gate.open
        if drifting:
            out, weights, grads = self._gradient(x, self.stats(), 0.0, self._weights)
        else:  # nothing to correct: no backward pass, no step
            out, weights, grads = self.model.forward(x, self.stats()), np.zeros(len(x)), None
            self.counters.skipped_no_drift += len(x)
        classes = out.logits.argmax(axis=1)
        fold_moments(self.moments, out.moments, classes, self.balance)
        if drifting:
            self.counters.skipped_unreliable += int((weights == 0).sum())
        if grads is not None:
            fast = self.opt.step(self.fast, grads)
            self.fast = fast - cfg.anchor * (fast - self.source_vector)
            b = cfg.param_ema
            self._set_params((1 - b) * self.param_vector + b * self.fast)
        self.counters.adapt_steps += 1
        self.updates += 1
        self.detector.observe(classes, out.entropy)
        self._watch()
        return out

    def _watch(self) -> None:
        """Every `watch_every` updates: roll back on collapse, else maybe take a snapshot."""
        if self.updates % self.cfg.watch_every:
            return
        verdict = self.detector.verdict(self.param_change()[1], self.stat_shift())
        if verdict is None:
            if self.updates % self.cfg.snapshot_every == 0:
                self.snapshots.append(self.state())
            return
        if self.snapshots and self.updates - self.last_rollback > self.cfg.rollback_cooldown:
            self.load_state(self.snapshots[0])
            self.snapshots = deque([self.snapshots[0]], maxlen=2)
            self.counters.rollbacks += 1
        else:
            self._to_source()
            self.snapshots.clear()
            self.counters.resets += 1
        self.last_rollback = self.updates
        self.detector.clear()

    def stat_shift(self) -> float:
        """Largest shift of a batch-norm mean from source, in source standard deviations."""
        means = self.moments.means()
        shifts = [np.abs(means[k] - m) / np.sqrt(v + 1e-5) for k, (m, v) in self.source_stats.items()]
        return float(max((s.max() for s in shifts), default=0.0))

    def predict(self, x: np.ndarray) -> Outputs:
        return self.model.forward(x, self.stats())

    def state(self) -> Arrays:
        flat = {**_prefixed("params", self.params), **_prefixed("fast", self.layout.split(self.fast))}
        flat.update(_prefixed("adam", self.opt.state(self.layout)))
        flat.update(_prefixed("moments", self.moments.state()))
        flat.update(_prefixed("gate", self.gate.moments.state()))
        flat["prior"] = self.balance.share.copy()
        flat["updates"] = np.asarray(self.updates)
        return flat

    def load_state(self, flat: Arrays) -> None:
        self._load_params(flat)
        self.fast = self.layout.flatten(_unprefixed("fast", flat), np.float64)
        self.opt.load_state(_unprefixed("adam", flat), self.layout)
        self.moments.load_state(_unprefixed("moments", flat))
        self.gate.moments.load_state(_unprefixed("gate", flat))
        self.balance.share = np.asarray(flat["prior"], np.float64)
        self.updates = int(flat["updates"])


POLICY_TYPES: dict[str, type[Policy]] = {p.name: p for p in (Source, Norm, Tent, Sar, Steady)}
DEFAULT_POLICY = Steady.name

# The auxiliary-task policy subclasses `Norm` and adds itself to POLICY_TYPES; a plain import works
# whichever of the two modules is imported first.
import edge_ttt.adapt.auxiliary  # noqa: E402, F401
