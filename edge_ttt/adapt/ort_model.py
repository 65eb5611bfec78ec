"""The bundle's graphs in ONNX Runtime: forward, forward+backward, gradients, parameters.

Statistics are explicit: the caller passes, per batch norm, the (mean, var) to normalize with and
the `stat_mix` (0 = those statistics, 1 = the batch's own, as in Tent), and gets back every norm
layer's batch moments. No policy lives here; `edge_ttt.adapt` policies decide what to feed, and
step with their own optimizers (`edge_ttt.adapt.optim`), so the bundle's ORT optimizer model is
not loaded.

Every bundle runs the same way on every device: its graphs in plain `InferenceSession`s with IO
binding (`BoundGraph`), their inputs in `DeviceBuffers`. A bundle of schema 2 runs on stock
onnxruntime: its standard-operator training graph returns each pass's gradients, which are added
up here. A schema-1 bundle has only ORT's training graph, whose gradient kernels and checkpoint
need onnxruntime-training, on the CPU.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge_ttt.adapt.bound_graph import BoundGraph
from edge_ttt.adapt.device_buffers import DeviceBuffers
from edge_ttt.adapt.devices import resolve_device
from edge_ttt.adapt.flat import Layout
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.schema1 import checkpoint_parameters
from edge_ttt.adapt.statistics import FlatStats, Stats
from edge_ttt.artifacts import Bundle, inconsistent, unreadable
from edge_ttt.manifest import EVAL_MODEL, TRAINING_MODEL

# How ORT's training graphs name a parameter's gradient accumulation input and output, and the
# input that makes the next pass overwrite the accumulated gradients instead of adding to them.
ACCUMULATION_BUFFER = "_grad.accumulation.buffer"
ACCUMULATION_OUT = "_grad.accumulation.out"
LAZY_RESET_GRAD = "lazy_reset_grad"


class Graphs(NamedTuple):
    """A bundle's graphs in ONNX Runtime; the fixed ones (`stat_mix` 0, `export.fixed_graphs`)
    where the bundle has them, which the model then runs at mix 0."""

    eval: BoundGraph
    training: BoundGraph
    fixed_eval: BoundGraph | None
    fixed_training: BoundGraph | None

    def forward(self, mix: float) -> BoundGraph:
        """The graph for a forward pass at `mix`."""
        return self.fixed_eval if mix == 0.0 and self.fixed_eval is not None else self.eval

    def training_pass(self, mix: float) -> BoundGraph:
        """The graph for a training pass at `mix`."""
        return self.fixed_training if mix == 0.0 and self.fixed_training is not None else self.training


class OrtModel:
    """One bundle's eval and training graphs (`BoundGraph`), bound to buffers kept here: a copy of
    the parameters, the statistics to normalize with, and the gradients. A call passes only what
    changed (docs/performance.md measures the saving). The copy follows `write_parameters` (and
    `set_parameters`); change parameters only through them.

    On the CPU the graphs read these host arrays in place; on CUDA they read copies in device
    memory, pushed after each write (`DeviceBuffers`): the frozen weights cross once, the
    parameters after a step, the statistics and the window with each call; logits, moments and
    gradients come back. `copies` forces that rule on the CPU too (tests).

    Schema 2 (`manifest.standard_graph`): the parameters come from the bundle's `.npz`, the
    standard graph writes this pass's gradients into `_step_gradient`, and `forward_backward`
    adds them to `_gradient` (or overwrites it after `discard_gradients`): ORT's accumulation, in
    numpy. Schema 1: the parameters come from ORT's checkpoint, and the training graph's
    accumulators write `_gradient` in place, the reset flag telling them to overwrite it.
    """

    def __init__(
        self, bundle: Bundle, device: str = "cpu", threads: int = 1, copies: bool | None = None
    ) -> None:
        import onnxruntime

        self.manifest = bundle.manifest
        self.bundle_path = bundle.path
        self.bundle_sha256 = bundle.sha256
        self.device = resolve_device(device)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 2  # warnings and up, whatever another library set globally
        graph = self.manifest.graph
        self._layers = self.manifest.norm_layers
        self._stat_inputs = [(layer.name, *layer.stat_inputs) for layer in self.manifest.batch_norms]
        self._outputs = [graph.logits] + [n for layer in self._layers for n in layer.moment_outputs]
        self.trainable = list(self.manifest.trainable)
        self._step_gradient: np.ndarray | None = None  # schema 2: the last pass's own gradients
        self._owner: object | None = None  # whose parameters the model holds (`serve`)
        spec = self.manifest.standard_graph
        if spec is None:
            params = checkpoint_parameters(bundle, self.device)
        else:
            try:
                with np.load(bundle.file(spec.parameters), allow_pickle=False) as saved:
                    params = {name: saved[name] for name in saved.files}
            except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
                raise unreadable(bundle.file(spec.parameters), exc) from exc
        self.layout = Layout.of({n: params[n] for n in self.trainable})
        self._source = {n: params[n].copy() for n in self.trainable}
        self._buffers = DeviceBuffers(self.device, copies)
        self._graphs = self._bind_graphs(bundle, options, params)
        self._check_window(bundle.path)

    def _check_window(self, root: Path) -> None:
        """The eval graph takes the windows the manifest says ([batch, channels, window])."""
        info, port = self.manifest.model, self.manifest.graph.input
        shape = next((i.shape for i in self._graphs.eval.session.get_inputs() if i.name == port), None)
        want = [len(info.channels), info.window]
        fixed = shape is not None and all(isinstance(d, int) for d in shape[1:])
        if shape is None or (fixed and list(shape[1:]) != want):
            got = "no such input" if shape is None else f"windows of {list(shape[1:])}"
            raise inconsistent(
                root, f"the manifest says windows of {want} (channels, samples), its graph takes {got}"
            )

    def _bind_graphs(self, bundle: Bundle, options, params: dict[str, np.ndarray]) -> Graphs:
        """The graphs bound to the parameters (trainable ones as views of one vector in `layout`),
        the statistics and stat mix, and the gradients: for the standard graph (and the fixed
        one) its gradient outputs (views of `_step_gradient`), for ORT's training graph each
        trainable parameter's accumulation buffer (a view of `_gradient`, in host memory) and the
        reset flag."""
        graph = self.manifest.graph
        buffers = self._buffers
        self._param_names = list(params)
        self._param_vector = self.layout.flatten(params, np.float32)
        kept = {n: v for n, v in params.items() if n not in self.layout.names}
        kept.update(self.layout.split(self._param_vector))
        kept.update(self._stat_buffers())
        self._per_call = [name for _, mean, var in self._stat_inputs for name in (mean, var)]
        if graph.stat_mix is not None:
            kept[graph.stat_mix] = np.zeros(1, np.float32)
            self._per_call.append(graph.stat_mix)
        self._kept = kept
        self._gradient = np.zeros(self.layout.size, np.float32)
        self._reset = np.ones(1, bool)  # true: the next training pass overwrites the gradients
        values = {name: buffers.place(name, array) for name, array in kept.items()}
        fed = {graph.input, graph.sample_weight} | (
            {self.manifest.auxiliary.target} if self.manifest.auxiliary else set()
        )
        if graph.soft_target is not None:
            fed.add(graph.soft_target)
        spec = self.manifest.standard_graph
        predictor = BoundGraph(bundle.file(EVAL_MODEL), options, buffers)
        predictor.fetch(self._outputs)
        if spec is None:
            trainer = BoundGraph(bundle.file(TRAINING_MODEL), options, buffers)
            self._in_place = DeviceBuffers("cpu")  # the accumulators add into `_gradient` itself
            training = {
                f"{n}{ACCUMULATION_BUFFER}": self._in_place.place(n, v)
                for n, v in self.layout.split(self._gradient).items()
            }
            training[LAZY_RESET_GRAD] = buffers.place(LAZY_RESET_GRAD, self._reset)
            trainer.fetch(
                [graph.loss, *self._outputs, *(o for o in trainer.outputs if o.endswith(ACCUMULATION_OUT))]
            )
        else:
            trainer = BoundGraph(bundle.file(spec.model), options, buffers)
            self._step_gradient = np.zeros(self.layout.size, np.float32)
            steps = {spec.gradients[n]: v for n, v in self.layout.split(self._step_gradient).items()}
            training = {}
            trainer.fetch([graph.loss, *self._outputs], into=steps)
        fixed_eval = fixed_training = None  # the graphs at stat_mix 0, where the bundle has them
        if self.manifest.fixed_eval is not None:
            fixed_eval = BoundGraph(bundle.file(self.manifest.fixed_eval), options, buffers)
            fixed_eval.fetch(self._outputs)
        if spec is not None and self.manifest.fixed_training is not None:
            fixed_training = BoundGraph(bundle.file(self.manifest.fixed_training), options, buffers)
            fixed_training.fetch([graph.loss, *self._outputs], into=steps)
        graphs = Graphs(predictor, trainer, fixed_eval, fixed_training)
        for g in filter(None, graphs):
            bound = values if g in (predictor, fixed_eval) else {**values, **training}
            for name in g.inputs:
                if name in bound:
                    g.bind(name, bound[name])
            missing = [name for name in g.unbound() if name not in fed]
            if missing:
                raise ValueError(f"{g.path} has inputs this runtime does not feed: {missing}")
        return graphs

    def _stat_buffers(self) -> dict[str, np.ndarray]:
        """Per statistics input, the array bound to it: views of one vector laid out as
        `FlatStats` (every batch norm's mean, then every variance), which takes such statistics
        in one copy."""
        norms = self.manifest.batch_norms
        layout = Layout([layer.name for layer in norms], [(len(layer.source_mean),) for layer in norms])
        self._stat_names = layout.names
        self._stat_vector = np.zeros(2 * layout.size, np.float32)
        means = layout.split(self._stat_vector[: layout.size])
        variances = layout.split(self._stat_vector[layout.size :])
        buffers = {}
        for layer, mean_input, var_input in self._stat_inputs:
            buffers[mean_input], buffers[var_input] = means[layer], variances[layer]
        return buffers

    def source_stats(self) -> Stats:
        """The batch norms' source statistics from the manifest, as float32 arrays."""
        return {
            layer.name: (np.asarray(layer.source_mean, np.float32), np.asarray(layer.source_var, np.float32))
            for layer in self.manifest.batch_norms
        }

    def _unpack(self, out: tuple, loss: float | None) -> Outputs:
        moments = {layer.name: (out[1 + 2 * i], out[2 + 2 * i]) for i, layer in enumerate(self._layers)}
        return Outputs(logits=out[0], moments=moments, loss=loss)

    def _bind_call(
        self,
        g: BoundGraph,
        x: np.ndarray,
        weights: np.ndarray,
        stats: Stats,
        mix: float,
        target: np.ndarray | None = None,
        soft_target: np.ndarray | None = None,
    ) -> None:
        """This call's inputs, copied into the bound buffers: the statistics and the mix into
        those bound once, the batch-shaped ones into buffers bound for the batch size. The weights
        and targets go where the graph takes them: the eval graph keeps the training graph's
        inputs, the fixed eval graph has none of them."""
        g.batch(len(x))
        graph = self.manifest.graph
        g.feed(graph.input, np.ascontiguousarray(x, np.float32))
        if graph.sample_weight in g.takes:
            g.feed(graph.sample_weight, weights)
        aux = self.manifest.auxiliary
        if aux is not None and aux.target in g.takes:
            g.feed_target(aux.target, target, (len(x), len(aux.transformations)))
        if graph.soft_target is not None and graph.soft_target in g.takes:
            g.feed_target(graph.soft_target, soft_target, (len(x), len(self.manifest.model.classes)))
        kept = self._kept
        if graph.stat_mix is not None:
            kept[graph.stat_mix][0] = mix  # rounded to float32 as the input is
        if isinstance(stats, FlatStats) and stats.names == self._stat_names:
            np.copyto(self._stat_vector, stats.vector)
        else:
            for layer, mean_input, var_input in self._stat_inputs:
                mean, var = stats[layer]
                np.copyto(kept[mean_input], mean)  # cast to float32 on the way where needed
                np.copyto(kept[var_input], var)
        self._buffers.push(self._per_call)

    def forward(self, x: np.ndarray, stats: Stats, mix: float = 0.0) -> Outputs:
        """Logits and batch moments; no gradients, no state change. At `mix` 0 from the fixed eval
        graph where the bundle has one (the same values, bit for bit, from fewer kernels: export
        checks it), else from the eval graph."""
        predictor = self._graphs.forward(mix)
        self._bind_call(predictor, x, np.zeros(len(x), np.float32), stats, mix)
        return self._unpack(predictor.run(), None)

    def forward_backward(
        self,
        x: np.ndarray,
        weights: np.ndarray,
        stats: Stats,
        mix: float = 0.0,
        target: np.ndarray | None = None,
        soft_target: np.ndarray | None = None,
    ) -> Outputs:
        """Training graph: loss = sum(weights * entropy), plus, where the bundle has the input,
        the cross-entropy against `soft_target` ([batch, classes], per-sample weights folded in;
        zeros when None); or for a bundle with an auxiliary task sum(weights * cross-entropy of
        the auxiliary head against `target`). Gradients accumulate until `discard_gradients`.

        The logits are those before the update, i.e. what `forward` would have returned.
        """
        weights = np.asarray(weights, np.float32)
        if target is not None:
            target = np.ascontiguousarray(target, np.float32)
        if soft_target is not None:
            if self.manifest.graph.soft_target is None:
                raise ValueError(
                    f"bundle {self.bundle_path} has no soft-target input; export it again "
                    "(`edge-ttt export`) with this version to train on soft targets"
                )
            soft_target = np.ascontiguousarray(soft_target, np.float32)
        trainer = self._graphs.training_pass(mix)
        self._bind_call(trainer, x, weights, stats, mix, target, soft_target)
        out = trainer.run()
        if self._step_gradient is not None:  # the standard graph: add this pass's gradients
            if self._reset[0]:
                np.copyto(self._gradient, self._step_gradient)
            else:
                self._gradient += self._step_gradient
        self._set_reset(False)  # the next pass adds to these gradients
        return self._unpack(out[1:], float(out[0]))

    def discard_gradients(self) -> None:
        """Forget the accumulated gradients: the next training pass starts from zero."""
        self._set_reset(True)

    def _set_reset(self, reset: bool) -> None:
        """Whether the next training pass overwrites the gradients (ORT's training graph reads
        the flag as an input, so it is pushed; the standard graph's sum reads it here)."""
        if self._reset[0] != reset:
            self._reset[0] = reset
            if self._step_gradient is None:
                self._buffers.push([LAZY_RESET_GRAD])

    def source_parameters(self) -> dict[str, np.ndarray]:
        """The trainable parameters as the bundle holds them (copies), whatever the model holds
        now: engines that share the model write their own adapted ones into it."""
        return {n: v.copy() for n, v in self._source.items()}

    def parameters(self, trainable_only: bool = True) -> dict[str, np.ndarray]:
        """The parameters the model holds now (copies): the engine served last has written them."""
        names = self.trainable if trainable_only else self._param_names
        return {n: self._kept[n].copy() for n in names}

    def gradient_vector(self) -> np.ndarray:
        """The accumulated gradients of the trainable parameters, float32, flat in `layout`."""
        return self._gradient.copy()

    def gradients(self) -> dict[str, np.ndarray]:
        views = self.layout.split(self.gradient_vector())
        return {n: views[n] for n in self.trainable}

    def write_parameters(self, vector: np.ndarray, owner: object | None = None) -> None:
        """Set every trainable parameter from one flat vector in `layout`, into the copy the graphs
        are bound to (pushed to the device where they run on one). `owner`: whose parameters these
        are from now on (see `serve`); None for a write that does not change hands (a step's
        temporary perturbation)."""
        np.copyto(self._param_vector, vector)
        self._buffers.push(self.layout.names)
        if owner is not None:
            self._owner = owner

    def serve(self, owner: object, vector: np.ndarray) -> None:
        """Hold `owner`'s trainable parameters (a flat vector in `layout`): written only when the
        owner changes, so that one model serves several adapting devices in turn at the cost of
        one write per switch. An owner's own writes (`write_parameters(..., owner)`) claim the
        model too, so a policy built or restored on a shared model never leaves the one served
        before it holding parameters that are not its own."""
        if owner is not self._owner:
            self.write_parameters(vector, owner)

    def set_parameters(self, values: dict[str, np.ndarray]) -> None:
        """Set every trainable parameter by name."""
        self.write_parameters(self.layout.flatten(values, np.float32))
