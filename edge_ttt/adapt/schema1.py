"""What a schema-1 bundle (ORT's training graph and checkpoint, no standard-operator graph) needs
from onnxruntime-training's API: the API itself, with one line saying what to do where it is
missing, and the order in which the training module keeps the trainable parameters."""

from __future__ import annotations

import numpy as np

from edge_ttt.adapt.flat import Layout
from edge_ttt.artifacts import Bundle, BundleError
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


def parameter_buffer_layout(module, state, trainable: list[str]) -> Layout:
    """The trainable parameters in the order of ORT's contiguous parameter buffer (that of the
    training graph), which `OrtModel.write_parameters` fills in one call. The buffer carries no
    names: distinct values written per name and read back in one buffer give the order."""
    params = state.parameters
    source = {n: params[n].data.copy() for n in trainable}
    layout = Layout.of(source)
    if module.get_parameters_size(trainable_only=True) != layout.size:
        raise ValueError(f"the training graph does not train exactly the manifest's {trainable}")
    probe = layout.split(np.arange(layout.size, dtype=np.float32))
    for name, value in probe.items():
        params[name] = np.ascontiguousarray(value)
    buffer = module.get_contiguous_parameters(trainable_only=True).numpy()
    for name, value in source.items():
        params[name] = value
    order = sorted(layout.names, key=lambda n: int(np.flatnonzero(buffer == probe[n].flat[0])[0]))
    layout = Layout(order, [source[n].shape for n in order])
    if not np.array_equal(buffer, layout.flatten(probe, np.float32)):
        raise ValueError("ORT's contiguous parameter buffer does not hold each parameter in one piece")
    return layout
