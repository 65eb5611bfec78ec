"""Test-time training: the transformations, joint training, the exported auxiliary step, episodic mode."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_ttt.adapt.engine import Engine  # noqa: E402
from edge_ttt.adapt.ort_model import OrtModel  # noqa: E402
from edge_ttt.adapt.policies import PolicyMismatchError  # noqa: E402
from edge_ttt.adapt.softmax import softmax_entropy  # noqa: E402
from edge_ttt.adapt.transforms import TRANSFORMS, check_channels, transform_each, transformed_copies  # noqa: E402
from edge_ttt.artifacts import load_bundle  # noqa: E402
from edge_ttt.recordlog import write_log  # noqa: E402
from export.norms import norm_layers  # noqa: E402
from export.train import REFERENCE_KEYS, TrainConfig, train  # noqa: E402
from tests.conftest import CHANNELS, synthetic_log  # noqa: E402
from tests.model_factory import source_model, windows  # noqa: E402
from tests.test_engine import states_equal  # noqa: E402

K = len(TRANSFORMS)


def test_transformations_are_exact_permutations_and_sign_flips_with_known_labels():
    x = windows(3, seed=1)
    copies, labels = transformed_copies(x, CHANNELS)
    assert copies.shape == (3 * K, *x.shape[1:]) and labels.tolist() == list(range(K)) * 3
    groups = check_channels(CHANNELS)
    for i in range(3):
        for k, name in enumerate(TRANSFORMS):
            out = copies[i * K + k]
            np.testing.assert_array_equal(out, TRANSFORMS[name](x[i : i + 1], groups)[0])
            # Exact: every value of the copy is a value of the window, possibly negated.
            assert set(np.abs(out).ravel().tolist()) == set(np.abs(x[i]).ravel().tolist())
    # Each one undone exactly by applying it again (half turns, reversal) or three times (cycle).
    for name, order in {
        "identity": 1,
        "time_reversal": 2,
        "rotate_z_180": 2,
        "rotate_x_180": 2,
        "cycle_axes": 3,
    }.items():
        y = x
        for _ in range(order):
            y = TRANSFORMS[name](y, groups)
        np.testing.assert_array_equal(y, x)
        if name != "identity":
            assert not np.array_equal(TRANSFORMS[name](x, groups), x), name
    labels = np.array([4, 0, 2])
    np.testing.assert_array_equal(transform_each(x, labels, CHANNELS), copies[[4, K, 2 * K + 2]])


def test_transformations_need_channel_triads():
    with pytest.raises(ValueError, match="x/y/z channel triads"):
        transformed_copies(windows(1), ("a", "b", "c", "d", "e", "f"))


def imu_like_log():
    """The synthetic log with what makes the transformations visible in real IMU data: gravity on
    the accelerometer (an orientation) and a movement that is not symmetric in time (a sawtooth)."""
    log = synthetic_log(devices=4, seconds=40.0)
    t = np.arange(len(log.values)) / log.sample_rate_hz
    saw = ((1.3 * t) % 1.0)[:, None] * np.array([1.0, 0.5, 0.0, 0.8, 0.0, -0.6])
    gravity = np.array([0.3, 0.8, -1.2, 0.0, 0.0, 0.0])
    return replace(log, values=(log.values + gravity + saw).astype(np.float32))


def test_joint_training_learns_the_auxiliary_task_far_above_chance(tmp_path: Path):
    path = tmp_path / "imu.parquet"
    write_log(path, imu_like_log())
    cfg = TrainConfig(model="cnn-bn-ttt", window=64, hop=32, epochs=4, batch_size=32)
    src = train(path, tmp_path / "model.pt", cfg, show_progress=False)
    # On held-out windows of a device it did not train on, every transformed copy of each window.
    assert src.report["aux_val_accuracy"] > 3.0 / K, src.report
    assert src.report["val_accuracy"] > 0.5, src.report  # the classifier trained too
    assert set(src.reference) == set(REFERENCE_KEYS)  # what the demo checks a cached model for
    limits = src.reference["drift_limits"]  # each of the 4 devices held out against the others
    assert limits["devices"] == 4 and limits["windows"][0] == 1
    assert all(len(row) == len(src.channels) and min(row) > 0 for row in limits["psi"])


def test_aux_bundle_declares_its_task_and_plain_bundles_do_not(aux_bundle_dir: Path, bundle_dir: Path):
    aux = load_bundle(aux_bundle_dir).manifest.auxiliary
    assert aux is not None and aux.transformations == list(TRANSFORMS)
    assert load_bundle(bundle_dir).manifest.auxiliary is None
    # No key at all in a plain bundle: readers from before the key (extras forbidden) still load it.
    assert "auxiliary" not in json.loads((bundle_dir / "manifest.json").read_text())


def test_one_auxiliary_step_equals_torch(aux_bundle_dir: Path):
    """The ttt policy's step (statistics from source, SGD) equals torch's on the same copies:
    the loss, the gradients of the norm affines, the updated parameters and the prediction."""
    src = source_model("cnn-bn-ttt")
    lr = 0.05
    x = windows(2, seed=13)
    copies, labels = transformed_copies(x, CHANNELS)

    reference = copy.deepcopy(src.model).eval()  # batch norms with the source statistics
    params = {
        f"{n}.{p}": getattr(m, p) for n, m in norm_layers(reference).items() for p in ("weight", "bias")
    }
    reference.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(
        reference.aux_logits(torch.from_numpy(copies)), torch.from_numpy(labels)
    )
    loss.backward()
    torch_grads = {n: p.grad.numpy().copy() for n, p in params.items()}

    model = OrtModel(load_bundle(aux_bundle_dir))
    target = np.eye(K, dtype=np.float32)[labels]
    out = model.forward_backward(
        copies, np.full(len(copies), 1 / len(copies), np.float32), model.source_stats(), 0.0, target
    )
    assert out.loss == pytest.approx(float(loss.detach()), rel=1e-4)
    ort_grads = model.gradients()
    model.discard_gradients()
    for name, grad in torch_grads.items():
        np.testing.assert_allclose(ort_grads[name], grad, rtol=1e-3, atol=1e-6)

    e = Engine(OrtModel(load_bundle(aux_bundle_dir)), "ttt", {"lr": lr, "stats": "source"})
    probs = e.process(x).probs
    with torch.no_grad():
        for p in params.values():
            p.sub_(lr * p.grad)
        expected = torch.softmax(reference(torch.from_numpy(x)), dim=1).numpy()
    for name, p in params.items():
        np.testing.assert_allclose(e.policy.params[name], p.detach().numpy(), rtol=0, atol=1e-6)
    assert max(float(np.abs(lr * g).max()) for g in torch_grads.values()) > 1e-4  # a real step
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)  # predicted after the step


@pytest.mark.parametrize("policy", ["tent", "sar", "steady", "ttt"])
def test_episodic_mode_leaves_the_state_as_it_was_after_every_window(
    confident_bundle_dir: Path, aux_bundle_dir: Path, policy: str
):
    """Bit for bit after each window, and each prediction is what a fresh episodic engine makes
    of that window (for the entropy policies, also what a fresh online engine makes of it)."""
    # Settings under which every policy steps on these windows: the drift gate open, filters wide.
    options = {"gate_shift": 0.0, "reliable_quantile": 0.99} if policy == "steady" else {}
    path = aux_bundle_dir if policy == "ttt" else confident_bundle_dir
    episodic = Engine(OrtModel(load_bundle(path)), policy, {**options, "episodic": True})
    online = Engine(OrtModel(load_bundle(path)), policy, options or None)
    start = copy.deepcopy(episodic.policy.state())
    for seed in range(4):
        x = windows(2, seed=seed) * 1.5
        fresh = Engine(OrtModel(load_bundle(path)), policy, {**options, "episodic": True})
        probs = episodic.process(x).probs
        np.testing.assert_array_equal(probs, fresh.process(x).probs)
        if policy != "ttt":  # ttt mixes in the batch's statistics only when episodic
            first = Engine(OrtModel(load_bundle(path)), policy, options or None)
            np.testing.assert_array_equal(probs, first.process(x).probs)
        assert states_equal(episodic.policy.state(), start), f"{policy} kept something of window {seed}"
        assert all(
            np.array_equal(episodic.model.parameters()[k], v) for k, v in episodic.policy.params.items()
        )
        online.process(x)
    assert episodic.counters.adapt_steps > 0  # it did adapt before forgetting
    assert not states_equal(online.policy.state(), start)  # online keeps what it learned


@pytest.mark.parametrize("prior", [0.0, 4.0, 1e9])
def test_episodic_ttt_adapts_on_each_window_alone_with_its_moments_mixed_in(
    aux_bundle_dir: Path, prior: float
):
    """With a zero step, episodic ttt predicts each window as the eval graph does at the mix
    1 / (prior + 1) of that window alone, however the windows are batched."""
    x = windows(3, seed=7) * 1.5 + 0.3
    options = {"lr": 0.0, "episode_prior": prior, "episodic": True}
    engine = Engine(OrtModel(load_bundle(aux_bundle_dir)), "ttt", options)
    model = OrtModel(load_bundle(aux_bundle_dir))
    stats, mix = model.source_stats(), 1 / (prior + 1)
    alone = np.concatenate([model.forward(x[i : i + 1], stats, mix).logits for i in range(len(x))])
    expected = softmax_entropy(alone.astype(np.float64))[0].astype(np.float32)
    np.testing.assert_array_equal(engine.process(x).probs, expected)
    np.testing.assert_array_equal(engine.process(x[1:2]).probs, expected[1:2])
    source = softmax_entropy(model.forward(x, stats).logits.astype(np.float64))[0]
    moved = float(np.abs(expected - source).max())
    assert (moved < 1e-5) if prior > 1e6 else (moved > 1e-3)  # a huge prior is the source model


def test_policies_refuse_bundles_made_for_another_loss(bundle_dir: Path, aux_bundle_dir: Path):
    with pytest.raises(PolicyMismatchError, match=r"policy 'ttt' .*model \(cnn-bn\) .*cnn-bn-ttt"):
        Engine(OrtModel(load_bundle(bundle_dir)), "ttt")
    for policy in ("tent", "sar", "note", "steady"):
        with pytest.raises(
            PolicyMismatchError, match=rf"'{policy}' .*{aux_bundle_dir}.*source, norm, unmix-tns, ttt"
        ):
            Engine(OrtModel(load_bundle(aux_bundle_dir)), policy)
    with pytest.raises(ValueError, match="no gradient steps"):
        Engine(OrtModel(load_bundle(aux_bundle_dir)), "norm", {"episodic": True})
    with pytest.raises(ValueError, match="steps must be at least 1"):
        Engine(OrtModel(load_bundle(aux_bundle_dir)), "ttt", {"steps": 0})
    with pytest.raises(ValueError, match="episode_prior must be at least 0"):
        Engine(OrtModel(load_bundle(aux_bundle_dir)), "ttt", {"episode_prior": -1.0})


def test_ttt_balanced_statistics_follow_a_long_run_of_one_class_less_and_survive_a_restore(
    aux_bundle_dir: Path,
):
    """The same window over and over (one activity): `stats="ema"` follows it at full weight,
    the default `balanced` weights it down once its predicted class dominates; the class shares
    are part of the saved state."""
    x = windows(1, seed=12) * 2 + 1
    moved, engines = {}, {}
    for stats in ("ema", "balanced"):
        # without input alignment, which would re-scale the one window the test repeats
        e = Engine(OrtModel(load_bundle(aux_bundle_dir)), "ttt", {"stats": stats, "lr": 0.0}, inputs=None)
        source = e.model.source_stats()
        for _ in range(300):
            e.process(x)
        first = next(iter(source))
        moved[stats] = float(np.abs(e.policy.stats()[first][0] - source[first][0]).mean())
        engines[stats] = e
    assert moved["balanced"] < 0.75 * moved["ema"], moved
    balanced = engines["balanced"].policy
    assert balanced.balance.share.max() > 0.9  # one class took the recent predictions
    restored = Engine(OrtModel(load_bundle(aux_bundle_dir)), "ttt", {"stats": "balanced", "lr": 0.0})
    restored.policy.load_state(balanced.state())
    np.testing.assert_array_equal(restored.policy.balance.share, balanced.balance.share)
