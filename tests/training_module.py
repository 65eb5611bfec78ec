"""onnxruntime-training's own `Module` on a bundle's ORT training graph: the reference that the
engine's bound graphs must equal (and what ORT's on-device training would run). Test-only: the
engine runs every bundle in plain `InferenceSession`s."""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.statistics import Stats
from edge_ttt.artifacts import Bundle
from edge_ttt.manifest import CHECKPOINT, EVAL_MODEL, TRAINING_MODEL
from edge_ttt.ortapi import training_api


class TrainingModule:
    """The bundle's checkpoint in a training `Module` (one thread); `model` has the manifest that
    names the inputs."""

    def __init__(self, bundle: Bundle, model: OrtModel) -> None:
        import onnxruntime

        api = training_api()
        self.model = model
        self.state = api.CheckpointState.load_checkpoint(str(bundle.file(CHECKPOINT)))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # as the engine's graphs: the same order of float sums
        options.inter_op_num_threads = 1
        self.module = api.Module(
            str(bundle.file(TRAINING_MODEL)),
            self.state,
            str(bundle.file(EVAL_MODEL)),
            session_options=options,
        )
        self.train_inputs = self.module.train().input_names()
        self.eval_inputs = self.module.eval().input_names()

    def feeds(self, names: list[str], x: np.ndarray, weights: np.ndarray, stats: Stats, mix: float) -> list:
        """A call's inputs (everything but the parameters and gradient buffers) in `names`' order."""
        manifest = self.model.manifest
        graph = manifest.graph
        values = {graph.input: np.ascontiguousarray(x, np.float32), graph.sample_weight: weights}
        if manifest.auxiliary is not None:  # the eval graph keeps the training graph's inputs
            values[manifest.auxiliary.target] = np.zeros(
                (len(x), len(manifest.auxiliary.transformations)), np.float32
            )
        if graph.soft_target is not None:  # zeros: the entropy alone, as the engine feeds it
            values[graph.soft_target] = np.zeros((len(x), len(manifest.model.classes)), np.float32)
        if graph.stat_mix is not None:
            values[graph.stat_mix] = np.asarray([mix], np.float32)
        for layer in manifest.batch_norms:
            mean, var = stats[layer.name]
            values[layer.stat_inputs[0]] = np.asarray(mean, np.float32)
            values[layer.stat_inputs[1]] = np.asarray(var, np.float32)
        return [values[n] for n in names]

    def hold(self, params: dict[str, np.ndarray]) -> None:
        """Set these parameters in the module's checkpoint state, by name."""
        for name, value in params.items():
            self.state.parameters[name] = np.ascontiguousarray(value, np.float32)

    def eval(self, x: np.ndarray, stats: Stats, mix: float) -> list[np.ndarray]:
        """The eval step's outputs after the loss: logits, then every norm layer's moments."""
        self.module.eval()
        weights = np.zeros(len(x), np.float32)
        return list(self.module(*self.feeds(self.eval_inputs, x, weights, stats, mix))[1:])

    def train(self, x: np.ndarray, weights: np.ndarray, stats: Stats, mix: float) -> list[np.ndarray]:
        """The training step's outputs (loss first), accumulating gradients until `lazy_reset_grad`."""
        self.module.train()
        return list(self.module(*self.feeds(self.train_inputs, x, weights, stats, mix)))

    def gradients(self, names: list[str]) -> list[np.ndarray]:
        return [self.state.parameters[n].grad for n in names]

    def lazy_reset_grad(self) -> None:
        self.module.lazy_reset_grad()
