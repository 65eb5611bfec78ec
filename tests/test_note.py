"""NOTE (`edge_ttt.adapt.policies.note`): instance-aware batch norm, the prediction-balanced
memory, the memory steps, its state, and batch sizes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.iabn import instance_aware, pooled
from edge_ttt.adapt.layer_lengths import batch_norm_lengths
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.pbrs import PredictionBalancedReservoir
from edge_ttt.adapt.policies.note import Note
from edge_ttt.artifacts import load_bundle
from tests.model_factory import LENGTH, off_source
from tests.test_engine import states_equal


def note(path: Path, **options) -> Note:
    return Note(OrtModel(load_bundle(path)), Counters(), Note.Options(**options))


def test_iabn_keeps_the_base_within_alpha_standard_errors_and_shrinks_beyond():
    """Base N(0, 1), 16 samples, alpha 4: the mean's band is 4 * sqrt(1 / 16) = 1, the
    variance's 4 * sqrt(2 / 15)."""
    base = (np.zeros(4), np.ones(4))
    own = (np.array([0.5, -0.99, 1.5, -3.0]), np.array([2.0, 0.0, 4.0, 1.0]))
    mean, var = instance_aware(base, own, length=16, alpha=4.0, eps=0.0)
    band = 4 * np.sqrt(2 / 15)
    np.testing.assert_allclose(mean, [0.0, 0.0, 0.5, -2.0], atol=1e-12)
    np.testing.assert_allclose(var, [1.0, 1.0, 1.0 + (3.0 - band), 1.0], atol=1e-12)
    same = instance_aware(base, own, length=1, alpha=4.0, eps=0.0)  # no instance statistics
    assert np.array_equal(same[0], base[0]) and np.array_equal(same[1], base[1])


def test_pooled_moments_are_those_of_all_samples_together():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(3, 2, 10))  # windows, channels, time
    own = [(s.mean(axis=1), s.var(axis=1)) for s in samples]
    mean, var = pooled(own, 10)
    everything = samples.transpose(1, 0, 2).reshape(2, -1)
    np.testing.assert_allclose(mean, everything.mean(axis=1))
    np.testing.assert_allclose(var, everything.var(axis=1, ddof=1))


def test_within_the_band_everywhere_the_prediction_is_the_running_statistics(bundle_dir: Path):
    policy = note(bundle_dir, alpha=1e9)
    x = off_source(3, seed=1)
    for i in range(3):
        source = policy.model.forward(x[i : i + 1], policy.source_stats).logits
        np.testing.assert_array_equal(policy.predict(x[i : i + 1]).logits, source)
    moved = note(bundle_dir).predict(x).logits  # alpha 4: these windows are beyond the band
    assert not np.allclose(moved, policy.model.forward(x, policy.source_stats).logits, atol=1e-3)


