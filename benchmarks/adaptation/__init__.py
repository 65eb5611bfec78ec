"""The adaptation benchmark: every policy on shifted smartwatch streams, as a device would see them.

Papers evaluate test-time adaptation on shuffled batches of many windows; a wearable delivers one
window at a time, one exercise after another. So every (model, corruption, order, batch size)
stream is replayed through a fresh engine per policy, next to a PyTorch eager Tent as a cross-check
of the ONNX Runtime one, and the project's targets are evaluated from the numbers of the same run.
How to run it and read it: docs/adaptation-benchmark.md.

Parts: `cells` (streams, one cell, the workers), `paced` (the clock of a stream that does not
wait, `--paced`), `models` (the trained models' cache), `estimates` (label-free estimates next to
the truth), `targets`, `report` (the Markdown; `paced_report` its paced table and target), `cli`
(`python -m benchmarks.adaptation`).
"""

from benchmarks.adaptation.cells import (
    COLUMNS,
    NO_FALLBACK_COLUMN,
    ORDERS,
    TORCH_TENT,
    TORCH_TENT_LR,
    VARIANTS,
    Cell,
    ModelPaths,
    Variant,
    make_stream,
    per_device,
    run_cell,
    run_cells,
    runs_on,
    stream_order,
    variant,
)
from benchmarks.adaptation.cli import main, parse_args
from benchmarks.adaptation.estimates import Pair, estimate_pairs
from benchmarks.adaptation.models import prepare_models
from benchmarks.adaptation.report import markdown
from benchmarks.adaptation.targets import AUX_MODEL, AUX_POLICY, TARGET_MODEL, TARGET_ORDERS, evaluate_targets
from benchmarks.harness import FAIL, NOT_MEASURED, PASS, Target

__all__ = [
    "AUX_MODEL",
    "AUX_POLICY",
    "COLUMNS",
    "FAIL",
    "NOT_MEASURED",
    "NO_FALLBACK_COLUMN",
    "ORDERS",
    "PASS",
    "TARGET_MODEL",
    "TARGET_ORDERS",
    "TORCH_TENT",
    "TORCH_TENT_LR",
    "VARIANTS",
    "Cell",
    "ModelPaths",
    "Pair",
    "Target",
    "Variant",
    "estimate_pairs",
    "evaluate_targets",
    "main",
    "make_stream",
    "markdown",
    "parse_args",
    "per_device",
    "prepare_models",
    "run_cell",
    "run_cells",
    "runs_on",
    "stream_order",
    "variant",
]
