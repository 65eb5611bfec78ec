"""Randomized reference models and bundles for tests (host side: needs torch)."""

from __future__ import annotations

import numpy as np
import torch

from edge_ttt.adapt.mounting import posture_reference
from edge_ttt.adapt.transforms import triads
from edge_ttt.artifacts import Bundle
from edge_ttt.drift.calibration import drift_limits
from edge_ttt.steadiness import stay_rates
from export.checkpoint import SourceModel
from export.models import build_model
from export.norm_moments import class_norm_moments, norm_source_moments
from export.norms import norm_layers
from export.reference import channel_reference, class_channels, entropy_quantiles
from tests.conftest import CHANNELS

CLASSES = 5
LENGTH = 64


def randomized_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A model with non-trivial weights and statistics everywhere, so parity is not by symmetry."""
    torch.manual_seed(seed)
    model = build_model(name, len(CHANNELS), CLASSES)
    with torch.no_grad():
        model.standardize.mean.copy_(torch.randn(len(CHANNELS)) * 0.3)
        model.standardize.std.copy_(torch.rand(len(CHANNELS)) + 0.5)
        for layer in norm_layers(model).values():
            layer.weight.copy_(torch.rand_like(layer.weight) + 0.5)
            layer.bias.copy_(torch.randn_like(layer.bias) * 0.2)
            if layer.kind == "batch":
                layer.running_mean.copy_(torch.randn_like(layer.running_mean) * 0.3)
                layer.running_var.copy_(torch.rand_like(layer.running_var) + 0.5)
    return model.eval()


def reference_data() -> tuple[np.ndarray, np.ndarray]:
    """The source samples [n, channels] and windows [n, channels, length] a test model's
    reference is computed from."""
    rng = np.random.default_rng(1)
    values = rng.standard_normal((2000, len(CHANNELS))).astype(np.float32)
    return values, rng.standard_normal((32, len(CHANNELS), LENGTH)).astype(np.float32)


def source_model(name: str) -> SourceModel:
    model = randomized_model(name)
    values, x = reference_data()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return SourceModel(
        model=model,
        name=name,
        channels=list(CHANNELS),
        classes=[f"c{i}" for i in range(CLASSES)],
        window=LENGTH,
        hop=LENGTH // 2,
        sample_rate_hz=50.0,
        reference={
            "channels": (reference_channels := channel_reference(values, list(CHANNELS))),
            "entropy": entropy_quantiles(logits),
            "samples": len(values),
            "val_windows": len(x),
            "val_accuracy": 0.5,
            "class_prior": [1 / CLASSES] * CLASSES,  # what the estimates assume without one
            "class_channels": class_channels(x, logits.argmax(axis=1), CLASSES, np.arange(len(x)) % 2),
            "mounting": posture_reference(x, logits.argmax(axis=1), np.arange(len(x)) % 2, triads(CHANNELS)),
            "class_norms": class_norm_moments(model, x, logits.argmax(axis=1), CLASSES),
            "drift_limits": drift_limits(
                x, np.arange(len(x)) // 8, [np.asarray(c["hist_edges"]) for c in reference_channels]
            ),
            "stay": stay_rates(logits.argmax(axis=1), np.arange(len(x)) // 8),
        },
        norm_source=norm_source_moments(model, x),
        report={},
    )


def windows(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, len(CHANNELS), LENGTH)) * 1.5).astype(np.float32)


def off_source(n: int, seed: int) -> np.ndarray:
    """Windows away from source (offset and gain), so that statistics and steps have somewhere to go."""
    return windows(n, seed=seed) * 2.0 + 1.0


def graph_inputs(bundle: Bundle, batch: int, mix: float) -> dict[str, np.ndarray]:
    """A call's inputs: windows, nonuniform weights, statistics off the source ones, a target
    (soft targets for an entropy bundle, so that both terms of its loss are compared)."""
    m = bundle.manifest
    rng = np.random.default_rng(batch)
    values = {
        m.graph.input: windows(batch, seed=batch),
        m.graph.sample_weight: np.linspace(0.2, 1.0, batch, dtype=np.float32),
    }
    if m.graph.stat_mix is not None:
        values[m.graph.stat_mix] = np.asarray([mix], np.float32)
    for layer in m.batch_norms:
        mean, var = layer.stat_inputs
        values[mean] = np.asarray(layer.source_mean, np.float32) + 0.1
        values[var] = np.asarray(layer.source_var, np.float32) * 1.5
    if m.auxiliary is not None:
        labels = rng.integers(0, len(m.auxiliary.transformations), batch)
        values[m.auxiliary.target] = np.eye(len(m.auxiliary.transformations), dtype=np.float32)[labels]
    if m.graph.soft_target is not None:
        soft = rng.uniform(0.0, 1.0, (batch, len(m.model.classes))).astype(np.float32)
        values[m.graph.soft_target] = soft / soft.sum()
    return values
