"""ORT's artifact generator (training, eval and optimizer graphs and the checkpoint) run quietly:
its log lines go to the bundle's export log, not the terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime
from onnxruntime.training import artifacts, onnxblock

from edge_ttt.adapt.transforms import TRANSFORMS
from edge_ttt.manifest import OPTIMIZER_MODEL
from export.loss import WeightedCrossEntropy, WeightedEntropy
from export.onnx_graph import MAX_IR_VERSION, GraphNames

EXPORT_LOG = "export.log"
ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to `path`: ORT's C++ logger writes its INFO lines there, not via Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def generate(proto: onnx.ModelProto, names: GraphNames, classes: int, out: Path) -> None:
    """Run ORT's artifact generator with its ~40 INFO lines sent to the export log, not stderr."""
    frozen = [i.name for i in proto.graph.initializer if i.name not in names.trainable]
    loss = WeightedCrossEntropy(len(TRANSFORMS)) if names.aux_logits else WeightedEntropy(classes)
    root = logging.getLogger()
    handler = logging.FileHandler(out / EXPORT_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = (root.level, root.handlers[:])
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        with _stderr_to(out / EXPORT_LOG):
            artifacts.generate_artifacts(
                proto,
                requires_grad=list(names.trainable),
                frozen_params=frozen,
                loss=loss,
                optimizer=onnxblock.optim.AdamW(
                    betas=ADAMW["betas"], eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"]
                ),
                artifact_directory=out,
                additional_output_names=names.outputs,
                loss_input_names=[names.aux_logits or names.outputs[0]],
            )
    finally:
        onnxruntime.set_default_logger_severity(2)  # the generator leaves ORT's own logger at INFO
        root.handlers = saved[1]
        root.setLevel(saved[0])
        handler.close()
    optimizer = onnx.load(out / OPTIMIZER_MODEL)
    if optimizer.ir_version > MAX_IR_VERSION:  # an onnx newer than the pinned one wrote it
        optimizer.ir_version = MAX_IR_VERSION
        onnx.save(optimizer, out / OPTIMIZER_MODEL)
