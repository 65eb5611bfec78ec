"""The bundle's graphs in ONNX Runtime: forward, forward+backward, gradients, parameters.

Statistics are explicit: the caller passes, per batch norm, the (mean, var) to normalize with and
the `stat_mix` (0 = those statistics, 1 = the batch's own, as in Tent), and gets back every norm
layer's batch moments. No policy lives here; `edge_ttt.adapt` policies decide what to feed, and
step with their own optimizers (`edge_ttt.adapt.optim`), so the bundle's ORT optimizer model is
not loaded.

A bundle of schema 2 runs on stock onnxruntime: its standard-operator training graph returns each
pass's gradients, which are added up here. A schema-1 bundle has only ORT's training graph, whose
gradient kernels and checkpoint need onnxruntime-training's API.
"""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.bound_graph import BoundGraph
from edge_ttt.adapt.devices import resolve_device
from edge_ttt.adapt.flat import Layout
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.schema1 import parameter_buffer_layout, training_api_for
from edge_ttt.adapt.statistics import FlatStats, Stats
from edge_ttt.artifacts import Bundle
from edge_ttt.manifest import CHECKPOINT, EVAL_MODEL, TRAINING_MODEL

# How ORT's training graphs name a parameter's gradient accumulation input and output, and the
# input that makes the next pass overwrite the accumulated gradients instead of adding to them.
ACCUMULATION_BUFFER = "_grad.accumulation.buffer"
ACCUMULATION_OUT = "_grad.accumulation.out"
LAZY_RESET_GRAD = "lazy_reset_grad"


