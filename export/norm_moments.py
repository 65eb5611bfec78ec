"""What the norm layers see on source data: the statistics a bundle normalizes with, and per class
the batch norms' input moments that `steady` uses to tell a change of activity from drift."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from export.norms import norm_layers
from export.onnx_graph import example_inputs, explicit_forward, graph_names


@dataclass
class _Sums:
    """Window-weighted sums of one layer's batch moments."""

    mean: np.ndarray
    var: np.ndarray  # of the batch variances: the mean within-batch variance
    square: np.ndarray  # of var + mean^2: the raw second moment


def _layer_sums(model: nn.Module, x: np.ndarray, batch_size: int) -> dict[str, _Sums]:
    """Per norm layer, its batch moments summed over `x` (each batch weighing its windows) when the
    batch norms normalize with their running statistics, as the exported graphs do with the source
    statistics."""
    names = graph_names(model)
    sums: dict[str, _Sums] = {}
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))
        out = explicit_forward(model, xb, example_inputs(model, names, xb))
        moments = iter(out[1:])
        for layer in names.moment_outputs:
            m = next(moments).numpy().astype(np.float64)
            v = next(moments).numpy().astype(np.float64)
            acc = sums.setdefault(layer, _Sums(np.zeros_like(m), np.zeros_like(v), np.zeros_like(v)))
            acc.mean += m * len(xb)
            acc.var += v * len(xb)
            acc.square += (v + m**2) * len(xb)
    return sums


@torch.no_grad()
def norm_source_moments(model: nn.Module, x: np.ndarray, batch_size: int = 64) -> dict:
    """Source statistics per norm layer: BN running statistics; GN/LN mean instance moments."""
    sums = _layer_sums(model, x, batch_size)
    result = {}
    for layer, norm in norm_layers(model).items():
        if norm.kind == "batch":
            result[layer] = (norm.running_mean.tolist(), norm.running_var.tolist())
        else:
            result[layer] = ((sums[layer].mean / len(x)).tolist(), (sums[layer].var / len(x)).tolist())
    return result


@torch.no_grad()
def class_norm_moments(
    model: nn.Module, x: np.ndarray, labels: np.ndarray, classes: int, batch_size: int = 256
) -> dict[str, dict[str, list[list[float]]]]:
    """Per batch norm and class: the mean and the population variance (within and between
    windows) of the layer's input over that class's windows, [classes][channels]; a class without
    windows gets the layer's running statistics. Empty for a model without batch norms."""
    model.eval()
    batch_norms = {name: norm for name, norm in norm_layers(model).items() if norm.kind == "batch"}
    out = {name: {"mean": [], "var": []} for name in batch_norms}
    for k in range(classes):
        xs = x[labels == k]
        sums = _layer_sums(model, xs, batch_size) if len(xs) else {}
        for name, norm in batch_norms.items():
            if name in sums:
                mean = sums[name].mean / len(xs)
                var = np.maximum(sums[name].square / len(xs) - mean**2, 0.0)
            else:
                mean, var = norm.running_mean.numpy(), norm.running_var.numpy()
            out[name]["mean"].append(np.asarray(mean, np.float64).tolist())
            out[name]["var"].append(np.asarray(var, np.float64).tolist())
    return out
