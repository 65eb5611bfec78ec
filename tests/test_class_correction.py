"""`steady`'s class correction: the class moments the export stores, and what they do to a run of
one activity."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies.steady import Steady
from edge_ttt.artifacts import load_bundle
from edge_ttt.manifest import Manifest
from edge_ttt.recordlog import write_log
from edge_ttt.stream.window import windows_from_log
from tests.conftest import exported_bundle, synthetic_log, without_class_moments
from tests.model_factory import reference_data


def test_the_class_moments_are_what_the_graph_sees_on_each_class(bundle_dir: Path):
    """The export computes them in torch; the device's graph, normalizing with the source
    statistics, must see the same moments on the same windows of each class."""
    pytest.importorskip("torch")
    from export.norm_moments import class_norm_moments
    from tests.model_factory import CLASSES, source_model

    _, x = reference_data()
    labels = np.arange(len(x)) % CLASSES
    norms = class_norm_moments(source_model("cnn-bn").model, x, labels, CLASSES, batch_size=5)
    model = OrtModel(load_bundle(bundle_dir))
    stats = model.source_stats()
    for k in range(CLASSES):
        moments = model.forward(x[labels == k], stats).moments  # one batch: the class's population
        for name, (mean, var) in moments.items():
            np.testing.assert_allclose(norms[name]["mean"][k], mean, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(norms[name]["var"][k], var, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory) -> Path:
    """A cnn-bn trained on the synthetic log, whose classes (sines of 1, 2, 3 Hz) it tells apart."""
    pytest.importorskip("torch")
    from export.bundle import export_bundle
    from export.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("trained")
    write_log(tmp / "log.parquet", synthetic_log())
    cfg = TrainConfig(model="cnn-bn", window=64, hop=32, epochs=4, batch_size=32)
    src = train(tmp / "log.parquet", tmp / "model.pt", cfg, show_progress=False)
    export_bundle(src, tmp / "bundle")
    return tmp / "bundle"


def _one_class_run() -> np.ndarray:
    """The windows of one class of the synthetic log: its own data, no drift."""
    batch, _ = windows_from_log(synthetic_log(seed=5), 64, 32)
    return batch.x[batch.label == 2]


def _adapted(model: OrtModel, correction: float, windows: int, offset: float = 0.0) -> Steady:
    """`steady` after `windows` windows of the one-class run (cycled), each moved by `offset`."""
    run = _one_class_run()
    steady = Steady(model, Counters(), Steady.Options(class_correction=correction))
    for i in range(windows):
        steady.update(run[i % len(run)][None] + offset)
    return steady


def _drift_after_one_class(bundle: Path, correction: float) -> float:
    """Mean over the batch norms' channels of |mean - source mean| / source std after 1000 windows
    of one class."""
    steady = _adapted(OrtModel(load_bundle(bundle)), correction, 1000)
    means = steady.moments.means()
    return float(
        np.mean(
            np.concatenate([np.abs(means[k] - m) / np.sqrt(v) for k, (m, v) in steady.source_stats.items()])
        )
    )


def test_a_run_of_one_class_moves_the_statistics_far_less_with_the_correction(trained_bundle: Path):
    plain = _drift_after_one_class(trained_bundle, 0.0)
    corrected = _drift_after_one_class(trained_bundle, 1.0)
    assert plain > 0.1, plain  # the run does drag the plain statistics
    assert corrected < 0.5 * plain, (corrected, plain)


def test_a_shift_of_the_input_still_moves_the_corrected_statistics(trained_bundle: Path):
    """The correction takes the class's offset off, not the drift: an offset on every window of a
    run still shows in the statistics, as it does without the correction."""
    model = OrtModel(load_bundle(trained_bundle))
    first = model.manifest.batch_norms[0].name
    moved = {
        (correction, offset): _adapted(model, correction, 300, offset).moments.means()[first]
        for correction in (0.0, 1.0)
        for offset in (0.0, 1.0)
    }
    std = np.sqrt(model.source_stats()[first][1].astype(np.float64))
    plain = np.abs(moved[0.0, 1.0] - moved[0.0, 0.0]) / std
    corrected = np.abs(moved[1.0, 1.0] - moved[1.0, 0.0]) / std
    assert plain.mean() > 0.2, plain.mean()
    assert corrected.mean() > 0.5 * plain.mean(), (corrected.mean(), plain.mean())


def test_without_class_moments_steady_says_so_and_runs_uncorrected(bundle_dir: Path, tmp_path: Path, caplog):
    model = OrtModel(load_bundle(without_class_moments(bundle_dir, tmp_path / "old")))
    with caplog.at_level(logging.WARNING):
        steady = Steady(model, Counters())
    assert steady.correction is None
    assert "re-run `edge-ttt export`" in caplog.text
    steady.update(reference_data()[1][:1])  # and adapts as before


def test_a_model_without_batch_norms_has_nothing_to_correct(tmp_path_factory, caplog):
    bundle = load_bundle(exported_bundle(tmp_path_factory, "cnn-gn", "gn"))
    assert bundle.manifest.reference.class_norms == {}
    with caplog.at_level(logging.WARNING):
        steady = Steady(OrtModel(bundle), Counters())
    assert steady.correction is None
    assert "class moments" not in caplog.text


def test_class_moments_of_the_wrong_shape_are_refused(bundle_dir: Path):
    doc = json.loads((bundle_dir / "manifest.json").read_text())
    name = next(iter(doc["reference"]["class_norms"]))
    doc["reference"]["class_norms"][name]["mean"] = doc["reference"]["class_norms"][name]["mean"][:-1]
    with pytest.raises(ValueError, match=rf"reference.class_norms.{name} needs \[classes\]\[channels\]"):
        Manifest.model_validate(doc)
    doc = json.loads((bundle_dir / "manifest.json").read_text())
    doc["reference"]["class_norms"]["no.such.layer"] = doc["reference"]["class_norms"][name]
    with pytest.raises(ValueError, match="one entry per batch norm layer"):
        Manifest.model_validate(doc)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_correction_outside_0_to_1_is_refused(value: float):
    with pytest.raises(ValueError, match=r"class_correction must be between 0\.0 and 1\.0, got"):
        Steady.Options(class_correction=value)
