"""What every adaptation policy shares, and the contract the engine relies on.

A policy sees only windows that passed the input guard (`update`), and predicts the others
without touching its state (`predict`). ORT computes logits, layer moments and gradients; the
statistics, optimizers and guards are numpy, so a policy's whole state is a dict of arrays:
`state()` holds everything `update` changes and `load_state` puts it back bit for bit, which is
what snapshots, rollbacks, restarts and episodic mode (`s = state(); update(x); load_state(s)`)
stand on. `reset()` returns to source. A policy's knobs are its `Options` dataclass, from which
the config schema is built, so a new option is one field, validated in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, ClassVar, get_type_hints

import numpy as np
from annotated_types import Ge, Gt, Interval

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.flat import unprefixed
from edge_ttt.adapt.instance_offsets import FirstNorm
from edge_ttt.adapt.optim import Arrays
from edge_ttt.adapt.ort_model import OrtModel, Stats
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.manifest import Manifest
from edge_ttt.ranges import describe, hint_bounds, within

STAT_MOMENTUM = 0.002  # weight of one window in the moment EMAs: a horizon of about 500 windows
STAT_PRIOR_WINDOWS = 100.0  # the source statistics count as this many windows
CLASS_PRIOR_MOMENTUM = 0.02  # EMA of the predicted-class histogram, for class-balanced statistics

# The ranges of the options' values, read by the configuration's schema (`policy_options`), so that
# a value out of range fails on load and names its key; NaN and infinities fail there too.
Rate = Annotated[float, Interval(gt=0.0, le=1.0)]  # a momentum: the weight of one window or step
Share = Annotated[float, Interval(ge=0.0, le=1.0)]
Positive = Annotated[float, Gt(0.0)]
NonNegative = Annotated[float, Ge(0.0)]
Count = Annotated[int, Ge(1)]


class PolicyMismatchError(ValueError):
    """The policy steps on a loss that the bundle's training graph does not compute."""


def bundle_loss(manifest: Manifest) -> str:
    """The loss the bundle's training graph computes: 'auxiliary' or 'entropy'."""
    return "entropy" if manifest.auxiliary is None else "auxiliary"


def misfit(policy: type[Policy], manifest: Manifest) -> str | None:
    """Why the policy cannot run on the bundle, in words; None when it can (gradient-free
    policies run on any)."""
    model = manifest.model.name
    if policy.loss is not None and policy.loss != bundle_loss(manifest):
        return (
            f"it steps on the {policy.loss} loss, and this bundle's model ({model}) "
            f"was exported with the {bundle_loss(manifest)} loss"
            + (
                "; train and export a model with an auxiliary head, e.g. cnn-bn-ttt, to run it"
                if policy.loss == "auxiliary"
                else ""
            )
        )
    if policy.soft_targets and manifest.graph.soft_target is None:
        return (
            f"it trains on soft targets, and this bundle's model ({model}) was exported before "
            "the training graph took them; export it again with `edge-ttt export` to run it"
        )
    return None


def fits(policy: type[Policy], manifest: Manifest) -> bool:
    """Whether the policy can run on the bundle."""
    return misfit(policy, manifest) is None


