"""Tent in PyTorch eager mode: the reference the ONNX Runtime `tent` policy is checked against.

Faithful to Tent (Wang et al., ICLR 2021): normalization layers use the current batch's
statistics (no running statistics are used or updated), only their affine parameters learn, by
Adam on the mean softmax entropy of the batch, one step per batch, and each batch's predictions
are the ones made before its own step.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from export.norms import norm_layers

BETAS = (0.9, 0.999)


def configure(model: nn.Module) -> list[nn.Parameter]:
    """Put `model` in Tent's mode in place and return the parameters Tent adapts."""
    model.train()
    model.requires_grad_(False)
    params = []
    for layer in norm_layers(model).values():
        if layer.kind == "batch":
            # Batch statistics in train and eval mode alike, and nothing accumulated.
            layer.track_running_stats = False
            layer.running_mean = None
            layer.running_var = None
        for p in (layer.weight, layer.bias):
            p.requires_grad_(True)
            params.append(p)
    return params


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per row, in nats."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


class TorchTent:
    """Tent on a private deep copy of `model`; the caller's model is never changed."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        self.model = copy.deepcopy(model)
        self.optimizer = torch.optim.Adam(configure(self.model), lr=lr, betas=BETAS, weight_decay=0.0)

    def forward_and_adapt(self, x: np.ndarray) -> np.ndarray:
        """Logits of the batch [n, C, L] before the step, then one entropy-minimization step."""
        logits = self.model(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        loss = softmax_entropy(logits).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return logits.detach().numpy()


def tent_predictions(model: nn.Module, windows: np.ndarray, batch_size: int, lr: float) -> np.ndarray:
    """Predicted classes of windows [N, C, L], adapted in the given order in consecutive batches."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    tent = TorchTent(model, lr)
    predicted = np.zeros(len(windows), dtype=np.int64)
    for i in range(0, len(windows), batch_size):
        predicted[i : i + batch_size] = tent.forward_and_adapt(windows[i : i + batch_size]).argmax(axis=1)
    return predicted
