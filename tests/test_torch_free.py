"""The device side imports and adapts in a process where importing torch fails, and a current
bundle also where onnxruntime's training API is missing (as in stock onnxruntime)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import legacy_bundle

DEVICE_SCRIPT = r"""
import importlib, pkgutil, sys
sys.modules["torch"] = None  # from here on, `import torch` raises ImportError
stock = sys.argv[2] == "stock"
if stock:
    sys.modules["onnxruntime.training"] = None  # as in stock onnxruntime: no training API

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
if stock:
    assert sys.modules["onnxruntime.training"] is None, "something replaced the training API blocker"
else:
    assert not hasattr(sys.modules["onnxruntime.training"], "artifacts"), "the torch-importing __init__ ran"
print("adapted without torch")
"""


def run_device_script(bundle: Path, runtime: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, str(bundle), runtime],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_device_side_adapts_without_torch_or_the_training_api(bundle_dir: Path):
    result = run_device_script(bundle_dir, "stock")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adapted without torch" in result.stdout


def test_a_schema_1_bundle_adapts_without_torch_through_the_training_api(bundle_dir: Path, tmp_path: Path):
    result = run_device_script(legacy_bundle(bundle_dir, tmp_path / "old"), "training")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adapted without torch" in result.stdout


def test_a_schema_1_bundle_without_the_training_api_says_to_re_export(bundle_dir: Path, tmp_path: Path):
    result = run_device_script(legacy_bundle(bundle_dir, tmp_path / "old"), "stock")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "no standard-operator training graph" in last and "`edge-ttt export`" in last


def test_blocker_really_blocks_torch():
    """Guards the test above: with the blocker in place, importing torch must fail."""
    code = (
        "import sys; sys.modules['torch'] = None\ntry:\n import torch\nexcept ImportError:\n print('blocked')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "blocked"
