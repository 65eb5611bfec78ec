"""What a schema-1 bundle (ORT's training graph and checkpoint, no standard-operator graph) needs
from onnxruntime-training: its API, to read the checkpoint, with one line saying what to do where
it is missing; and the CPU, where the training graph's accumulators write host memory."""

from __future__ import annotations

import numpy as np

from edge_ttt.artifacts import Bundle, BundleError
from edge_ttt.manifest import CHECKPOINT
from edge_ttt.ortapi import training_api


def training_api_for(bundle: Bundle):
    """The training API a schema-1 bundle needs, or one line saying how to do without it."""
    try:
        return training_api()
    except ImportError:
        raise BundleError(
            f"{bundle.path} has no standard-operator training graph (manifest schema 1) and this "
            "onnxruntime has no training API: re-export it with this version (`edge-ttt export`)"
        ) from None


def checkpoint_parameters(bundle: Bundle, device: str) -> dict[str, np.ndarray]:
    """Every parameter in the bundle's ORT checkpoint, by name. Refused off the CPU: the training
    graph adds each pass's gradients into its input buffers in place, which the host reads only
    where those buffers are its own memory."""
    if device != "cpu":
        raise BundleError(
            f"{bundle.path} has no standard-operator training graph (manifest schema 1), which "
            f"runs on the CPU only, not on {device!r}: re-export it with this version "
            '(`edge-ttt export`), or set device = "cpu"'
        )
    state = training_api_for(bundle).CheckpointState.load_checkpoint(str(bundle.file(CHECKPOINT)))
    return {name: param.data.copy() for name, param in state.parameters}
