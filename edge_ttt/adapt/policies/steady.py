"""`steady`, the default policy: class-balanced momentum statistics and filtered, class-balanced
entropy steps on the norm affines, averaged (EMA) and anchored to source, with collapse rollback."""

from __future__ import annotations

import functools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge

from edge_ttt.adapt.class_correction import ClassCorrection
from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.drift_gate import OPEN_AT, DriftGate, fade
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.guard import CollapseDetector
from edge_ttt.adapt.instance_offsets import FirstNorm
from edge_ttt.adapt.label_runs import LabelRuns, RunOptions
from edge_ttt.adapt.optim import Adam, Arrays
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
    Share,
)
from edge_ttt.adapt.statistics import ClassBalance, LayerMoments, fold_moments

log = logging.getLogger(__name__)

NEVER_ROLLED_BACK = -(10**9)  # `last_rollback` before the first: any cooldown has passed
SNAPSHOTS = 2  # healthy snapshots kept; a rollback goes to the older one
RUNS = "label_runs"  # the prefix of the label-run detector's arrays in the state (the engine has `runs`)
# A label run, as shares of the classes: below 3/7 of them (effective number) a run starts, above
# 4/7 it ends; the engine's label-run defaults (3 and 4) for the 7 classes of the smartwatch data.
RUN_ENTER, RUN_LEAVE = 3.0 / 7.0, 4.0 / 7.0
RUN_HORIZON = 64.0  # windows of its own detector's class mix (not the engine's label runs' 128)


