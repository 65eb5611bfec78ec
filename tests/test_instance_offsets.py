"""`steady`'s opt-in instance offsets: the first batch norm follows what of a window's own mean
neither its predicted classes nor sampling explain (`Steady.Options.instance_offsets`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.iabn import class_free_mean
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies.steady import Steady
from edge_ttt.artifacts import load_bundle
from tests.conftest import exported_bundle, without_class_moments
from tests.model_factory import reference_data

BASE = (np.array([0.0, 1.0]), np.array([4.0, 1.0]))  # mean, var: standard errors 2/sqrt(n), 1/sqrt(n)


def test_a_mean_within_the_standard_errors_leaves_the_base_as_it_is():
    own = np.array([1.9, 1.0 + 0.9])  # 0.95 and 0.9 standard errors off, n = 1, alpha 1
    assert class_free_mean(BASE, own, np.zeros(2), 1, 1.0, 0.0).tolist() == [0.0, 1.0]


def test_what_the_classes_explain_is_not_followed():
    own = np.array([10.0, -5.0])
    explained = own - BASE[0]
    assert class_free_mean(BASE, own, explained, 1, 1.0, 0.0).tolist() == BASE[0].tolist()


def test_the_unexplained_part_beyond_alpha_standard_errors_is_followed():
    own = np.array([10.0, -5.0])
    classes = np.array([1.0, 0.0])
    got = class_free_mean(BASE, own, classes, 4, 3.0, 0.0)  # thresholds 3 * 2 / 2 = 3 and 3 * 1 / 2
    np.testing.assert_allclose(got, [0.0 + (10.0 - 1.0 - 3.0), 1.0 + (-5.0 - 1.0 + 1.5)])


def test_more_samples_follow_more_of_the_same_offset():
    own = np.array([6.0, 1.0])
    few, many = (class_free_mean(BASE, own, np.zeros(2), n, 2.0, 0.0)[0] for n in (4, 64))
    assert 0.0 < few < many < 6.0


class CountingModel:
    """An `OrtModel` whose forward passes are recorded with the statistics they ran with."""

    def __init__(self, model: OrtModel) -> None:
        self.model = model
        self.calls: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forward(self, x, stats, mix=0.0):
        self.calls.append({k: (np.array(m), np.array(v)) for k, (m, v) in stats.items()})
        return self.model.forward(x, stats, mix)


def _offset_windows(n: int, offset: float) -> np.ndarray:
    return reference_data()[1][:n] + offset


def test_off_by_default_one_pass_a_window(bundle_dir: Path):
    model = CountingModel(OrtModel(load_bundle(bundle_dir)))
    steady = Steady(model, Counters(), Steady.Options(gate_shift=1e9, gate_spread=1e9))  # forwards only
    assert steady.first_norm is None
    for x in _offset_windows(5, 3.0):
        steady.update(x[None])
    assert len(model.calls) == 5


@pytest.mark.parametrize("batch", [1, 4])
def test_on_the_first_norm_runs_with_the_class_free_mean_of_a_first_pass(bundle_dir: Path, batch: int):
    """Two passes for windows moved far from source: the first with the statistics, the second
    with the first batch norm's mean moved as `class_free_mean` says, from the first's outputs
    (a batch: its mean and mean predicted distribution, over all its samples)."""
    plain = OrtModel(load_bundle(bundle_dir))
    model = CountingModel(plain)
    options = Steady.Options(gate_shift=1e9, gate_spread=1e9, instance_offsets=4.0)
    steady = Steady(model, Counters(), options)
    first = steady.first_norm
    assert first is not None and first.name == plain.manifest.batch_norms[0].name
    x = _offset_windows(batch, 5.0)
    stats = steady.stats()
    before = plain.forward(x, stats)
    served = steady.update(x)
    assert len(model.calls) == 2
    base = stats[first.name]
    expected = class_free_mean(
        base,
        before.moments[first.name][0],
        before.softmax[0].mean(axis=0) @ first.class_offset,
        first.length * batch,
        4.0,
        first.eps,
    )
    assert not np.allclose(expected, base[0])  # the offset is far beyond the standard errors
    second = model.calls[1]
    np.testing.assert_array_equal(second[first.name][0], expected)
    np.testing.assert_array_equal(second[first.name][1], base[1])
    for name, (mean, var) in stats.items():  # every other layer as the statistics say
        if name != first.name:
            np.testing.assert_array_equal(second[name][0], mean)
            np.testing.assert_array_equal(second[name][1], var)
    np.testing.assert_array_equal(served.logits, plain.forward(x, second).logits)
    assert not np.array_equal(served.logits, before.logits)


def test_a_window_the_classes_and_sampling_explain_takes_one_pass(bundle_dir: Path):
    model = CountingModel(OrtModel(load_bundle(bundle_dir)))
    closed = Steady.Options(gate_shift=1e9, gate_spread=1e9)
    steady = Steady(model, Counters(), dataclasses.replace(closed, instance_offsets=1e6))
    plain = Steady(OrtModel(load_bundle(bundle_dir)), Counters(), closed)
    for x in _offset_windows(4, 0.0):
        a, b = steady.update(x[None]), plain.update(x[None])
        np.testing.assert_array_equal(a.logits, b.logits)
    assert len(model.calls) == 4
    assert set(steady.state()) == set(plain.state())  # nothing more to save: it keeps no state


def test_prediction_and_gradient_steps_use_it_too(bundle_dir: Path):
    model = CountingModel(OrtModel(load_bundle(bundle_dir)))
    options = Steady.Options(gate_shift=1e-9, gate_spread=1e-9, step_every=1, instance_offsets=4.0)
    steady = Steady(model, Counters(), options)
    x = _offset_windows(1, 5.0)
    steady.predict(x)
    assert len(model.calls) == 2
    steady.update(x)  # the gate is open: this window steps
    assert len(model.calls) == 3  # the first pass; the step's training pass is not a forward
    assert not np.array_equal(steady.param_vector, steady.source_vector)


def test_without_class_moments_it_is_off_and_says_so(bundle_dir: Path, tmp_path: Path, caplog):
    old = load_bundle(without_class_moments(bundle_dir, tmp_path / "old"))
    with caplog.at_level(logging.WARNING):
        steady = Steady(OrtModel(old), Counters(), Steady.Options(instance_offsets=4.0))
    assert steady.first_norm is None
    assert "instance_offsets" in caplog.text and "re-run `edge-ttt export`" in caplog.text


def test_a_model_without_batch_norms_has_no_first_norm(tmp_path_factory):
    bundle = load_bundle(exported_bundle(tmp_path_factory, "cnn-gn", "gn"))
    steady = Steady(OrtModel(bundle), Counters(), Steady.Options(instance_offsets=4.0))
    assert steady.first_norm is None
    steady.update(reference_data()[1][:1])


def test_a_negative_alpha_is_refused():
    with pytest.raises(ValueError, match="instance_offsets"):
        Steady.Options(instance_offsets=-1.0)
