"""Trace a reference model into an ONNX graph with explicit normalization inputs and outputs.

Graph contract (also written to the manifest and docs/manifest.md):
- input `x` [batch, channels, length] float32, raw sensor values;
- for models with batch norms: input `stat_mix` [1] and, per batch norm `L`, inputs
  `L.stat_mean` and `L.stat_var` [C];
- output `logits` [batch, classes] and, per norm layer `L`, outputs `L.batch_mean` and
  `L.batch_var` (per channel for batch norms, per group for group norms, [1] for layer norms);
- for models with an auxiliary head (`aux_head`): output `aux_logits` [batch, transformations],
  the input of the training loss (`export.loss.WeightedCrossEntropy`).
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass

import onnx
import torch
from torch import Tensor, nn

from export.norms import NormIO, attach_io, norm_layers

OPSET = 17
MAX_IR_VERSION = 10  # onnxruntime-training 1.19.2 refuses newer IR versions


class ExportError(RuntimeError):
    """The model cannot be exported as an adaptable bundle; the message says why."""


@dataclass(frozen=True)
class GraphNames:
    """Names of the graph's inputs, outputs and trainable parameters."""

    stat_mix: str | None
    stat_inputs: dict[str, tuple[str, str]]
    moment_outputs: dict[str, tuple[str, str]]
    trainable: tuple[str, ...]
    aux_logits: str | None = None

    @property
    def inputs(self) -> list[str]:
        names = ["x"]
        if self.stat_mix is not None:
            names.append(self.stat_mix)
        for mean, var in self.stat_inputs.values():
            names += [mean, var]
        return names

    @property
    def outputs(self) -> list[str]:
        names = ["logits"]
        for mean, var in self.moment_outputs.values():
            names += [mean, var]
        return names

    @property
    def exported(self) -> list[str]:
        """Every output of the traced graph: `outputs`, then the auxiliary logits if any."""
        return self.outputs + ([self.aux_logits] if self.aux_logits else [])


def graph_names(model: nn.Module) -> GraphNames:
    """Derive every graph name from the model's norm layers; fails when there are none."""
    layers = norm_layers(model)
    if not layers:
        raise ExportError(
            f"{type(model).__name__} has no normalization layer (BatchNorm, GroupNorm or LayerNorm): "
            "test-time adaptation here only trains normalization parameters"
        )
    batch = [n for n, m in layers.items() if m.kind == "batch"]
    return GraphNames(
        stat_mix="stat_mix" if batch else None,
        stat_inputs={n: (f"{n}.stat_mean", f"{n}.stat_var") for n in batch},
        moment_outputs={n: (f"{n}.batch_mean", f"{n}.batch_var") for n in layers},
        trainable=tuple(f"{n}.{p}" for n in layers for p in ("weight", "bias")),
        aux_logits="aux_logits" if hasattr(model, "aux_head") else None,
    )


class _ExplicitGraph(nn.Module):
    """Flat positional inputs and outputs around a model whose norm layers use a NormIO."""

    def __init__(self, model: nn.Module, names: GraphNames) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        it = iter(flat)
        io = NormIO(stat_mix=next(it) if self.names.stat_mix else None)
        for layer in self.names.stat_inputs:
            io.supplied[layer] = (next(it), next(it))
        attach_io(self.model, io)
        try:
            logits, aux = self.model.heads(x) if self.names.aux_logits else (self.model(x), None)
        finally:
            attach_io(self.model, None)
        out = [logits]
        for layer in self.names.moment_outputs:
            out += list(io.moments[layer])
        return tuple(out) if aux is None else (*out, aux)


def example_inputs(model: nn.Module, names: GraphNames, x: Tensor, stat_mix: float = 0.0) -> list[Tensor]:
    """Positional inputs after `x`: the mix and the model's own running statistics."""
    layers = norm_layers(model)
    flat: list[Tensor] = []
    if names.stat_mix is not None:
        flat.append(torch.tensor([stat_mix], dtype=torch.float32))
    for layer in names.stat_inputs:
        bn = layers[layer]
        flat += [bn.running_mean.detach().clone(), bn.running_var.detach().clone()]
    return flat


def explicit_forward(model: nn.Module, x: Tensor, flat: list[Tensor]) -> tuple[Tensor, ...]:
    """Run the explicit path in torch: what the exported graph computes, for tests and references."""
    return _ExplicitGraph(model, graph_names(model))(x, *flat)


def _drop_initializer_inputs(proto: onnx.ModelProto) -> None:
    """Parameters are initializers, not graph inputs the runtime would have to feed."""
    initializers = {i.name for i in proto.graph.initializer}
    keep = [i for i in proto.graph.input if i.name not in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)


def _strip_prefix(proto: onnx.ModelProto, prefix: str) -> None:
    """Name initializers by the model's own parameter paths, not the wrapper's."""
    renamed = {}
    for init in proto.graph.initializer:
        if init.name.startswith(prefix):
            renamed[init.name] = init.name[len(prefix) :]
            init.name = renamed[init.name]
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]


def to_onnx(model: nn.Module, channels: int, length: int) -> tuple[onnx.ModelProto, GraphNames]:
    """Export a deep copy in eval mode, without constant folding, and check the norm parameters survived."""
    names = graph_names(model)
    return trace(model, names, channels, length), names


def trace(model: nn.Module, names: GraphNames, channels: int, length: int) -> onnx.ModelProto:
    """The graph of `names` (its inputs and outputs) traced from a deep copy of the model, as `to_onnx`."""
    work = copy.deepcopy(model).eval()  # tracing must not touch the caller's running statistics
    x = torch.zeros(1, channels, length)
    flat = example_inputs(work, names, x)
    buf = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in ("x", "logits", names.aux_logits) if name}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _ExplicitGraph(work, names),
            (x, *flat),
            buf,
            input_names=names.inputs,
            output_names=names.exported,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
            # True skips the exporter's de-duplication of equal initializers, which would make
            # two freshly initialised norm layers share one weight; the inputs are removed below.
            keep_initializers_as_inputs=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    _drop_initializer_inputs(proto)
    _strip_prefix(proto, "model.")
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    check_norm_parameters(proto, names)
    return proto


def check_norm_parameters(proto: onnx.ModelProto, names: GraphNames) -> None:
    """Every norm weight and bias must be a graph initializer, or there is nothing to train."""
    initializers = {i.name for i in proto.graph.initializer}
    missing = [p for p in names.trainable if p not in initializers]
    if missing:
        raise ExportError(
            "normalization parameters missing from the exported graph (folded into constants or "
            "renamed by the exporter): " + ", ".join(missing)
        )
