"""Per-window normalization statistics chosen layer by layer from the window's own moments.

Methods such as NOTE's instance-aware batch norm and UnMix-TNS decide, inside each batch norm,
what to normalize with from the statistics of that layer's input for this one window. Our graphs
take the statistics as inputs and return every norm layer's input moments, so one pass cannot do
that: a layer's input depends on how the layers before it normalized. With the layers in graph
order (the manifest's), pass j fixes layer j, whose input no longer changes once layers < j are
fixed; one more pass gives the logits. A window costs (layers + 1) forwards, and a batch is its
windows one by one, `joined` back into one batch's outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.outputs import Outputs
from edge_ttt.adapt.statistics import Stats, mixture_moments

# (layer name, (mean, var) of that layer's input for this window) -> (mean, var) to normalize with
Choose = Callable[[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def forward_layerwise(model: OrtModel, x: np.ndarray, start: Stats, choose: Choose) -> tuple[Outputs, Stats]:
    """Forward one window ([1, channels, length]) normalizing each batch norm with
    `choose(layer, own moments)`; returns the outputs (whose moments are the window's own, layer
    by layer, under those choices) and the statistics chosen. `start` fills the layers not yet
    chosen; it never changes the result, only what the intermediate passes compute."""
    if len(x) != 1:
        raise ValueError(f"forward_layerwise takes one window at a time, got {len(x)}")
    stats = {name: start[name] for name in start}
    names = [layer.name for layer in model.manifest.batch_norms]
    for name in names:
        moments = model.forward(x, stats).moments[name]
        stats[name] = tuple(np.asarray(v, np.float32) for v in choose(name, moments))
    return model.forward(x, stats), stats


def joined(outs: list[Outputs]) -> Outputs:
    """Outputs of consecutive parts (windows run one by one) as one batch's: logits stacked,
    each layer's moments pooled over all the windows (law of total variance)."""
    if len(outs) == 1:
        return outs[0]
    sizes = np.array([len(o.logits) for o in outs], np.float64)
    moments = {}
    for name in outs[0].moments:
        parts = [np.stack([o.moments[name][i] for o in outs]) for i in (0, 1)]
        mean, var = mixture_moments(*parts, weights=sizes / sizes.sum())
        moments[name] = (mean.astype(np.float32), var.astype(np.float32))
    return Outputs(np.concatenate([o.logits for o in outs]), moments)