def test_the_layer_lengths_come_from_the_manifest_or_else_from_the_graph(bundle_dir: Path, tmp_path: Path):
    expected = [LENGTH, LENGTH // 2, LENGTH // 4]
    manifest = load_bundle(bundle_dir).manifest
    assert [layer.length for layer in manifest.batch_norms] == expected  # export wrote them
    assert list(note(bundle_dir).lengths.values()) == expected
    older = tmp_path / "older"  # a bundle exported before the lengths: read from the eval graph
    shutil.copytree(bundle_dir, older)
    doc = json.loads((older / "manifest.json").read_text())
    for layer in doc["norm_layers"]:
        layer.pop("length", None)
    (older / "manifest.json").write_text(json.dumps(doc))
    assert all(layer.length is None for layer in load_bundle(older).manifest.batch_norms)
    assert list(note(older).lengths.values()) == expected
    assert batch_norm_lengths(older, [(n.name, n.channels) for n in manifest.batch_norms]) == dict(
        zip(note(bundle_dir).lengths, expected, strict=True)
    )
    with pytest.raises(ValueError, match="2 lengths for 3 batch norms"):
        note(bundle_dir, lengths=(64, 32))


def test_pbrs_stays_balanced_on_a_class_sorted_stream():
    memory = PredictionBalancedReservoir(capacity=12, classes=3, window_shape=(1, 2))
    for label in (0, 1):
        for i in range(100):
            memory.add(np.full((1, 2), i), label)
    assert memory.occupancy().tolist() == [6, 6, 0]
    for i in range(100):
        memory.add(np.full((1, 2), i), 2)
    assert memory.occupancy().tolist() == [4, 4, 4]
    kept, labels = memory.contents()
    late = kept[labels == 0][:, 0, 0]
    assert late.max() > 20  # within a class a reservoir over time, not the first windows only


def test_pbrs_replays_identically_from_its_state():
    a = PredictionBalancedReservoir(capacity=5, classes=2, window_shape=(1,))
    for i in range(30):
        a.add(np.array([i]), i % 2)
    b = PredictionBalancedReservoir(capacity=5, classes=2, window_shape=(1,))
    b.load_state(a.state())
    for i in range(30, 60):
        assert a.add(np.array([i]), i % 3 // 2) == b.add(np.array([i]), i % 3 // 2)
    assert states_equal(a.state(), b.state())


def test_the_step_fires_every_update_every_windows_and_moves_only_the_norm_affines(bundle_dir: Path):
    policy = note(bundle_dir, memory=4, update_every=5, lr=1e-2)
    model = policy.model
    before = model.parameters(trainable_only=False)
    for seed in range(4):
        policy.update(off_source(1, seed))
    assert policy.steps == 0 and len(policy.memory) == 4
    assert all(np.array_equal(before[k], v) for k, v in model.parameters(trainable_only=False).items())
    assert states_equal(dict(policy.stats()), dict(policy.source_stats))
    policy.update(off_source(1, 4))
    assert policy.steps == 1
    after = model.parameters(trainable_only=False)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and changed <= set(model.trainable)
    assert not np.array_equal(policy.stats()["block1.norm"][0], policy.source_stats["block1.norm"][0])
    policy.update(off_source(4, 5))
    assert policy.steps == 1
    policy.update(off_source(5, 9))  # crosses the 10th window
    assert policy.steps == 2


def test_with_a_band_that_holds_everything_the_memory_step_is_batch_norm_over_the_memory(bundle_dir: Path):
    """alpha huge: each memory window normalizes with the memory batch's own statistics (mean,
    unbiased var; IABN in training mode), which the running statistics move towards by
    bn_momentum. The reference runs the memory as one batch, layer by layer."""
    policy = note(bundle_dir, alpha=1e9, memory=6, update_every=6, bn_momentum=0.5)
    x = off_source(6, seed=3)
    source = policy.source_stats
    stats = dict(source)
    for name, n in policy.lengths.items():  # graph order, with the affines before the step
        mean, var = policy.model.forward(x, stats).moments[name]
        stats[name] = (mean, var * (6 * n / (6 * n - 1)))
    policy.update(x)
    for name in policy.lengths:
        for got, start, batch in zip(policy.running[name], source[name], stats[name], strict=True):
            np.testing.assert_allclose(got, 0.5 * start + 0.5 * batch, rtol=1e-4, atol=1e-6)


def test_the_state_restores_bit_for_bit_memory_included(bundle_dir: Path):
    a, b = note(bundle_dir, memory=4, update_every=3), note(bundle_dir, memory=4, update_every=3)
    for seed in range(7):
        a.update(off_source(1, seed))
    saved = a.state()
    assert a.steps == 2 and saved["memory/windows"].any()
    b.load_state(saved)
    assert states_equal(b.state(), saved)
    for seed in range(7, 12):  # steps ahead: the memory, optimizer and statistics all matter
        x = off_source(1, seed)
        np.testing.assert_array_equal(a.update(x).logits, b.update(x).logits)
    assert states_equal(a.state(), b.state())
    a.reset()
    assert states_equal(a.state(), note(bundle_dir, memory=4, update_every=3).state())


def test_a_batch_is_the_same_as_its_windows_one_by_one(bundle_dir: Path):
    whole, single = note(bundle_dir, memory=4, update_every=5), note(bundle_dir, memory=4, update_every=5)
    x = off_source(12, seed=20)  # steps after the 5th and 10th windows, inside the batch
    batched = whole.update(x).logits
    one_by_one = np.concatenate([single.update(x[i : i + 1]).logits for i in range(12)])
    np.testing.assert_array_equal(batched, one_by_one)
    assert whole.steps == 2 and states_equal(whole.state(), single.state())


def test_without_batch_norms_note_is_the_memory_and_its_entropy_steps(gn_bundle_dir: Path):
    policy = note(gn_bundle_dir, memory=4, update_every=4, lr=1e-2)
    assert policy.lengths == {} and dict(policy.stats()) == {}
    x = off_source(4, seed=7)
    plain = policy.model.forward(x, {}).logits
    np.testing.assert_array_equal(policy.update(x).logits, plain)  # predicted before the step
    assert policy.steps == 1 and policy.param_change()[0] > 0
    assert not np.allclose(policy.predict(x).logits, plain)
