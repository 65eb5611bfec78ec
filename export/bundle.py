"""Build the artifact bundle: ORT training/eval/optimizer models, checkpoint, the standard-operator
training graph with its parameters, the fixed-statistics graphs, and manifest.json."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.training import api

import edge_ttt
from edge_ttt.adapt.transforms import TRANSFORMS, check_channels
from edge_ttt.artifacts import sha256_file
from edge_ttt.manifest import (
    CHECKPOINT,
    PARAMETERS,
    SCHEMA_VERSION,
    STANDARD_TRAINING_MODEL,
    TRAINING_MODEL,
    Manifest,
)
from export.checkpoint import SourceModel, load_checkpoint
from export.fixed_graphs import write_fixed_graphs
from export.loss import AUX_TARGET_INPUT, SOFT_TARGET_INPUT, WEIGHT_INPUT
from export.norms import norm_layers
from export.onnx_graph import GraphNames, to_onnx
from export.ort_artifacts import ADAMW, generate
from export.standard_graph import lower

log = logging.getLogger(__name__)


def _write_standard(names: GraphNames, out: Path) -> dict[str, str]:
    """Lower the training graph to standard operators and write it beside its parameters (every
    value the checkpoint holds, as a NumPy archive a device reads without the training API);
    returns each trainable parameter's gradient output."""
    proto, gradients = lower(onnx.load(out / TRAINING_MODEL), names.trainable)
    onnx.save(proto, out / STANDARD_TRAINING_MODEL)
    state = api.CheckpointState.load_checkpoint(str(out / CHECKPOINT))
    np.savez(out / PARAMETERS, **{name: np.asarray(p.data) for name, p in state.parameters})
    return gradients


def _auxiliary(names: GraphNames) -> dict | None:
    """The manifest's auxiliary section: the task's transformations in label order and its ports."""
    if names.aux_logits is None:
        return None
    return {"transformations": list(TRANSFORMS), "logits": names.aux_logits, "target": AUX_TARGET_INPUT}


def norm_lengths(src: SourceModel) -> dict[str, int]:
    """Each norm layer's input length in time for one window: instance statistics (NOTE's
    thresholds) need it, and the device side reads it here rather than from the graph."""
    lengths: dict[str, int] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _, args, name=name: lengths.__setitem__(name, args[0].shape[-1])
        )
        for name, module in norm_layers(src.model).items()
    ]
    training = src.model.training
    try:
        src.model.eval()
        with torch.no_grad():
            src.model(torch.zeros(1, len(src.channels), src.window))
    finally:
        src.model.train(training)
        for hook in hooks:
            hook.remove()
    return {name: int(n) for name, n in lengths.items()}


def build_manifest(
    src: SourceModel, names: GraphNames, files: dict[str, str], gradients: dict[str, str]
) -> Manifest:
    layers = norm_layers(src.model)
    lengths = norm_lengths(src)
    norm_entries = []
    for layer, (mean_out, var_out) in names.moment_outputs.items():
        module = layers[layer]
        source_mean, source_var = src.norm_source[layer]
        norm_entries.append(
            {
                "name": layer,
                "kind": module.kind,
                "channels": int(module.weight.numel()),
                "eps": float(module.eps),
                "weight": f"{layer}.weight",
                "bias": f"{layer}.bias",
                "stat_inputs": names.stat_inputs.get(layer),
                "moment_outputs": (mean_out, var_out),
                "source_mean": source_mean,
                "source_var": source_var,
                "length": lengths[layer],
            }
        )
    std = src.model.standardize
    return Manifest.model_validate(
        {
            "schema_version": SCHEMA_VERSION,
            "model": {
                "name": src.name,
                "classes": src.classes,
                "channels": src.channels,
                "window": src.window,
                "hop": src.hop,
                "sample_rate_hz": src.sample_rate_hz,
            },
            "standardization": {"mean": std.mean.tolist(), "std": std.std.tolist()},
            "graph": {
                "stat_mix": names.stat_mix,
                "sample_weight": WEIGHT_INPUT,
                "soft_target": None if names.aux_logits else SOFT_TARGET_INPUT,
            },
            "norm_layers": norm_entries,
            "trainable": list(names.trainable),
            "auxiliary": _auxiliary(names),
            "standard_graph": {
                "model": STANDARD_TRAINING_MODEL,
                "parameters": PARAMETERS,
                "gradients": gradients,
            },
            "optimizer": {"kind": "adamw", **ADAMW},
            "reference": src.reference,
            "files": files,
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "edge_ttt": edge_ttt.__version__,
            },
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )


def export_bundle(src: SourceModel, out: Path, force: bool = False) -> Manifest:
    """Write the bundle to a temporary sibling directory, then move it into place."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / "manifest.json").is_file():  # --force replaces a bundle, nothing else
            what = "a file" if not out.is_dir() else "a directory that is not a bundle (no manifest.json)"
            raise FileExistsError(
                f"{out} is {what}, which export does not replace, --force or not; choose a new or "
                "empty directory"
            )
        if not force:
            raise FileExistsError(f"{out} holds a bundle; pass --force to replace it")
    proto, names = to_onnx(src.model, len(src.channels), src.window)
    if names.aux_logits:
        check_channels(src.channels)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        generate(proto, names, len(src.classes), tmp)
        gradients = _write_standard(names, tmp)
        write_fixed_graphs(src, names, gradients, tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = build_manifest(src, names, files, gradients)
        # A bundle without an auxiliary task has no `auxiliary` key at all, so that readers from
        # before the key (which forbid unknown keys) still load it.
        doc = manifest.model_dump(mode="json", exclude={"auxiliary"} if manifest.auxiliary is None else None)
        (tmp / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s", src.name, out)
    return manifest


def export_checkpoint(checkpoint: Path, out: Path, force: bool = False) -> Manifest:
    return export_bundle(load_checkpoint(checkpoint), out, force=force)
