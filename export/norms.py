"""Normalization layers that train as the native torch layers and export as explicit primitive ops.

In training (and in the torch reference) each layer is the native torch layer. For export, a
`NormIO` is attached to every layer; the layer then computes the same normalization from
primitive ops (MatMul, ReduceMean, Sub, Mul, Sqrt, Div), which keeps the affine parameters as
graph initializers with gradients in ONNX Runtime 1.19.2 (its LayerNormalization and
GroupNormalization have no usable gradient builders, see shared ORT notes), and:

- a batch norm takes its statistics as graph inputs, mixed with the batch's own by a scalar
  `stat_mix` input (0 = supplied statistics only, 1 = batch statistics as in Tent); traced
  without the mix (`NormIO.stat_mix` None: the serving graph), it normalizes with the supplied
  statistics alone;
- every layer returns the moments it measured on the batch as extra graph outputs, so the
  runtime can average them itself (batch size 1 included) and watch them drift.

The explicit form is written for a lean training graph, because ORT's gradient builder adds
several nodes for every op on the way to the loss and at 6 x 128 inputs those nodes, not the
convolutions, take most of a training pass: squares are products (Pow's gradient is four
nodes, three of them on the whole tensor, one a Pow); batch and group norms fold mean, variance
and affine into a per-channel `scale = weight / sqrt(var + eps)` and `shift = bias - mean *
scale`, so the whole tensor sees a Mul and an Add instead of Sub, Div, Mul and Add; and small
tensors broadcast through one Reshape instead of one Unsqueeze per new axis (and a Squeeze per
axis in the backward pass).

Averages over an axis whose length the traced graph fixes are MatMuls with a constant vector
(`time_average`: [B, C, L] @ [L, 1] of 1 / L; layer norm's channel mean: [1, C] of 1 / C @
[B, C, L]). ORT's gradient of a ReduceMean is seven bookkeeping nodes (Size, Shape, Size, Div,
Unsqueeze, Scale, Expand), a MatMul's is one MatMul. The time length is a constant of every
layer (the window is fixed at export) and the channel count one of the model; the batch is
dynamic, so a batch norm still averages its [B, C, 1] time means over the batch by ReduceMean.
Group norm squeezes its time means to [B, C] before the group matrix: a [C, C] @ [B, C, 1]
product broadcasts, and ORT wraps that (and its gradient) in Reshapes and is slower, though
the graph has fewer nodes. The global average pooling before the head (`pool_time`) is the
same MatMul in the exported graph only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def time_average(x: Tensor) -> Tensor:
    """[B, C, L] -> [B, C, 1]: the mean over time as a MatMul with a constant column of 1 / L (L
    is the traced, static length)."""
    length = int(x.shape[-1])
    return x @ torch.full((length, 1), 1.0 / length, dtype=x.dtype)


def pool_time(x: Tensor) -> Tensor:
    """[B, C, L] -> [B, C]: global average pooling over time; a MatMul when traced for export
    (see the module docstring), `mean` otherwise, so eager torch runs as it always did."""
    if torch.jit.is_tracing():
        return time_average(x).flatten(1)
    return x.mean(dim=2)


@dataclass
class NormIO:
    """Tensors flowing into and out of the norm layers while the export graph is traced."""

    stat_mix: Tensor | None = None
    supplied: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    moments: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


class _ExplicitNorm:
    """Mixin: a layer name and an optional `NormIO` that switches to the explicit path."""

    kind: str
    io: NormIO | None = None
    layer_name: str = ""

    def _record(self, mean: Tensor, var: Tensor) -> None:
        assert self.io is not None
        self.io.moments[self.layer_name] = (mean, var)


class BatchNorm(_ExplicitNorm, nn.BatchNorm1d):
    """BatchNorm over (batch, time) per channel; population statistics are supplied at export."""

    kind = "batch"

    def forward(self, x: Tensor) -> Tensor:
        if self.io is None:
            return super().forward(x)
        batch_mean = time_average(x).mean(dim=(0, 2))
        centered = x - batch_mean.reshape(1, -1, 1)
        batch_var = time_average(centered * centered).mean(dim=(0, 2))
        self._record(batch_mean, batch_var)
        mean, var = self.io.supplied[self.layer_name]
        mix = self.io.stat_mix
        if mix is not None:  # None: the serving graph, which normalizes with the supplied ones
            mean = mix * batch_mean + (1.0 - mix) * mean
            var = mix * batch_var + (1.0 - mix) * var
        scale = self.weight / torch.sqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale.reshape(1, -1, 1) + shift.reshape(1, -1, 1)


class GroupNorm(_ExplicitNorm, nn.GroupNorm):
    """GroupNorm: per-sample statistics; its moments (averaged over the batch) are only observed."""

    kind = "group"

    def forward(self, x: Tensor) -> Tensor:
        if self.io is None:
            return super().forward(x)
        # Group averages as matrix products with a constant channel->group matrix instead of
        # reshapes: the training graph ORT 1.19.2 builds from the reshape form crashes.
        c, g = self.num_channels, self.num_groups
        to_group = torch.repeat_interleave(torch.eye(g), c // g, dim=0) / (c // g)  # [C, G]
        to_channel = torch.repeat_interleave(torch.eye(g), c // g, dim=1)  # [G, C]
        average = to_group @ to_channel  # [C, C]: each channel to the average of its group
        mean = time_average(x).squeeze(2) @ average  # [B, C]
        centered = x - mean.unsqueeze(2)
        var = time_average(centered * centered).squeeze(2) @ average
        self._record((mean @ to_group).mean(dim=0), (var @ to_group).mean(dim=0))
        scale = self.weight / torch.sqrt(var + self.eps)  # [B, C]
        shift = self.bias - mean * scale
        return x * scale.unsqueeze(2) + shift.unsqueeze(2)


class ChannelLayerNorm(_ExplicitNorm, nn.Module):
    """LayerNorm over the channels of each time step of a [batch, channels, time] tensor."""

    kind = "layer"

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        if self.io is None:
            y = nn.functional.layer_norm(
                x.transpose(1, 2), (self.num_channels,), self.weight, self.bias, self.eps
            )
            return y.transpose(1, 2)
        row = torch.full((1, self.num_channels), 1.0 / self.num_channels, dtype=x.dtype)
        mean = row @ x  # [B, 1, L]: the channel mean of each time step
        centered = x - mean
        var = row @ (centered * centered)
        self._record(mean.mean().reshape(1), var.mean().reshape(1))
        x_hat = centered / torch.sqrt(var + self.eps)
        return x_hat * self.weight.reshape(1, -1, 1) + self.bias.reshape(1, -1, 1)


NORM_TYPES = (BatchNorm, GroupNorm, ChannelLayerNorm)


def norm_layers(model: nn.Module) -> dict[str, _ExplicitNorm]:
    """The model's normalization layers by module path, in forward order of registration."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NORM_TYPES)}


def attach_io(model: nn.Module, io: NormIO | None) -> None:
    """Switch every norm layer to the explicit export path (or back, with None)."""
    for name, layer in norm_layers(model).items():
        layer.io = io
        layer.layer_name = name
