"""RoTTA (`edge_ttt.adapt.policies.rotta`): the category-balanced memory, the teacher-student step
on soft targets with robust batch norm, its state, batch sizes, and bundles exported before the
soft-target input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.augment import Strength, strong_augment
from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.cstu import CategoryBalancedMemory, timeliness
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import PolicyMismatchError, create
from edge_ttt.adapt.policies.rotta import Rotta
from edge_ttt.adapt.softmax import softmax_entropy
from edge_ttt.artifacts import load_bundle
from edge_ttt.replay import every_policy
from tests.conftest import exported_bundle
from tests.model_factory import off_source, windows
from tests.test_engine import states_equal


@pytest.fixture(scope="module")
def older_bundle_dir(tmp_path_factory) -> Path:
    """A bundle exported as before the soft-target input: the entropy graph alone."""
    pytest.importorskip("torch")
    import export.bundle
    import export.loss

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export.loss.WeightedEntropy, "total", export.loss._WeightedPerSample.total)
        patch.setattr(export.bundle, "SOFT_TARGET_INPUT", None)
        return exported_bundle(tmp_path_factory, "cnn-bn", "rotta-older")


def rotta(path: Path, **options) -> Rotta:
    return Rotta(OrtModel(load_bundle(path)), Counters(), Rotta.Options(**options))


def test_a_long_run_of_one_class_fills_only_its_share_of_the_memory():
    memory = CategoryBalancedMemory(capacity=12, classes=3, window_shape=(1,))
    for i in range(100):
        memory.add(np.array([float(i)]), 0, 0.1)
    assert memory.occupancy().tolist() == [4, 0, 0]
    kept, _, ages = memory.contents()
    assert sorted(kept.ravel().tolist()) == [96.0, 97.0, 98.0, 99.0]  # the most recent: timeliness
    assert sorted(ages.tolist()) == [1, 2, 3, 4]
    for i in range(20):
        memory.add(np.array([float(i)]), 1 + i % 2, 0.1)
    assert memory.occupancy().tolist() == [4, 4, 4]


def test_a_full_memory_makes_room_in_a_largest_class_and_keeps_the_sure_windows():
    memory = CategoryBalancedMemory(capacity=7, classes=3, window_shape=(1,))  # shares of 2.33
    offered = [(0, 0.0), (0, 1.0), (0, 0.0), (1, 0.0), (1, 0.0), (1, 0.0), (2, 0.0)]
    for i, (label, entropy) in enumerate(offered):
        assert memory.add(np.array([float(i)]), label, entropy)  # free slots, each class under its share
    assert memory.occupancy().tolist() == [3, 3, 1]
    assert memory.add(np.array([9.0]), 2, 0.0)  # a small class in a full memory: room in a largest
    kept, _, _ = memory.contents()
    assert memory.occupancy().tolist() == [2, 3, 2] and 1.0 not in kept.ravel()  # the unsure one went
    assert not memory.add(np.array([10.0]), 1, np.log(3))  # its class at its share; a maximally unsure one
    assert memory.occupancy().tolist() == [2, 3, 2] and 10.0 not in memory.contents()[0].ravel()


def test_the_memory_restores_bit_for_bit():
    a = CategoryBalancedMemory(capacity=5, classes=2, window_shape=(1,))
    for i in range(30):
        a.add(np.array([float(i)]), i % 2, (i % 5) / 10)
    b = CategoryBalancedMemory(capacity=5, classes=2, window_shape=(1,))
    b.load_state(a.state())
    for i in range(30, 60):
        assert a.add(np.array([float(i)]), i % 3 // 2, (i % 7) / 10) == b.add(
            np.array([float(i)]), i % 3 // 2, (i % 7) / 10
        )
    assert states_equal(a.state(), b.state())


def test_timeliness_halves_at_age_zero_and_falls_with_age():
    w = timeliness(np.arange(0, 640, 64), 64)
    assert w[0] == 0.5 and np.all(np.diff(w) < 0) and w[-1] < 1e-3


def test_the_strong_augmentation_is_seeded_and_keeps_a_turned_triad_s_length():
    x = windows(3, seed=1)
    spread = np.ones(x.shape[1])
    a = strong_augment(x, spread, [(0, 1, 2)], np.random.default_rng(7))
    b = strong_augment(x, spread, [(0, 1, 2)], np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and not np.allclose(a, x)
    turned = strong_augment(x, spread, [(0, 1, 2)], np.random.default_rng(7), Strength(0, 0, 0, 40.0))
    length = np.linalg.norm(x[:, :3], axis=1)
    np.testing.assert_allclose(np.linalg.norm(turned[:, :3], axis=1), length, rtol=1e-5)
    assert not np.allclose(turned[:, :3], x[:, :3])
    np.testing.assert_array_equal(turned[:, 3:], x[:, 3:])  # channels outside a triad are not turned


def test_the_step_is_robust_batch_norm_soft_targets_and_a_slow_teacher(bundle_dir: Path):
    """One step by hand: the teacher's statistics move alpha of the way to the memory batch's
    moments under the mix, the student takes Adam's step on the timeliness-weighted soft
    cross-entropy of its augmented view, and the teacher moves nu of the way to the student."""
    options = {"memory": 20, "update_every": 4, "lr": 1e-2, "nu": 0.25, "alpha": 0.5}
    policy, reference = rotta(bundle_dir, **options), rotta(bundle_dir, **options)
    model = policy.model
    x = off_source(4, seed=3)
    before = model.parameters(trainable_only=False)
    out = policy.update(x[:3])
    assert policy.steps == 0 and len(policy.memory) == 3
    np.testing.assert_array_equal(out.logits, model.forward(x[:3], policy.source_stats).logits)
    policy.update(x[3:])
    assert policy.steps == 1 and policy.counters.adapt_steps == 2

    for window in x:  # the same memory, built by hand
        logits = model.forward(window[None], reference.source_stats).logits
        _, entropy = softmax_entropy(logits.astype(np.float64))
        reference.memory.add(window, int(logits.argmax()), float(entropy[0]))
    xs, _, ages = reference.memory.contents()
    model.write_parameters(reference.source_vector)
    teacher = model.forward(xs, reference.source_stats, 0.5)
    for name, (mean, var) in policy.teacher_stats.items():
        source_mean, source_var = reference.source_stats[name]
        batch_mean, batch_var = teacher.moments[name]
        np.testing.assert_allclose(mean, 0.5 * source_mean + 0.5 * batch_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, 0.5 * source_var + 0.5 * batch_var, rtol=1e-5, atol=1e-6)
    p, _ = softmax_entropy(teacher.logits.astype(np.float64))
    target = p * (timeliness(ages, 20) / 4)[:, None]
    strong = strong_augment(xs, reference.spread, reference.triads, np.random.default_rng((0, 0)))
    model.discard_gradients()
    model.forward_backward(strong, np.zeros(4, np.float32), reference.source_stats, 0.5, soft_target=target)
    grads = model.gradient_vector()
    model.discard_gradients()
    student = reference.opt.step(reference.source_vector, grads)
    np.testing.assert_allclose(policy.student, student, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        policy.param_vector, 0.75 * reference.source_vector + 0.25 * student, rtol=1e-5, atol=1e-7
    )
    model.write_parameters(policy.param_vector)
    after = model.parameters(trainable_only=False)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and changed <= set(model.trainable)  # only the norm affines move


def test_the_state_restores_bit_for_bit_memory_student_and_statistics_included(bundle_dir: Path):
    a, b = rotta(bundle_dir, memory=4, update_every=3), rotta(bundle_dir, memory=4, update_every=3)
    for seed in range(7):
        a.update(off_source(1, seed))
    saved = a.state()
    assert a.steps == 2 and saved["memory/windows"].any()
    assert not states_equal(dict(a.stats()), dict(a.source_stats))
    b.load_state(saved)
    assert states_equal(b.state(), saved)
    for seed in range(7, 14):  # steps ahead: memory, student, optimizer and statistics all matter
        x = off_source(1, seed)
        np.testing.assert_array_equal(a.update(x).logits, b.update(x).logits)
    assert states_equal(a.state(), b.state())
    a.reset()
    assert states_equal(a.state(), rotta(bundle_dir, memory=4, update_every=3).state())


def test_a_batch_is_the_same_as_its_windows_one_by_one(bundle_dir: Path):
    """The same steps at the same windows; equal up to float rounding (ORT's kernels sum a batch
    of 5 in another order than 5 batches of one)."""
    whole, single = rotta(bundle_dir, memory=4, update_every=5), rotta(bundle_dir, memory=4, update_every=5)
    x = off_source(12, seed=20)  # steps after the 5th and 10th windows, inside the batch
    batched = whole.update(x).logits
    one_by_one = np.concatenate([single.update(x[i : i + 1]).logits for i in range(12)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
    assert whole.steps == single.steps == 2
    np.testing.assert_array_equal(whole.memory.labels, single.memory.labels)
    np.testing.assert_allclose(whole.student, single.student, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole.param_vector, single.param_vector, rtol=1e-5, atol=1e-6)


def test_on_a_shifted_stream_the_teacher_s_statistics_follow_it(bundle_dir: Path):
    policy = rotta(bundle_dir)
    first = policy.source_stats["block1.norm"][0]
    for seed in range(256):
        policy.update(off_source(1, seed))
    assert policy.steps == 4
    stream_mean = policy.model.forward(off_source(64, 999), policy.source_stats, 1.0).moments["block1.norm"][
        0
    ]
    moved = np.abs(policy.stats()["block1.norm"][0] - stream_mean).mean()
    assert moved < 0.9 * np.abs(first - stream_mean).mean()


def test_without_batch_norms_rotta_is_the_memory_and_its_teacher_student_steps(gn_bundle_dir: Path):
    policy = rotta(gn_bundle_dir, memory=4, update_every=4, lr=1e-2, nu=0.5)
    assert dict(policy.stats()) == {}
    x = off_source(4, seed=7)
    plain = policy.model.forward(x, {}).logits
    np.testing.assert_array_equal(policy.update(x).logits, plain)  # predicted before the step
    assert policy.steps == 1 and policy.param_change()[0] > 0
    assert not np.allclose(policy.predict(x).logits, plain)


def test_a_bundle_exported_before_the_soft_targets_is_refused_with_the_fix(older_bundle_dir: Path):
    manifest = load_bundle(older_bundle_dir).manifest
    assert manifest.graph.soft_target is None
    model = OrtModel(load_bundle(older_bundle_dir))  # every other policy still runs it
    assert create("steady", model, Counters(), {}).update(off_source(2, 1)).logits.shape == (2, 5)
    with pytest.raises(PolicyMismatchError, match=r"policy 'rotta' cannot run on bundle .*export it again"):
        create("rotta", model, Counters(), {})
    chosen, left_out = every_policy(manifest, episodic=False)
    assert "rotta" not in chosen and "steady" in chosen
    assert "trains on soft targets" in left_out["rotta"] and "edge-ttt export" in left_out["rotta"]
    with pytest.raises(ValueError, match="no soft-target input; export it again"):
        x, weight = off_source(1, 2), np.ones(1, np.float32)
        model.forward_backward(x, weight, model.source_stats(), soft_target=np.ones((1, 5)))