class Policy:
    """Base: holds the model, the source parameters and statistics, and the shared counters.

    Subclasses set up what never changes in `__init__`, then call `reset()`, which builds
    everything that adapts from source (so construction and a reset cannot drift apart).
    """

    name: ClassVar[str]
    loss: ClassVar[str | None] = None  # the training loss its steps need: 'entropy', 'auxiliary', None
    soft_targets: ClassVar[bool] = False  # its steps feed the entropy graph's soft targets
    keeps_stats: ClassVar[bool] = False  # normalizes with statistics of its own (`stats()`)
    # Input alignment ahead of it by default (`AutoInputs`): this project's policies for real
    # devices, not the published ones, which the benchmark runs as their papers do.
    aligned: ClassVar[bool] = False
    batch_stats: ClassVar[bool] = False  # batch norms normalize each batch by its own moments
    plain: ClassVar[bool] = False  # `predict` is one pass with `stats()`, nothing else
    label_runs: ClassVar[bool] = False  # the engine's label runs on by default (`runs_setup`)

    @dataclass(frozen=True)
    class Options:
        """The policy's knobs (none here); the config's `[model.options]` are these fields. Each
        policy's `Options` derives from this one: the ranges its fields' types carry are checked
        here (the configuration reads the same ranges and names the key); a subclass checks only
        how its fields go together, after calling this."""

        def __post_init__(self) -> None:
            hints = get_type_hints(type(self), include_extras=True)
            for f in dataclasses.fields(self):
                bounds, value = hint_bounds(hints[f.name]), getattr(self, f.name)
                if bounds and value is not None and not within(value, bounds):
                    raise ValueError(f"{f.name} must be {describe(bounds)}, got {value}")

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        self.options = self.Options() if options is None else options
        self.model = model
        self.counters = counters
        self.classes = len(model.manifest.model.classes)
        self.source_stats = model.source_stats()
        self.source_params = model.source_parameters()  # the bundle's, not what a shared model holds
        self.layout = model.layout  # of the flat parameter vectors (`edge_ttt.adapt.flat`)
        self.source_vector = self.layout.flatten(self.source_params, np.float32)
        self.param_vector = self.source_vector  # what the model must hold while this policy runs
        self._source_norm = math.sqrt(self._layer_sum(self.source_vector.astype(np.float64) ** 2))

    @property
    def params(self) -> Arrays:
        """The predicting parameters by name (views of `param_vector`)."""
        return self.layout.split(self.param_vector)

    def stats(self) -> Stats:
        """The statistics the batch norms normalize with."""
        return self.source_stats

    def _layer_sum(self, vector: np.ndarray) -> float:
        """The sum of a flat vector, layer by layer in the manifest's order: summing per layer
        keeps the rounding of the reported parameter change independent of the flat layout."""
        parts = self.layout.split(vector)
        return sum(float(np.add.reduce(parts[k], axis=None)) for k in self.source_params)

    def param_change(self) -> tuple[float, float]:
        """How far the predicting parameters moved from source: L2 distance, and that distance
        relative to the source parameters' norm (guards and drift summaries report it)."""
        sq = self._layer_sum((self.param_vector.astype(np.float64) - self.source_vector) ** 2)
        return math.sqrt(sq), math.sqrt(sq) / max(self._source_norm, 1e-12)

    def update(self, x: np.ndarray) -> Outputs:
        """Logits for valid windows; may change the policy's state."""
        return self.predict(x)

    def predict(self, x: np.ndarray) -> Outputs:
        """Logits without any state change."""
        return self.model.forward(x, self.source_stats)

    def predict_following(self, x: np.ndarray, first: FirstNorm | None) -> Outputs:
        """`predict` with the first batch norm following each window's own offset (label runs'
        `instance_offsets`; None: off): only where `predict` is a pass with `stats()` (`plain`);
        the others (batch moments, per-window norms) predict as they do."""
        if first is None or not self.plain:
            return self.predict(x)
        stats = self.stats()
        return first.follow(self.model, x, stats, self.model.forward(x, stats))

    def episode(self, x: np.ndarray) -> Outputs:
        """Episodic mode: `update` on x (adapt, predict), then return to the state before it."""
        with self.restoring():
            return self.update(x)

    @contextmanager
    def restoring(self) -> Iterator[None]:
        """Whatever happens inside, the policy (and the model's parameters) leave as they came."""
        saved = self.state()
        try:
            yield
        finally:
            self.load_state(saved)

    def reset(self) -> None:
        """Back to source: the source parameters, and every adapted quantity started afresh."""
        self._set_params(self.source_vector)

    def state(self) -> Arrays:
        """Everything `update` changes (the shared counters aside), as named arrays."""
        return {}

    def load_state(self, flat: Arrays) -> None:
        """Restore what `state` returned."""

    def _gradient(
        self, x: np.ndarray, stats: Stats, mix: float, weigh: Callable[[Outputs], np.ndarray] | None
    ) -> tuple:
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
        if not np.count_nonzero(weights):
            self.model.discard_gradients()
            return out, weights, None
        if np.logical_and.reduce(weights == weights[0]):
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
        self.model.write_parameters(self.param_vector, owner=self)

    def _load_params(self, flat: Arrays) -> None:
        """Restore the predicting parameters from a state's `params/<name>` arrays."""
        self._set_params(self.layout.flatten(unprefixed("params", flat), np.float32))
