"""Shared fixtures: synthetic labeled logs and exported bundles of every reference model."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.recordlog import RecordedLog, write_log

CHANNELS = ("ax", "ay", "az", "wx", "wy", "wz")
MODELS = ("cnn-bn", "cnn-gn", "tcn-ln")


def synthetic_log(devices: int = 4, seconds: float = 40.0, classes: int = 3, seed: int = 0) -> RecordedLog:
    """Per device, classes in runs of 10 s; class c is a sine of frequency (c + 1) Hz plus noise."""
    rng = np.random.default_rng(seed)
    rate = 50.0
    n = int(seconds * rate)
    t = np.arange(n) / rate
    ids, times, values, labels = [], [], [], []
    for d in range(devices):
        label = (np.arange(n) // int(10 * rate) + d) % classes
        phase = rng.uniform(0, 2 * np.pi, len(CHANNELS))
        x = np.sin(2 * np.pi * (label[:, None] + 1) * t[:, None] + phase) * (1 + 0.2 * d)
        x += 0.1 * rng.standard_normal(x.shape)
        ids.append(np.full(n, f"dev{d}", dtype=object))
        times.append(1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 20_000_000)
        values.append(x.astype(np.float32))
        labels.append(label.astype(np.int32))
    return RecordedLog(
        device_id=np.concatenate(ids),
        t_ns=np.concatenate(times),
        values=np.concatenate(values),
        label=np.concatenate(labels),
        channels=CHANNELS,
        sample_rate_hz=rate,
        class_names=tuple(f"c{c}" for c in range(classes)),  # the test models' (replay matches by name)
    )


@pytest.fixture(scope="session")
def synthetic_log_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("logs") / "synthetic.parquet"
    write_log(path, synthetic_log())
    return path


def exported_bundle(tmp_path_factory, model: str, folder: str, prepare=None) -> Path:
    """A bundle of `model` with randomized weights (no training: seconds, not minutes), after
    `prepare(source_model)` if given."""
    pytest.importorskip("torch")
    from export.bundle import export_bundle
    from tests.model_factory import source_model

    src = source_model(model)
    if prepare is not None:
        prepare(src)
    out = tmp_path_factory.mktemp(folder) / model
    export_bundle(src, out)
    return out


def legacy_bundle(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` as schema 1 wrote it: no standard-operator graph, no parameters file, no
    fixed-statistics graphs."""
    import json

    without_fixed_graphs(bundle, out)
    doc = json.loads((out / "manifest.json").read_text())
    spec = doc.pop("standard_graph")
    for name in (spec["model"], spec["parameters"]):
        (out / name).unlink()
        del doc["files"][name]
    doc["schema_version"] = 1
    (out / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    return out


def without_fixed_graphs(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` as exported before the fixed-statistics graphs: the general graphs only."""
    import json
    import shutil

    from edge_ttt.manifest import FIXED_EVAL_MODEL, FIXED_TRAINING_MODEL

    shutil.copytree(bundle, out)
    doc = json.loads((out / "manifest.json").read_text())
    for name in (FIXED_EVAL_MODEL, FIXED_TRAINING_MODEL):
        if doc["files"].pop(name, None) is not None:
            (out / name).unlink()
    (out / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    return out


def without_class_moments(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` as exported before the class moments (`reference.class_norms`)."""
    import json
    import shutil

    shutil.copytree(bundle, out)
    doc = json.loads((out / "manifest.json").read_text())
    del doc["reference"]["class_norms"]
    (out / "manifest.json").write_text(json.dumps(doc))
    return out


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    """An exported cnn-bn bundle."""
    return exported_bundle(tmp_path_factory, "cnn-bn", "bundles")


@pytest.fixture(scope="session")
def confident_bundle_dir(tmp_path_factory) -> Path:
    """A cnn-bn whose head is scaled up, so that some windows pass SAR's entropy filter."""

    def sharpen(src) -> None:
        import torch

        with torch.no_grad():
            src.model.head.weight.mul_(8.0)  # entropies 0.4 to 1.3 nats: a few below E0, none below 0.2

    return exported_bundle(tmp_path_factory, "cnn-bn", "confident", sharpen)


@pytest.fixture(scope="session")
def gn_bundle_dir(tmp_path_factory) -> Path:
    """An exported cnn-gn bundle (group norms: no batch norm statistics)."""
    return exported_bundle(tmp_path_factory, "cnn-gn", "bundles")


@pytest.fixture(scope="session")
def aux_bundle_dir(tmp_path_factory) -> Path:
    """An exported cnn-bn-ttt bundle (auxiliary head, auxiliary loss)."""
    return exported_bundle(tmp_path_factory, "cnn-bn-ttt", "bundles")


@pytest.fixture
def broker(tmp_path):
    """A private mosquitto on a free loopback port, stopped after the test."""
    from firmware_sim.broker import Broker

    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def small_disk():
    """`make(path, size, read_only=False)`: a tmpfs of `size` (e.g. "4m") mounted at `path`,
    unmounted after; the test skips, saying why, where mounting is not allowed (not root)."""
    mounted: list[Path] = []

    def make(path: Path, size: str, read_only: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def wait_for(condition, timeout: float = 20.0) -> bool:
    """Poll `condition` until it holds or `timeout` s pass (for what other threads and processes do)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="session")
def model_paths(bundle_dir, tmp_path_factory):
    """A benchmark model cache holding the cnn-bn bundle and a checkpoint (benchmarks' `ModelPaths`)."""
    import shutil

    from benchmarks.adaptation import ModelPaths
    from export.checkpoint import save_checkpoint
    from tests.model_factory import source_model

    cache = tmp_path_factory.mktemp("bench")
    shutil.copytree(bundle_dir, cache / "cnn-bn")
    save_checkpoint(cache / "cnn-bn.pt", source_model("cnn-bn"))
    return ModelPaths(cache / "cnn-bn", cache / "cnn-bn.pt")