class Steady(Policy):
    """The default: safe at batch size 1 on label-correlated, noisy streams.

    1. Batch norms normalize with long-horizon moment EMAs started from source (as `norm`), but
       each window counts less when its pseudo-class dominates the recent predictions, and its
       moments are first moved to the source class mix (`ClassCorrection`, by its predicted
       class distribution): a long run of one activity cannot drag the statistics toward that
       activity. (Separate estimates per pseudo-class lose: misclassified windows contaminate them.)
       Both guard against a label run, so outside one (`LabelRuns`), where the input is far
       from source (past `relax_from` drift-gate thresholds), they fade, gone at `relax_to`: there
       the shift, not an activity, moves the statistics, and they would only slow them down.
    2. While the drift gate (`DriftGate`) sees the input away from source, entropy steps only
       from reliable windows (entropy below a source quantile), weighted
       down when their pseudo-class dominates recent predictions (so a run cannot pull the
       model toward always predicting it), with Adam on fast parameters that are pulled back
       toward source every step; predictions use an EMA of the fast parameters. A step is taken
       once `step_every` windows have passed since the last (the windows in between: a forward
       pass, no backward); reliability is judged, and counted, on every window.
    3. A collapse detector (`CollapseDetector`) rolls back to the older of the last two healthy
       snapshots, and resets to source when collapse returns within a cooldown.
    """

    name = "steady"
    label_runs = True
    aligned = True
    loss = "entropy"
    keeps_stats = True

    @dataclass(frozen=True)
    class Options(Policy.Options):
        """Thresholds on entropy are quantiles of the source's own."""

        stat_momentum: Rate = STAT_MOMENTUM
        stat_prior_windows: Positive = STAT_PRIOR_WINDOWS
        lr: NonNegative = 1e-4  # Adam on the fast norm affines
        param_ema: Share = 0.2  # weight of the fast parameters in the averaged ones used to predict
        anchor: Share = 0.05  # per step, pull the fast parameters this share of the way back to source
        reliable_quantile: Share = 0.5  # learn only from windows below this source entropy quantile
        prior_momentum: Rate = CLASS_PRIOR_MOMENTUM
        gate_shift: NonNegative = 0.5  # drift gate: mean input shift, in source stds, that opens it
        gate_spread: NonNegative = 0.5  # drift gate: mean |log variance ratio| that opens it
        collapse_entropy_ratio: NonNegative = 0.5  # collapse floor = ratio * source 5% entropy quantile
        collapse_horizon: Count = 64
        watch_every: Count = 8  # updates between two looks of the collapse detector
        snapshot_every: Count = 32  # updates between snapshots (a multiple of watch_every)
        rollback_cooldown: Annotated[int, Ge(0)] = 64  # updates after a rollback in which a collapse resets
        step_every: Count = 4  # windows per gradient step while the gate is open; the others: forward only
        class_correction: Share = 0.85  # share of a window's predicted-class offset taken off its moments
        relax_from: NonNegative = 1.0  # gate distance past which, outside a run, 1.'s protections fade
        relax_to: NonNegative = 2.0  # gate distance at which they are gone (a large relax_from: never)
        instance_offsets: NonNegative = 0.0  # opt-in (0: off): see `_window_stats`, docs/adaptation.md

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.snapshot_every % self.watch_every:
                raise ValueError(
                    f"snapshot_every ({self.snapshot_every}) must be a multiple of "
                    f"watch_every ({self.watch_every})"
                )
            if self.relax_to < self.relax_from:
                raise ValueError(
                    f"relax_to ({self.relax_to}) must be at least relax_from ({self.relax_from})"
                )

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        super().__init__(model, counters, options)
        cfg = self.options
        ref = model.manifest.reference.entropy
        self.reliable_entropy = float(np.interp(cfg.reliable_quantile, ref.q, ref.value))
        self.detector = CollapseDetector(
            entropy_floor=cfg.collapse_entropy_ratio * float(np.interp(0.05, ref.q, ref.value)),
            classes=self.classes,
            horizon=cfg.collapse_horizon,
        )
        self.correction = ClassCorrection.from_reference(
            model.manifest.reference.class_norms, self.source_stats, cfg.class_correction
        )
        if self.correction is None and self.source_stats and cfg.class_correction > 0:
            log.warning(
                "bundle %s has no class moments (reference.class_norms): steady's statistics run "
                "without class correction; re-run `edge-ttt export` to add them",
                model.bundle_path,
            )
        self.first_norm = FirstNorm.of(model, self.source_stats, cfg.instance_offsets)
        self.reset()

    def reset(self) -> None:
        cfg = self.options
        self.moments = LayerMoments(self.source_stats, cfg.stat_momentum, cfg.stat_prior_windows)
        ref = self.model.manifest.reference.channels
        self.gate = DriftGate.from_reference(
            np.array([c.mean for c in ref]),
            np.array([c.var for c in ref]),
            cfg.stat_momentum,
            cfg.stat_prior_windows,
            cfg.gate_shift,
            cfg.gate_spread,
        )
        self.fast = self.source_vector.astype(np.float64)  # flat, as `param_vector`
        super().reset()
        self.opt = Adam(lr=cfg.lr)
        self.balance = ClassBalance(self.classes, cfg.prior_momentum)
        runs = RunOptions(
            horizon=RUN_HORIZON,
            enter=max(1.0, RUN_ENTER * self.classes),
            leave=max(1.0, RUN_LEAVE * self.classes),
        )
        self.runs = LabelRuns(runs, self.classes)
        self.updates = 0
        self.since_step = 0  # windows since the last gradient step
        self.last_rollback = NEVER_ROLLED_BACK
        self.detector.clear()
        self.snapshots: deque[Arrays] = deque(maxlen=SNAPSHOTS)

    def stats(self) -> Stats:
        return self.moments.stats()

    def _window_stats(self, x: np.ndarray) -> tuple[Stats, Outputs | None]:
        """The statistics to run `x` with, and the outputs already computed with them (None where
        they still have to be). With `instance_offsets`, a first pass with the statistics gives
        the batch's own first-layer mean and its predicted classes; the first batch norm's mean
        then follows what of that mean the classes and sampling do not explain. Where that is
        nothing, the first pass is the answer."""
        stats = self.stats()
        if self.first_norm is None:
            return stats, None
        first = self.model.forward(x, stats)
        moved = self.first_norm.moved(stats, first, len(x))
        return (stats, first) if moved is None else (moved, None)

    def _reliable(self, out: Outputs) -> np.ndarray:
        """Per window, whether it may teach: its entropy below the source's `reliable_quantile`."""
        return out.entropy < self.reliable_entropy

    def _weights(self, out: Outputs) -> np.ndarray:
        """Per window, 0 where it is not reliable, else its class-balance weight (positive) times
        exp(reliable_entropy - h) (at least 1), over the batch size."""
        h = out.entropy
        return (
            self._reliable(out)
            * self.balance.weights(out.logits.argmax(axis=1))
            * np.exp(self.reliable_entropy - h)
            / len(out.logits)
        )

    def update(self, x: np.ndarray) -> Outputs:
        cfg = self.options
        self.gate.observe(x)
        distance = self.gate.distance()
        drifting = distance > OPEN_AT  # `gate.open`, from the distance already computed
        self.since_step += len(x)
        stats, out = self._window_stats(x)
        if drifting and self.since_step >= cfg.step_every:
            self.since_step = 0
            out, weights, grads = self._gradient(x, stats, 0.0, self._weights)
        elif drifting:  # between two steps: no backward pass; the counters need only where
            # `_weights` would be 0, which is exactly where a window is not reliable
            out, grads = out if out is not None else self.model.forward(x, stats), None
            weights = self._reliable(out)
        else:  # nothing to correct: no backward pass, no step
            out = out if out is not None else self.model.forward(x, stats)
            weights, grads = np.zeros(len(x)), None
            self.counters.skipped_no_drift += len(x)
        classes = out.logits.argmax(axis=1)
        self.runs.update(classes)
        keep = 1.0 if self.runs.in_run else 1.0 - fade(distance, cfg.relax_from, cfg.relax_to)
        shift = None  # what the class correction takes off: `keep` of it
        if self.correction is not None and keep > 0.0:
            shift = self.correction.shift(out.softmax[0], keep)
        fold_moments(self.moments, out.moments, classes, self.balance, shift, balance_power=keep)
        if drifting:
            self.counters.skipped_unreliable += len(weights) - int(np.count_nonzero(weights))
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
        if self.updates % self.options.watch_every:
            return
        verdict = self.detector.verdict(self.param_change()[1], self.stat_shift())
        if verdict is None:
            if self.updates % self.options.snapshot_every == 0:
                self.snapshots.append(self._adapted())
            return
        if self.snapshots and self.updates - self.last_rollback > self.options.rollback_cooldown:
            older = self.snapshots[0]
            self._load_adapted(older)
            self.snapshots = deque([older], maxlen=SNAPSHOTS)
            self.counters.rollbacks += 1
        else:
            self.reset()
            self.counters.resets += 1
        self.last_rollback = self.updates
        self.detector.clear()

    def stat_shift(self) -> float:
        """Largest shift of a batch-norm mean from source, in source standard deviations."""
        if not self.moments:
            return 0.0
        mean, std = self._source_scale
        return float(np.maximum.reduce(np.abs(self.moments.ema.mean - mean) / std))

    @functools.cached_property
    def _source_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """The source means and standard deviations (float32, as the layers' own, each layer's
        variance eased by 1e-5) laid out as the averaged moments, for `stat_shift`."""
        layout = self.moments.layout
        mean = layout.flatten({k: m for k, (m, _) in self.source_stats.items()}, np.float64)
        std = layout.flatten({k: np.sqrt(v + 1e-5) for k, (_, v) in self.source_stats.items()}, np.float64)
        return mean, std

    def predict(self, x: np.ndarray) -> Outputs:
        stats, out = self._window_stats(x)
        return out if out is not None else self.model.forward(x, stats)

    @property
    def plain(self) -> bool:  # type: ignore[override]
        """With its own instance offsets on, `predict` already follows (not twice)."""
        return self.first_norm is None

    def _adapted(self) -> Arrays:
        """What a snapshot holds: the parameters, optimizer, statistics, gate, label-run detector
        and update count."""
        flat = {**prefixed("params", self.params), **prefixed("fast", self.layout.split(self.fast))}
        flat.update(prefixed("adam", self.opt.state(self.layout)))
        flat.update(prefixed("moments", self.moments.state()))
        flat.update(prefixed("gate", self.gate.moments.state()))
        flat.update(prefixed(RUNS, self.runs.state()))
        flat["prior"] = self.balance.share.copy()
        flat["updates"] = np.asarray(self.updates)
        return flat

    def _load_adapted(self, flat: Arrays) -> None:
        self._load_params(flat)
        self.fast = self.layout.flatten(unprefixed("fast", flat), np.float64)
        self.opt.load_state(unprefixed("adam", flat), self.layout)
        self.moments.load_state(unprefixed("moments", flat))
        self.gate.moments.load_state(unprefixed("gate", flat))
        self.balance.share = np.asarray(flat["prior"], np.float64)
        runs = unprefixed(RUNS, flat)
        if runs:
            self.runs.load_state(runs)
        else:  # a state saved before the detector: it starts afresh
            self.runs.reset()
        self.updates = int(flat["updates"])

    def state(self) -> Arrays:
        """A snapshot's arrays, plus the guard's: the detector's view, the last rollback and the
        snapshots themselves (`snapshot<i>/...`, oldest first); and the windows since the last step."""
        flat = {**self._adapted(), **prefixed("detector", self.detector.state())}
        flat["last_rollback"] = np.asarray(self.last_rollback)
        flat["since_step"] = np.asarray(self.since_step)
        for i, snapshot in enumerate(self.snapshots):
            flat.update(prefixed(f"snapshot{i}", snapshot))
        return flat

    def load_state(self, flat: Arrays) -> None:
        """Restore what `state` returned. The guard's arrays are optional: without them it starts
        fresh (no snapshots, an empty detector view), so states of the adapted arrays alone restore."""
        self._load_adapted(flat)
        detector = unprefixed("detector", flat)
        if detector:
            self.detector.load_state(detector)
        else:
            self.detector.clear()
        self.last_rollback = int(flat.get("last_rollback", NEVER_ROLLED_BACK))
        self.since_step = int(flat.get("since_step", 0))
        snapshots = (unprefixed(f"snapshot{i}", flat) for i in range(SNAPSHOTS))
        self.snapshots = deque((s for s in snapshots if s), maxlen=SNAPSHOTS)
