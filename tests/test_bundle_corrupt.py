"""A bundle whose files match their hashes but cannot be read (truncated or replaced, then re-hashed
in manifest.json) is refused as a BundleError naming the file: one line and exit 2, not a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import BundleError, load_bundle
from tests.agent_harness import write_config


def rehashed(bundle_dir: Path, out: Path, name: str, data: bytes) -> Path:
    shutil.copytree(bundle_dir, out)
    (out / name).write_bytes(data)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(params=["truncated eval_model.onnx", "garbage parameters.npz"])
def corrupt(request, bundle_dir, tmp_path) -> tuple[Path, str]:
    if request.param.startswith("truncated"):
        data = (bundle_dir / "eval_model.onnx").read_bytes()[:9000]
        return rehashed(bundle_dir, tmp_path / "b", "eval_model.onnx", data), "eval_model.onnx"
    return rehashed(bundle_dir, tmp_path / "b", "parameters.npz", os.urandom(3000)), "parameters.npz"


def test_loading_the_model_refuses_it_naming_the_file(corrupt):
    path, name = corrupt
    with pytest.raises(BundleError, match=rf"{name} is corrupt.*edge-ttt export"):
        OrtModel(load_bundle(path))


def test_run_says_so_in_one_line_and_exits_2(corrupt, tmp_path):
    path, name = corrupt
    cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(write_config(tmp_path, path, 1))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert done.returncode == 2 and name in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("key", ["window", "channels"])
def test_a_manifest_edited_after_export_is_refused_at_load(bundle_dir, tmp_path, key):
    """The manifest itself is not among the hashed files: a window or channel list edited there
    would load, and then fail every window."""
    out = tmp_path / "edited"
    shutil.copytree(bundle_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    if key == "window":
        manifest["model"]["window"] //= 2
    else:
        manifest["model"]["channels"] = manifest["model"]["channels"][:-1]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match=r"edge-ttt export") as refused:
        OrtModel(load_bundle(out))
    if key == "window":  # (an edited channel list is caught sooner, by the standardization's length)
        assert "the manifest says windows of" in str(refused.value) and "its graph takes" in str(
            refused.value
        )
