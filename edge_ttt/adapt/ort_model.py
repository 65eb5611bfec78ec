"""The bundle's graphs in ONNX Runtime: forward, forward+backward, optimizer step, parameters.

Statistics are explicit: the caller passes, per batch norm, the (mean, var) to normalize with and
the `stat_mix` (0 = those statistics, 1 = the batch's own, as in Tent), and gets back every norm
layer's batch moments. No policy lives here; `edge_ttt.adapt` policies decide what to feed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.artifacts import Bundle
from edge_ttt.manifest import CHECKPOINT, EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL
from edge_ttt.ortapi import training_api

Stats = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Outputs:
    logits: np.ndarray
    moments: Stats
    loss: float | None = None


def available_devices() -> list[str]:
    """'cuda' when the installed onnxruntime has the CUDA execution provider, and always 'cpu'."""
    import onnxruntime

    return (["cuda"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else []) + ["cpu"]


def resolve_device(device: str) -> str:
    """Map 'auto' to the best available device; refuse 'cuda' where there is none."""
    devices = available_devices()
    if device == "auto":
        return devices[0]
    if device not in devices:
        raise RuntimeError(f"device {device!r} is not available here; available: {', '.join(devices)}")
    return device


class OrtModel:
    """One bundle loaded into ORT training and eval sessions sharing one checkpoint state.

    On CPU, `forward` runs the eval graph in a plain `InferenceSession` fed with a copy of the
    state's parameters kept here: that call costs a few to 12% less than the training module's
    eval step at batch size 1, with the same outputs bit for bit (docs/performance.md). The copy
    follows `set_parameters` and `step`; change parameters only through them.
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int = 1) -> None:
        import onnxruntime

        api = training_api()
        self.manifest = bundle.manifest
        self.bundle_path = bundle.path
        self.bundle_sha256 = bundle.sha256
        self.device = resolve_device(device)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 2  # warnings and up, whatever another library set globally
        self.state = api.CheckpointState.load_checkpoint(str(bundle.file(CHECKPOINT)))
        self.module = api.Module(
            str(bundle.file(TRAINING_MODEL)),
            self.state,
            str(bundle.file(EVAL_MODEL)),
            device=self.device,
            session_options=options,
        )
        self.optimizer = api.Optimizer(str(bundle.file(OPTIMIZER_MODEL)), self.module)
        self._predictor = (
            onnxruntime.InferenceSession(
                str(bundle.file(EVAL_MODEL)), options, providers=["CPUExecutionProvider"]
            )
            if self.device == "cpu"
            else None
        )
        self._fed_params: dict[str, np.ndarray] | None = None  # the state's parameters; None: read again
        graph = self.manifest.graph
        self._layers = self.manifest.norm_layers
        self._train_inputs = self.module.train().input_names()
        self._eval_inputs = self.module.eval().input_names()
        self._outputs = [graph.logits] + [n for layer in self._layers for n in layer.moment_outputs]
        self.trainable = list(self.manifest.trainable)
        self.active: object | None = None  # the policy whose parameters the state holds (Engine)

    def source_stats(self) -> Stats:
        """The batch norms' source statistics from the manifest, as float32 arrays."""
        return {
            layer.name: (np.asarray(layer.source_mean, np.float32), np.asarray(layer.source_var, np.float32))
            for layer in self.manifest.batch_norms
        }

    def _values(
        self,
        x: np.ndarray,
        weights: np.ndarray,
        stats: Stats,
        mix: float,
        target: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        graph = self.manifest.graph
        values = {graph.input: np.ascontiguousarray(x, np.float32), graph.sample_weight: weights}
        aux = self.manifest.auxiliary
        if aux is not None:  # the eval graph keeps the training graph's inputs, so feed it always
            shape = (len(x), len(aux.transformations))
            values[aux.target] = np.zeros(shape, np.float32) if target is None else target
        if graph.stat_mix is not None:
            values[graph.stat_mix] = np.asarray([mix], np.float32)
        for layer in self.manifest.batch_norms:
            mean, var = stats[layer.name]
            values[layer.stat_inputs[0]] = np.asarray(mean, np.float32)
            values[layer.stat_inputs[1]] = np.asarray(var, np.float32)
        return values

    def _feeds(
        self,
        names: list[str],
        x: np.ndarray,
        weights: np.ndarray,
        stats: Stats,
        mix: float,
        target: np.ndarray | None = None,
    ) -> list:
        values = self._values(x, weights, stats, mix, target)
        return [values[n] for n in names]

    def _params_as_fed(self) -> dict[str, np.ndarray]:
        if self._fed_params is None:
            self._fed_params = {name: p.data.copy() for name, p in self.state.parameters}
        return self._fed_params

    def _unpack(self, out: tuple, loss: float | None) -> Outputs:
        named = dict(zip(self._outputs, out, strict=True))
        moments = {
            layer.name: (named[layer.moment_outputs[0]], named[layer.moment_outputs[1]])
            for layer in self._layers
        }
        return Outputs(logits=named[self.manifest.graph.logits], moments=moments, loss=loss)

    def forward(self, x: np.ndarray, stats: Stats, mix: float = 0.0) -> Outputs:
        """Eval graph: logits and batch moments; no gradients, no state change."""
        weights = np.zeros(len(x), np.float32)
        if self._predictor is None:
            self.module.eval()
            out = self.module(*self._feeds(self._eval_inputs, x, weights, stats, mix))
            return self._unpack(out[1:], None)
        feeds = {**self._values(x, weights, stats, mix), **self._params_as_fed()}
        return self._unpack(self._predictor.run(self._outputs, feeds), None)

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
        until `step`.

        The logits are those before the update, i.e. what `forward` would have returned.
        """
        self.module.train()
        weights = np.asarray(weights, np.float32)
        if target is not None:
            target = np.ascontiguousarray(target, np.float32)
        out = self.module(*self._feeds(self._train_inputs, x, weights, stats, mix, target))
        return self._unpack(out[1:], float(out[0]))

    def step(self, lr: float) -> None:
        """Apply the optimizer to the accumulated gradients, then clear them."""
        self.optimizer.set_learning_rate(lr)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        self._fed_params = None

    def discard_gradients(self) -> None:
        """Forget the accumulated gradients: the next training pass starts from zero."""
        self.module.lazy_reset_grad()

    def parameters(self, trainable_only: bool = True) -> dict[str, np.ndarray]:
        params = self.state.parameters
        names = self.trainable if trainable_only else [name for name, _ in params]
        return {n: params[n].data.copy() for n in names}

    def gradients(self) -> dict[str, np.ndarray]:
        params = self.state.parameters
        return {n: params[n].grad.copy() for n in self.trainable}

    def set_parameters(self, values: dict[str, np.ndarray]) -> None:
        params = self.state.parameters
        for name, value in values.items():
            value = np.array(value, np.float32)  # a copy: the caller may change its array later
            params[name] = value
            if self._fed_params is not None:
                self._fed_params[name] = value
