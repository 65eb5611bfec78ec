"""The fixed-statistics graphs: a bundle's forward pass and standard training step at `stat_mix` 0.

Nearly every call a device makes normalizes with statistics it supplies: the default policy's
forward passes and gradient steps, the source model's pass. In the general graphs a batch norm
mixes them with the batch's own moments (`mix * batch + (1 - mix) * supplied`), and the training
step carries the gradient back through the batch moments, times the mix: at 0 that is arithmetic
on zeros, and at batch size 1 a graph costs what its number of tiny kernels costs. Traced without
the mix (`NormIO.stat_mix` None), the eval graph also drops the loss and the training inputs it
never used (cnn-bn: 114 -> 84 nodes), and the training graph the backward pass through the
moments (252 -> 155); docs/performance.md has the times.

For finite values `0 * v` is 0 and `v + 0` is `v`, so they give the general graphs' outputs bit for
bit. That is checked here, on windows around the source's scale; a graph that differs (or that
cannot be built) is not written, with a warning: a bundle without them runs its general graphs,
as readers from before them do.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from edge_ttt.manifest import (
    EVAL_MODEL,
    FIXED_EVAL_MODEL,
    FIXED_TRAINING_MODEL,
    PARAMETERS,
    STANDARD_TRAINING_MODEL,
    TRAINING_MODEL,
)
from export.checkpoint import SourceModel
from export.onnx_graph import GraphNames, trace
from export.ort_artifacts import generate
from export.standard_graph import lower

log = logging.getLogger(__name__)


def write_fixed_graphs(src: SourceModel, names: GraphNames, gradients: dict[str, str], out: Path) -> None:
    """Write the fixed eval graph, and for a model with batch norms the fixed training graph (its
    gradient outputs named as the standard graph's `gradients`), into the bundle directory `out`,
    which holds the general graphs and the parameters already; each only if it matches them. They
    only save time: one that cannot be built is left out with a warning, not an export error."""
    shape = (len(src.channels), src.window)
    feeds = _feeds(src, names, out)
    try:
        forward = trace(src.model, replace(names, stat_mix=None, aux_logits=None), *shape)
        _initializers_as_inputs(forward)
        onnx.save(forward, out / FIXED_EVAL_MODEL)
    except Exception as exc:  # whatever the tracer raises, the general graph serves
        log.warning("%s: the fixed eval graph could not be built (%s); not written", src.name, exc)
    else:
        _keep_if_same(out, FIXED_EVAL_MODEL, EVAL_MODEL, feeds)
    if names.stat_mix is None:  # no batch norm: the standard training graph has no mix to drop
        return
    fixed = replace(names, stat_mix=None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            generate(trace(src.model, fixed, *shape), fixed, len(src.classes), Path(tmp))
            training, fixed_gradients = lower(onnx.load(Path(tmp) / TRAINING_MODEL), fixed.trainable)
    except Exception as exc:  # as above: the standard training graph serves
        log.warning("%s: the fixed training graph could not be built (%s); not written", src.name, exc)
        return
    if fixed_gradients != gradients:
        log.warning("%s: the fixed training graph names its gradients otherwise; not written", src.name)
        return
    onnx.save(training, out / FIXED_TRAINING_MODEL)
    _keep_if_same(out, FIXED_TRAINING_MODEL, STANDARD_TRAINING_MODEL, feeds)


def _initializers_as_inputs(proto: onnx.ModelProto) -> None:
    """Every initializer becomes a graph input of its type and shape, as in ORT's eval graph, so that
    the device feeds the parameters (the trainable ones change) from the bundle's `.npz`."""
    for init in proto.graph.initializer:
        port = onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        proto.graph.input.append(port)
    del proto.graph.initializer[:]


def _feeds(src: SourceModel, names: GraphNames, out: Path) -> dict[str, np.ndarray]:
    """What the checks feed: three windows around the source's scale, the bundle's parameters,
    the source statistics and the mix at 0."""
    with np.load(out / PARAMETERS, allow_pickle=False) as saved:
        feeds = {name: saved[name] for name in saved.files}
    std = src.model.standardize
    scale, shift = (t.detach().numpy().astype(np.float32)[None, :, None] for t in (std.std, std.mean))
    x = np.random.default_rng(0).standard_normal((3, len(src.channels), src.window)) * scale + shift
    feeds["x"] = x.astype(np.float32)
    for layer, (mean, var) in names.stat_inputs.items():
        feeds[mean], feeds[var] = (np.asarray(v, np.float32) for v in src.norm_source[layer])
    if names.stat_mix is not None:
        feeds[names.stat_mix] = np.zeros(1, np.float32)
    return feeds


def _keep_if_same(out: Path, fixed: str, general: str, feeds: dict[str, np.ndarray]) -> None:
    """Delete `fixed` (with a warning) unless each of its outputs equals the `general` graph's
    output of that name, bit for bit, on `feeds`, and on random sample weights and targets."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    sessions = [
        onnxruntime.InferenceSession(str(out / name), options, providers=["CPUExecutionProvider"])
        for name in (general, fixed)
    ]
    feeds = dict(feeds)
    rng = np.random.default_rng(1)
    ports = [{p.name: p for p in s.get_inputs()} for s in sessions]
    for port in ports[0].values():
        if port.name not in feeds:
            dims = [d if isinstance(d, int) else len(feeds["x"]) for d in port.shape]
            feeds[port.name] = rng.uniform(0.1, 1.0, dims).astype(np.float32)
    wanted = [o.name for o in sessions[1].get_outputs()]
    same = set(ports[1]) <= set(ports[0])  # an input of its own: nothing the device feeds
    if same:
        pairs = zip(sessions, ports, strict=True)
        results = [s.run(wanted, {name: feeds[name] for name in p}) for s, p in pairs]
        same = all(np.array_equal(a, b) for a, b in zip(*results, strict=True))
    if not same:
        (out / fixed).unlink()
        log.warning("%s differs from %s at stat_mix 0 in %s; not written", fixed, general, out)
