"""The benchmarks' models: trained on the source subjects and exported once, then taken from the
cache while their bundles verify."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.adaptation.cells import ModelPaths
from benchmarks.harness import progress
from edge_ttt.artifacts import Bundle, BundleError, load_bundle
from edge_ttt.recordlog import write_log
from export.bundle import export_bundle, export_checkpoint
from export.train import TrainConfig, missing_reference, train
from firmware_sim.datasets.watch import watch_logs


def cached(paths: ModelPaths, name: str) -> Bundle | None:
    """The bundle, where a checkpoint lies next to a bundle that verifies and holds the named model,
    from this version's training and export (its reference lacks nothing that training writes now,
    and its graph takes every input that the policies feed now); else None."""
    try:
        bundle = load_bundle(paths.bundle)
    except BundleError:
        return None
    if bundle.manifest.model.name != name or not paths.checkpoint.is_file():
        return None
    if bundle.manifest.auxiliary is None and bundle.manifest.graph.soft_target is None:
        progress(f"{paths.bundle} predates the soft-target input (rotta): training and exporting again")
        return None
    missing = missing_reference(paths.checkpoint)
    if missing:
        progress(f"{paths.checkpoint} predates {', '.join(missing)} in its reference: training again")
        return None
    return bundle


def prepare_models(names: list[str], cache: Path, retrain: bool) -> dict[str, ModelPaths]:
    """Train (TrainConfig defaults) and export every model that has no valid cached bundle."""
    paths = {name: ModelPaths(cache / name, cache / f"{name}.pt") for name in names}
    todo = []
    for name in names:
        bundle = None if retrain else cached(paths[name], name)
        if bundle is None:
            todo.append(name)
        elif bundle.manifest.fixed_eval is None:  # the trained model stands: its export is redone
            progress(f"{paths[name].bundle} predates the fixed-statistics graphs: exporting it again")
            export_checkpoint(paths[name].checkpoint, paths[name].bundle, force=True)
    if todo:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "watch_source.parquet"
            write_log(source, watch_logs()["source"])
            for name in todo:
                progress(f"training {name} on the source subjects and exporting it to {paths[name].bundle}")
                src = train(source, paths[name].checkpoint, TrainConfig(model=name), show_progress=False)
                export_bundle(src, paths[name].bundle, force=True)
    return paths
