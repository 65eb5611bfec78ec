"""`note`: NOTE (Gong et al., NeurIPS 2022), robust continual adaptation on temporally correlated
streams: instance-aware batch norm, a prediction-balanced memory, entropy steps on the memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.flat import prefixed, unprefixed
from edge_ttt.adapt.iabn import instance_aware, pooled, unbiased
from edge_ttt.adapt.layer_lengths import batch_norm_lengths
from edge_ttt.adapt.layerwise import Choose, forward_layerwise, joined
from edge_ttt.adapt.optim import Adam, Arrays
from edge_ttt.adapt.ort_model import OrtModel, Stats
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.pbrs import PredictionBalancedReservoir
from edge_ttt.adapt.policies.base import Count, NonNegative, Policy, Rate
from edge_ttt.adapt.policies.memory import MemoryPolicy

Moments = dict[str, tuple[np.ndarray, np.ndarray]]


class Note(MemoryPolicy):
    """NOTE, window by window as the paper runs it (its batch-free inference):

    1. Predict each window with instance-aware batch norm (`edge_ttt.adapt.iabn`): per layer the
       running statistics, corrected towards the window's own moments beyond `alpha` standard
       errors; layer by layer in graph order (`forward_layerwise`, (layers + 1) forwards).
    2. Offer the window to the prediction-balanced reservoir (`pbrs`) under its predicted class.
    3. Every `update_every` windows, one Adam step on the mean entropy of the memory, each memory
       window normalized by IABN around the memory batch's statistics (as IABN in training
       mode); the running statistics move `bn_momentum` of the way to those batch statistics.

    A batch of n windows is n such steps in turn: the same predictions and state as n batches of
    one. Without batch norms (group- and layer-norm bundles) IABN is the plain layer and NOTE is
    the memory and its entropy steps on the norm affines.
    """

    name = "note"
    loss = "entropy"
    keeps_stats = True

    @dataclass(frozen=True)
    class Options(Policy.Options):
        """The paper's values (its tta.sh for NOTE)."""

        alpha: NonNegative = 4.0  # standard errors within which IABN keeps the base statistics (iabn_k)
        memory: Count = 64  # windows in the PBRS memory
        update_every: Count = 64  # windows between two steps
        lr: NonNegative = 1e-4  # Adam
        bn_momentum: Rate = 0.01  # per step, running statistics -> memory batch statistics
        lengths: tuple[int, ...] | None = None  # per batch norm; None: the manifest's (or the graph's)

    def __init__(self, model: OrtModel, counters: Counters, options: Options | None = None) -> None:
        super().__init__(model, counters, options)
        norms = model.manifest.batch_norms
        self.eps = {layer.name: layer.eps for layer in norms}
        given = self.options.lengths
        if given is not None and len(given) != len(norms):
            raise ValueError(f"lengths gives {len(given)} lengths for {len(norms)} batch norms")
        if given is not None:
            self.lengths = {layer.name: int(n) for layer, n in zip(norms, given, strict=True)}
        elif norms and all(layer.length is not None for layer in norms):  # exported with them
            self.lengths = {layer.name: int(layer.length) for layer in norms}
        elif norms:  # an older bundle: read them from the eval graph
            self.lengths = batch_norm_lengths(model.bundle_path, [(n.name, n.channels) for n in norms])
        else:
            self.lengths = {}
        spec = model.manifest.model
        self.window_shape = (len(spec.channels), spec.window)
        self.reset()

    def reset(self) -> None:
        super().reset()
        source = self.source_stats.items()
        self.running: Moments = {k: (m.astype(np.float64), v.astype(np.float64)) for k, (m, v) in source}
        self.opt = Adam(lr=self.options.lr)
        self.memory = PredictionBalancedReservoir(self.options.memory, self.classes, self.window_shape)
        self.arrived = 0  # windows offered to the memory
        self.steps = 0  # memory steps taken

    def stats(self) -> Stats:
        """The running statistics: the base that IABN corrects per window."""
        return {k: (m.astype(np.float32), v.astype(np.float32)) for k, (m, v) in self.running.items()}

    def _iabn(self, base: Moments) -> Choose:
        """Per layer, IABN around `base` from a window's own (mean, biased var)."""

        def choose(name: str, own: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            n = self.lengths[name]
            window = (own[0], unbiased(own[1], n))
            return instance_aware(base[name], window, n, self.options.alpha, self.eps[name])

        return choose

    def predict(self, x: np.ndarray) -> Outputs:
        """IABN around the running statistics, window by window (one batch pass without batch
        norms: then every window normalizes by itself anyway)."""
        if not self.lengths:
            return self.model.forward(x, {})
        start, choose = self.running, self._iabn(self.running)
        return joined([forward_layerwise(self.model, x[i : i + 1], start, choose)[0] for i in range(len(x))])

    def _remember(self, part: np.ndarray, out: Outputs) -> None:
        for window, label in zip(part, out.logits.argmax(axis=1), strict=True):
            self.memory.add(window, int(label))

    def _step(self) -> None:
        """One Adam step on the memory's mean entropy; the running statistics follow the memory."""
        xs, _ = self.memory.contents()
        chosen, batch = self._memory_statistics(xs) if self.lengths else (None, {})
        grads = self._memory_gradient(xs, chosen)
        b = self.options.bn_momentum
        for k, (m, v) in batch.items():
            rm, rv = self.running[k]
            self.running[k] = ((1 - b) * rm + b * m, (1 - b) * rv + b * v)
        self._set_params(self.opt.step(self.param_vector, grads))
        self.steps += 1

    def _memory_statistics(self, xs: np.ndarray) -> tuple[list[Stats], Moments]:
        """IABN in training mode over the memory: layer by layer in graph order, every window's
        moments at that layer (its earlier layers already chosen), their pooled (mean, unbiased
        var) as the base, and each window's statistics around it. Returns the per-window
        statistics and the base per layer (memory x layers forwards)."""
        start = self.running  # every layer is chosen before the gradient pass
        chosen: list[dict] = [dict(start) for _ in xs]
        batch: Moments = {}
        for name, n in self.lengths.items():
            own = [self.model.forward(xs[i : i + 1], chosen[i]).moments[name] for i in range(len(xs))]
            batch[name] = pooled(own, n)
            choose = self._iabn(batch)
            for stats, moments in zip(chosen, own, strict=True):
                stats[name] = tuple(np.asarray(a, np.float32) for a in choose(name, moments))
        return chosen, batch

    def _memory_gradient(self, xs: np.ndarray, chosen: list[Stats] | None) -> np.ndarray:
        """The gradient of the memory's mean entropy: one training pass per window with its own
        statistics, gradients summed (one pass for the whole memory without batch norms)."""
        m = len(xs)
        self.model.discard_gradients()
        if chosen is None:
            self.model.forward_backward(xs, np.full(m, 1.0 / m, np.float32), {}, 0.0)
        else:
            weight = np.full(1, 1.0 / m, np.float32)
            for i, stats in enumerate(chosen):
                self.model.forward_backward(xs[i : i + 1], weight, stats, 0.0)
        grads = self.model.gradient_vector()
        self.model.discard_gradients()
        return grads

    def state(self) -> Arrays:
        flat = {**prefixed("params", self.params), **prefixed("adam", self.opt.state(self.layout))}
        flat.update(prefixed("memory", self.memory.state()))
        for k, (m, v) in self.running.items():
            flat[f"running_mean/{k}"], flat[f"running_var/{k}"] = m.copy(), v.copy()
        flat["arrived"], flat["steps"] = np.asarray(self.arrived), np.asarray(self.steps)
        return flat

    def load_state(self, flat: Arrays) -> None:
        self._load_params(flat)
        self.opt.load_state(unprefixed("adam", flat), self.layout)
        self.memory.load_state(unprefixed("memory", flat))
        means, variances = unprefixed("running_mean", flat), unprefixed("running_var", flat)
        self.running = {}
        for k, m in means.items():
            self.running[k] = (np.array(m, np.float64), np.array(variances[k], np.float64))
        self.arrived, self.steps = int(flat["arrived"]), int(flat["steps"])
