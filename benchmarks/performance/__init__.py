"""The performance benchmark (issue #9): what adaptation costs next to inference and PyTorch.

Four measurements from one run, each against its reference in the same run:
- time per window of every model at every batch size: the engine (`Engine.process`, the agent's
  code path) with `source`, `norm`, `tent` and the default policy, and PyTorch eager inference and
  a Tent step on the same model, all single-threaded, taking turns batch by batch;
- the default policy on a drifting stream (clean, then corrupted): with its drift gate, and with
  its gate always open (a gradient pass on every `step_every`-th window);
- peak resident memory of a process adapting 100 devices: the agent's engines in a torch-free
  environment, against PyTorch Tent;
- replay of the target smartwatch log with the default policy, as a multiple of real time.
How to run it and read it: docs/performance.md.

Parts: `measure` (the four measurements), `targets`, `report` (the Markdown), `cli`
(`python -m benchmarks.performance`).
"""

from benchmarks.performance.cli import main, parse_args
from benchmarks.performance.measure import (
    COLUMNS,
    CYCLE,
    DEFAULT_POLICY,
    ENGINE_POLICIES,
    NO_FALLBACK,
    PERF_MODELS,
    TORCH_INFERENCE,
    TORCH_TENT,
    TRAIN_PASS,
    UNALIGNED,
    UNGATED,
    in_batches,
    measure_gate,
    measure_replay,
    measure_rss,
    measure_windows,
    summary_ms,
    time_turns,
)
from benchmarks.performance.report import markdown
from benchmarks.performance.targets import evaluate_targets, ratio

__all__ = [
    "COLUMNS",
    "CYCLE",
    "DEFAULT_POLICY",
    "ENGINE_POLICIES",
    "NO_FALLBACK",
    "PERF_MODELS",
    "TORCH_INFERENCE",
    "TORCH_TENT",
    "TRAIN_PASS",
    "UNALIGNED",
    "UNGATED",
    "evaluate_targets",
    "in_batches",
    "main",
    "markdown",
    "measure_gate",
    "measure_replay",
    "measure_rss",
    "measure_windows",
    "parse_args",
    "ratio",
    "summary_ms",
    "time_turns",
]
