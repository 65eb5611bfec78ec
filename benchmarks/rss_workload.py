"""Peak memory of adapting many devices, measured inside a child process of the performance benchmark.

`engine`: what the agent runs: one `OrtModel` shared by one `Engine` per device (default policy),
each device's windows processed one at a time. This module imports no torch at module level, so
in a device environment without torch the process holds only numpy and ONNX Runtime.
`torch`: the same fleet adapted by PyTorch eager Tent: one model, and per device its own copy of
the norm affine parameters and its own Adam state (the equivalent of the agent's shared graph and
per-device policy state), each step run with `torch.func.functional_call`.

    python -m benchmarks.rss_workload engine|torch --bundle DIR --windows FILE.npy [--checkpoint PT]

Prints one JSON line: peak resident memory (VmHWM), the interpreter, whether torch is importable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

TORCH_TENT_LR = 1e-3


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def engine_fleet(bundle_dir: Path, windows: np.ndarray, devices: int) -> None:
    """Every device's engine takes its windows in turn, batch size 1, as the agent interleaves them."""
    from edge_ttt.adapt.engine import Engine
    from edge_ttt.adapt.ort_model import OrtModel
    from edge_ttt.artifacts import load_bundle

    model = OrtModel(load_bundle(bundle_dir), threads=1)
    engines = [Engine(model) for _ in range(devices)]
    for i in range(len(windows)):
        for engine in engines:
            engine.process(windows[i : i + 1])


def torch_fleet(checkpoint: Path, windows: np.ndarray, devices: int) -> None:
    """Tent per device on one shared model: per-device affine parameters and Adam state."""
    import torch

    from benchmarks.torch_tent import BETAS, configure, softmax_entropy
    from export.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    model = load_checkpoint(checkpoint).model
    configure(model)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    shared = dict(model.named_parameters())
    fleet = []
    for _ in range(devices):
        params = {n: shared[n].detach().clone().requires_grad_(True) for n in names}
        fleet.append((params, torch.optim.Adam(params.values(), lr=TORCH_TENT_LR, betas=BETAS)))
    for i in range(len(windows)):
        x = torch.from_numpy(np.ascontiguousarray(windows[i : i + 1], np.float32))
        for params, optimizer in fleet:
            logits = torch.func.functional_call(model, params, (x,))
            softmax_entropy(logits).mean().backward()
            optimizer.step()
            optimizer.zero_grad()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rss_workload", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=("engine", "torch"))
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--windows", type=Path, required=True, help=".npy of windows [n, C, L], each device's")
    p.add_argument("--devices", type=int, default=100)
    args = p.parse_args(argv)
    windows = np.load(args.windows)
    if args.kind == "engine":
        engine_fleet(args.bundle, windows, args.devices)
    else:
        if args.checkpoint is None:
            p.error("torch needs --checkpoint")
        torch_fleet(args.checkpoint, windows, args.devices)
    result = {
        "kind": args.kind,
        "peak_rss_mib": peak_rss_mib(),
        "python": sys.executable,
        "torch_importable": importlib.util.find_spec("torch") is not None,
        "torch_loaded": "torch" in sys.modules,
        "devices": args.devices,
        "windows_per_device": len(windows),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
