"""`steady`'s opt-in instance offsets: the first batch norm also follows what of a window's own
mean neither its predicted classes nor sampling explain (an offset creeping with temperature).

A first pass with the policy's statistics gives the window's predicted class distribution and its
mean at that layer; `class_free_mean` (`edge_ttt.adapt.iabn`) says where the layer's mean goes.
Pure numpy once made; docs/adaptation.md, "Instance offsets".
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from edge_ttt.adapt.iabn import class_free_mean
from edge_ttt.adapt.layer_lengths import batch_norm_lengths
from edge_ttt.adapt.ort_model import OrtModel, Stats
from edge_ttt.adapt.outputs import Outputs

log = logging.getLogger(__name__)


class FirstNorm(NamedTuple):
    """The first batch norm, as the instance offsets need it."""

    name: str
    length: int  # time samples per channel of one window at that layer
    eps: float
    class_offset: np.ndarray  # [classes, channels]: each class's mean input there, less the source's
    alpha: float  # standard errors within which a window's own mean is sampling

    @classmethod
    def of(cls, model: OrtModel, source: Stats, alpha: float) -> FirstNorm | None:
        """None at `alpha` 0 (off), without a batch norm (group- and layer-norm models already
        normalize each window by itself) or without the class moments to tell a window's
        activity from a fault."""
        norms = model.manifest.batch_norms
        class_norms = model.manifest.reference.class_norms
        if not norms or alpha <= 0:
            return None
        if class_norms is None:
            log.warning(
                "bundle %s has no class moments (reference.class_norms): steady runs without "
                "instance_offsets; re-run `edge-ttt export` to add them",
                model.bundle_path,
            )
            return None
        layer = norms[0]
        length = layer.length
        if length is None:  # exported before the manifest recorded it
            length = batch_norm_lengths(model.bundle_path, [(layer.name, layer.channels)])[layer.name]
        offset = np.asarray(class_norms[layer.name].mean, np.float64) - source[layer.name][0]
        return cls(layer.name, int(length), float(layer.eps), offset, alpha)

    def moved(self, stats: Stats, first: Outputs, windows: int) -> Stats | None:
        """`stats` with this layer's mean moved as `first` (a pass of `windows` windows with
        `stats`) says; None where nothing moves, so that pass is the answer."""
        base = stats[self.name]
        mean = class_free_mean(
            base,
            np.reshape(first.moments[self.name][0], np.shape(base[0])),
            first.softmax[0].mean(axis=0) @ self.class_offset,
            self.length * windows,
            self.alpha,
            self.eps,
        )
        return None if np.array_equal(mean, base[0]) else {**stats, self.name: (mean, base[1])}

    def follow(self, model: OrtModel, x: np.ndarray, stats: Stats, first: Outputs) -> Outputs:
        """`first` (a pass of `x` with `stats`) again with this layer's mean moved as it says, or
        `first` itself where nothing moves."""
        moved = self.moved(stats, first, len(x))
        return first if moved is None else model.forward(x, moved)