class OrtModel:
    """One bundle's eval and training graphs in plain `InferenceSession`s (`BoundGraph`), bound to
    arrays kept here: a copy of the parameters, the statistics to normalize with, and the
    gradients. A call passes only what changed (docs/performance.md measures the saving). The copy
    follows `write_parameters` (and `set_parameters`); change parameters only through them.

    Schema 2 (`manifest.standard_graph`), on CPU and CUDA alike: the parameters come from the
    bundle's `.npz`, the standard graph writes this pass's gradients into `_step_gradient`, and
    `forward_backward` adds them to `_gradient` (or overwrites it after `discard_gradients`): ORT's
    accumulation, in numpy. On CUDA the bound arrays stay in host memory, so ORT copies them to
    the device on every run: simple, and untested here for want of a GPU.

    Schema 1: the training API loads the checkpoint into a training module. On CPU the training
    graph runs bound as above, its accumulators writing `_gradient` in place, with the same
    outputs and gradients bit for bit as the module's own calls; elsewhere (CUDA) the module's
    calls run.
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int = 1) -> None:
        import onnxruntime

        self.manifest = bundle.manifest
        self.bundle_path = bundle.path
        self.bundle_sha256 = bundle.sha256
        self.device = resolve_device(device)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 2  # warnings and up, whatever another library set globally
        self._ortvalue = onnxruntime.OrtValue.ortvalue_from_numpy
        graph = self.manifest.graph
        self._layers = self.manifest.norm_layers
        self._stat_inputs = [(layer.name, *layer.stat_inputs) for layer in self.manifest.batch_norms]
        self._outputs = [graph.logits] + [n for layer in self._layers for n in layer.moment_outputs]
        self.trainable = list(self.manifest.trainable)
        self._state_behind = False  # the bound parameter copy holds writes the checkpoint state has not seen
        self.state = self.module = None  # schema 1 only: the training API's checkpoint and module
        self._step_gradient: np.ndarray | None = None  # schema 2: the last pass's own gradients
        self._owner: object | None = None  # whose parameters the model holds (`serve`)
        spec = self.manifest.standard_graph
        if spec is not None:
            with np.load(bundle.file(spec.parameters), allow_pickle=False) as saved:
                params = {name: saved[name] for name in saved.files}
            self.layout = Layout.of({n: params[n] for n in self.trainable})
            self._source = {n: params[n].copy() for n in self.trainable}
            self._graphs = self._bind_graphs(bundle, options, params)
            return
        api = training_api_for(bundle)
        self.state = api.CheckpointState.load_checkpoint(str(bundle.file(CHECKPOINT)))
        self.module = api.Module(
            str(bundle.file(TRAINING_MODEL)),
            self.state,
            str(bundle.file(EVAL_MODEL)),
            device=self.device,
            session_options=options,
        )
        self._train_inputs = self.module.train().input_names()
        self._eval_inputs = self.module.eval().input_names()
        self.layout = parameter_buffer_layout(self.module, self.state, self.trainable)
        self._trainable_params = [self.state.parameters[n] for n in self.layout.names]
        params = {n: p.data.copy() for n, p in self.state.parameters}
        self._source = {n: params[n].copy() for n in self.trainable}
        self._graphs = self._bind_graphs(bundle, options, params) if self.device == "cpu" else None

    def _bind_graphs(
        self, bundle: Bundle, options, params: dict[str, np.ndarray]
    ) -> tuple[BoundGraph, BoundGraph]:
        """Eval and training graphs bound to the parameters (trainable ones as views of one vector
        in `layout`), the statistics and stat mix, and the gradients: for the standard graph its
        gradient outputs (views of `_step_gradient`), for ORT's training graph each trainable
        parameter's accumulation buffer (a view of `_gradient`) and the reset flag."""
        graph = self.manifest.graph
        self._param_names = list(params)
        self._param_vector = self.layout.flatten(params, np.float32)
        kept = {n: v for n, v in params.items() if n not in self.layout.names}
        kept.update(self.layout.split(self._param_vector))
        kept.update(self._stat_buffers())
        if graph.stat_mix is not None:
            kept[graph.stat_mix] = np.zeros(1, np.float32)
        self._kept = kept
        self._gradient = np.zeros(self.layout.size, np.float32)
        self._reset = np.ones(1, bool)  # true: the next training pass overwrites the gradients
        per_call = {graph.input, graph.sample_weight} | (
            {self.manifest.auxiliary.target} if self.manifest.auxiliary else set()
        )
        spec = self.manifest.standard_graph
        predictor = BoundGraph(bundle.file(EVAL_MODEL), options, self.device)
        predictor.fetch(self._outputs)
        if spec is None:
            trainer = BoundGraph(bundle.file(TRAINING_MODEL), options, self.device)
            training = {f"{n}{ACCUMULATION_BUFFER}": v for n, v in self.layout.split(self._gradient).items()}
            training[LAZY_RESET_GRAD] = self._reset
            trainer.fetch(
                [graph.loss, *self._outputs, *(o for o in trainer.outputs if o.endswith(ACCUMULATION_OUT))]
            )
        else:
            trainer = BoundGraph(bundle.file(spec.model), options, self.device)
            self._step_gradient = np.zeros(self.layout.size, np.float32)
            steps = self.layout.split(self._step_gradient)
            training = {}
            trainer.fetch([graph.loss, *self._outputs], into={spec.gradients[n]: steps[n] for n in steps})
        for g, values in ((predictor, kept), (trainer, {**kept, **training})):
            for name in g.inputs:
                if name in values:
                    g.bind(name, values[name])
            missing = [name for name in g.unbound() if name not in per_call]
            if missing:
                raise ValueError(f"{g.path} has inputs this runtime does not feed: {missing}")
        return predictor, trainer

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

    def _feeds(
        self,
        names: list[str],
        x: np.ndarray,
        weights: np.ndarray,
        stats: Stats,
        mix: float,
        target: np.ndarray | None = None,
    ) -> list:
        """This call's inputs (everything but the parameters and gradient buffers) in the order of
        `names`, for the training module's own calls."""
        graph = self.manifest.graph
        values = {}
        values[graph.input] = np.ascontiguousarray(x, np.float32)
        values[graph.sample_weight] = weights
        aux = self.manifest.auxiliary
        if aux is not None:  # the eval graph keeps the training graph's inputs, so feed it always
            shape = (len(x), len(aux.transformations))
            values[aux.target] = np.zeros(shape, np.float32) if target is None else target
        if graph.stat_mix is not None:
            values[graph.stat_mix] = np.asarray([mix], np.float32)
        for layer, mean_input, var_input in self._stat_inputs:
            mean, var = stats[layer]
            values[mean_input] = np.asarray(mean, np.float32)
            values[var_input] = np.asarray(var, np.float32)
        return [values[n] for n in names]

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
    ) -> None:
        """This call's inputs, copied into the bound buffers: the statistics and the mix into
        those bound once, the batch-shaped ones into buffers bound for the batch size."""
        g.batch(len(x))
        graph = self.manifest.graph
        g.feed(graph.input, np.ascontiguousarray(x, np.float32))
        g.feed(graph.sample_weight, weights)
        aux = self.manifest.auxiliary
        if aux is not None:  # the eval graph keeps the training graph's inputs, so feed it always
            shape = (len(x), len(aux.transformations))
            g.feed(aux.target, np.zeros(shape, np.float32) if target is None else target)
        kept = self._kept
        if graph.stat_mix is not None:
            kept[graph.stat_mix][0] = mix  # rounded to float32 as the input is
        if isinstance(stats, FlatStats) and stats.names == self._stat_names:
            np.copyto(self._stat_vector, stats.vector)
            return
        for layer, mean_input, var_input in self._stat_inputs:
            mean, var = stats[layer]
            np.copyto(kept[mean_input], mean)  # cast to float32 on the way where needed
            np.copyto(kept[var_input], var)

    def forward(self, x: np.ndarray, stats: Stats, mix: float = 0.0) -> Outputs:
        """Eval graph: logits and batch moments; no gradients, no state change."""
        weights = np.zeros(len(x), np.float32)
        if self._graphs is None:
            self.module.eval()
            out = self.module(*self._feeds(self._eval_inputs, x, weights, stats, mix))
            return self._unpack(out[1:], None)
        predictor = self._graphs[0]
        self._bind_call(predictor, x, weights, stats, mix)
        return self._unpack(predictor.run(), None)

    def forward_backward(
        self,
        x: np.ndarray,
        weights: np.ndarray,
        stats: Stats,
        mix: float = 0.0,
        target: np.ndarray | None = None,
    ) -> Outputs:
        """Training graph: loss = sum(weights * entropy), or for a bundle with an auxiliary task
        sum(weights * cross-entropy of the auxiliary head against `target`); gradients accumulate
        until `discard_gradients`.

        The logits are those before the update, i.e. what `forward` would have returned.
        """
        weights = np.asarray(weights, np.float32)
        if target is not None:
            target = np.ascontiguousarray(target, np.float32)
        if self._graphs is None:
            self.module.train()
            out = self.module(*self._feeds(self._train_inputs, x, weights, stats, mix, target))
        else:
            trainer = self._graphs[1]
            self._bind_call(trainer, x, weights, stats, mix, target)
            out = trainer.run()
            if self._step_gradient is not None:  # the standard graph: add this pass's gradients
                if self._reset[0]:
                    np.copyto(self._gradient, self._step_gradient)
                else:
                    self._gradient += self._step_gradient
            self._reset[0] = False  # the next pass adds to these gradients
        return self._unpack(out[1:], float(out[0]))

    def discard_gradients(self) -> None:
        """Forget the accumulated gradients: the next training pass starts from zero."""
        if self._graphs is None:
            self.module.lazy_reset_grad()
        else:
            self._reset[0] = True

    def source_parameters(self) -> dict[str, np.ndarray]:
        """The trainable parameters as the bundle holds them (copies), whatever the model holds
        now: engines that share the model write their own adapted ones into it."""
        return {n: v.copy() for n, v in self._source.items()}

    def parameters(self, trainable_only: bool = True) -> dict[str, np.ndarray]:
        """The parameters the model holds now (copies): the engine served last has written them."""
        if self.state is None:
            names = self.trainable if trainable_only else self._param_names
            return {n: self._kept[n].copy() for n in names}
        self._sync_state()
        params = self.state.parameters
        names = self.trainable if trainable_only else [name for name, _ in params]
        return {n: params[n].data.copy() for n in names}

    def gradient_vector(self) -> np.ndarray:
        """The accumulated gradients of the trainable parameters, float32, flat in `layout`."""
        if self._graphs is not None:
            return self._gradient.copy()
        return np.concatenate([p.grad for p in self._trainable_params])

    def gradients(self) -> dict[str, np.ndarray]:
        views = self.layout.split(self.gradient_vector())
        return {n: views[n] for n in self.trainable}

    def write_parameters(self, vector: np.ndarray, owner: object | None = None) -> None:
        """Set every trainable parameter from one flat vector in `layout`: on CPU into the copy
        the graphs are bound to (the checkpoint state follows when it is read), else into the
        state in one ORT call. `owner`: whose parameters these are from now on (see `serve`);
        None for a write that does not change hands (a step's temporary perturbation)."""
        if self._graphs is None:
            vector = np.array(vector, np.float32)  # a copy: the caller may change its array later
            self.module.copy_buffer_to_parameters(self._ortvalue(vector)._ortvalue, trainable_only=True)
        else:
            np.copyto(self._param_vector, vector)
            self._state_behind = self.state is not None
        if owner is not None:
            self._owner = owner

    def _sync_state(self) -> None:
        """Bring the checkpoint state up to the bound copy (CPU) before anything reads it."""
        if self._state_behind:
            self.module.copy_buffer_to_parameters(
                self._ortvalue(self._param_vector)._ortvalue, trainable_only=True
            )
            self._state_behind = False

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
