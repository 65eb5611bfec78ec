"""Each batch norm's time length (the samples per channel its moments average over), read from
the bundle's eval graph: for bundles exported before the manifest recorded it (`NormLayer.length`).

Instance-aware batch norm (NOTE) sets its thresholds from the standard errors of a window's own
moments, which need that length; an older manifest does not record it and the device side
never imports onnx. ONNX Runtime's profiler does record every node's input shapes, and the exporter
names a layer's nodes by its module path (`block1.norm` -> `/.../block1/norm/...`), so one
profiled pass of one window gives, per layer, the [1, channels, length] input of its nodes
(the longest: they also take its time means, [1, channels, 1]).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from edge_ttt.manifest import EVAL_MODEL

DTYPES = {"tensor(float)": np.float32, "tensor(bool)": np.bool_, "tensor(int64)": np.int64}


def _profile(model_path: Path) -> list[dict]:
    """The profiler's node events for one pass of a batch of one (inputs zero)."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        options = onnxruntime.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "lengths")
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        feeds = {
            i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], DTYPES[i.type])
            for i in session.get_inputs()
        }
        session.run(None, feeds)
        return [e for e in json.loads(Path(session.end_profiling()).read_text()) if e.get("cat") == "Node"]


def batch_norm_lengths(bundle_path: Path, layers: list[tuple[str, int]]) -> dict[str, int]:
    """Per (layer name, channels), the time length of its input in the eval graph; ValueError
    naming the layers whose nodes were not found (then give the lengths by hand)."""
    events = _profile(Path(bundle_path) / EVAL_MODEL)
    lengths, missing = {}, []
    for name, channels in layers:
        path = "/" + name.replace(".", "/") + "/"
        found = {
            shape[2]
            for e in events
            if path in e.get("name", "")
            for shapes in e.get("args", {}).get("input_type_shape", [])
            for shape in shapes.values()
            if len(shape) == 3 and shape[:2] == [1, channels]
        }
        if found:  # the input [1, C, L] and its time means [1, C, 1]
            lengths[name] = int(max(found))
        else:
            missing.append(name)
    if missing:
        raise ValueError(f"no [1, channels, length] input found in the eval graph for {', '.join(missing)}")
    return lengths
