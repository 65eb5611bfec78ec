"""The device side imports and adapts in a process where importing torch fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEVICE_SCRIPT = r"""
import importlib, pkgutil, sys
sys.modules["torch"] = None  # from here on, `import torch` raises ImportError

import numpy as np
import edge_ttt
from edge_ttt.artifacts import load_bundle
from edge_ttt.adapt.ort_model import OrtModel

for mod in pkgutil.walk_packages(edge_ttt.__path__, "edge_ttt."):
    importlib.import_module(mod.name)

model = OrtModel(load_bundle(sys.argv[1]))
before = model.parameters()
x = np.random.default_rng(0).standard_normal((1, 6, 64)).astype(np.float32)
out = model.forward_backward(x, np.ones(1, np.float32), model.source_stats())
model.write_parameters(model.layout.flatten(before, np.float32) - 1e-2 * model.gradient_vector())
after = model.parameters()
assert out.loss > 0
assert any(not np.array_equal(before[k], after[k]) for k in before), "no parameter moved"
assert sys.modules["torch"] is None, "something replaced the torch blocker"
assert not hasattr(sys.modules["onnxruntime.training"], "artifacts"), "the torch-importing __init__ ran"
print("adapted without torch")
"""


def test_device_side_adapts_without_torch(bundle_dir: Path):
    result = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, str(bundle_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adapted without torch" in result.stdout


def test_blocker_really_blocks_torch():
    """Guards the test above: with the blocker in place, importing torch must fail."""
    code = (
        "import sys; sys.modules['torch'] = None\ntry:\n import torch\nexcept ImportError:\n print('blocked')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "blocked"
