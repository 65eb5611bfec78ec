"""Reference 1D sensor classifiers; inputs are raw windows [batch, channels, length].

Input standardization (the source data's per-channel mean and std) is the first layer of every
model, so the exported graph takes raw sensor values and the constants travel with the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from edge_ttt.adapt.transforms import TRANSFORMS
from export.norms import BatchNorm, ChannelLayerNorm, GroupNorm, pool_time


class Standardize(nn.Module):
    """(x - mean) / std per channel, with constants frozen from the source data."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.reshape(1, -1, 1)) / self.std.reshape(1, -1, 1)


class ConvBlock(nn.Module):
    """Conv → norm → ReLU → optional max-pool."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: nn.Module, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.norm = norm
        self.pool = nn.MaxPool1d(2) if pool else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x))))


class ConvNet(nn.Module):
    """Three conv blocks, global average pooling, linear head; the norm layer is a parameter."""

    def __init__(
        self, channels: int, classes: int, norm: Callable[[int], nn.Module], width: int = 32
    ) -> None:
        super().__init__()
        self.standardize = Standardize(channels)
        self.block1 = ConvBlock(channels, width, 7, norm(width), pool=True)
        self.block2 = ConvBlock(width, 2 * width, 5, norm(2 * width), pool=True)
        self.block3 = ConvBlock(2 * width, 2 * width, 3, norm(2 * width), pool=False)
        self.head = nn.Linear(2 * width, classes)

    def features(self, x: Tensor) -> Tensor:
        """The encoder: every layer before the head, pooled over time."""
        return pool_time(self.block3(self.block2(self.block1(self.standardize(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class AuxConvNet(ConvNet):
    """ConvNet plus a self-supervised head on the same encoder: which of the auxiliary
    transformations (`edge_ttt.adapt.transforms`) was applied to the window.

    `forward` is the classifier, so everything that runs a classifier runs this model; `heads`
    gives both from one encoder pass. Every norm layer is in the shared encoder, so test-time
    steps on the auxiliary loss move exactly the parameters the classifier depends on.
    """

    def __init__(self, channels: int, classes: int, norm: Callable[[int], nn.Module], tasks: int) -> None:
        super().__init__(channels, classes, norm)
        self.aux_head = nn.Linear(self.head.in_features, tasks)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(class logits, auxiliary logits)."""
        h = self.features(x)
        return self.head(h), self.aux_head(h)

    def aux_logits(self, x: Tensor) -> Tensor:
        return self.aux_head(self.features(x))


class TemporalBlock(nn.Module):
    """Pre-norm residual block: LayerNorm → dilated depthwise conv → ReLU → pointwise conv."""

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(width)
        self.depthwise = nn.Conv1d(width, width, 5, padding=2 * dilation, dilation=dilation, groups=width)
        self.pointwise = nn.Conv1d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pointwise(torch.relu(self.depthwise(self.norm(x))))


class TemporalConvNet(nn.Module):
    """Strided conv stem + LayerNorm, LayerNorm'd dilated temporal blocks, final LayerNorm, head.

    The stem's own LayerNorm is not decoration: in ORT 1.19.2 a norm whose input needs no
    gradient and also feeds a residual sum got a wrong weight gradient (memory reuse overwrote
    its normalized input before the backward pass; 16% off against torch and finite
    differences). Normalizing the stem first keeps every residual input on the gradient path.
    """

    def __init__(self, channels: int, classes: int, width: int = 48) -> None:
        super().__init__()
        self.standardize = Standardize(channels)
        self.stem = nn.Conv1d(channels, width, 5, stride=2, padding=2)
        self.stem_norm = ChannelLayerNorm(width)
        self.blocks = nn.Sequential(*(TemporalBlock(width, d) for d in (1, 2, 4)))
        self.norm = ChannelLayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem_norm(self.stem(self.standardize(x)))
        h = self.norm(self.blocks(h))
        return self.head(pool_time(h))


def _cnn_bn(channels: int, classes: int) -> nn.Module:
    return ConvNet(channels, classes, lambda c: BatchNorm(c))


def _cnn_gn(channels: int, classes: int) -> nn.Module:
    return ConvNet(channels, classes, lambda c: GroupNorm(8, c))


def _cnn_bn_ttt(channels: int, classes: int) -> nn.Module:
    return AuxConvNet(channels, classes, lambda c: BatchNorm(c), len(TRANSFORMS))


def _tcn_ln(channels: int, classes: int) -> nn.Module:
    return TemporalConvNet(channels, classes)


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "cnn-bn": _cnn_bn,
    "cnn-gn": _cnn_gn,
    "tcn-ln": _tcn_ln,
    "cnn-bn-ttt": _cnn_bn_ttt,
}


def build_model(name: str, channels: int, classes: int) -> nn.Module:
    """Instantiate a reference model by name; unknown names list the known ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return factory(channels, classes)
