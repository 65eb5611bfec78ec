"""The engine and its policies on small synthetic cases: statistics, guards, collapse, snapshots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.engine import POLICIES, Engine, StateError
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import POLICY_TYPES
from edge_ttt.adapt.softmax import softmax_entropy
from edge_ttt.artifacts import load_bundle
from tests.conftest import CHANNELS, exported_bundle
from tests.model_factory import CLASSES, LENGTH, windows

# Steady with aggressive settings: it steps on every window (the drift gate always open, the
# filter wide) and its guard acts within a few dozen updates.
AGGRESSIVE_STEADY = dict(
    lr=0.05,
    anchor=0.0,
    param_ema=1.0,
    reliable_quantile=0.99,
    collapse_horizon=16,
    watch_every=2,
    snapshot_every=4,
    rollback_cooldown=8,
    gate_shift=0.0,
    step_every=1,
)


def engine(bundle_dir: Path, policy: str, **options) -> Engine:
    """The policy alone: the label runs on by default would hold `steady` still on the untrained
    model's one-class streams (they have their own tests: tests/test_engine_runs.py)."""
    return Engine(OrtModel(load_bundle(bundle_dir)), policy=policy, options=options or None, runs=None)


def bundle_for(policy: str, bundle_dir: Path, aux_bundle_dir: Path) -> Path:
    """The auxiliary-task policy needs the bundle with the auxiliary head; the others the plain one."""
    return aux_bundle_dir if POLICY_TYPES[policy].loss == "auxiliary" else bundle_dir


def states_equal(a: dict, b: dict) -> bool:
    def same(x: np.ndarray, y: np.ndarray) -> bool:
        return np.array_equal(x, y, equal_nan=np.asarray(x).dtype.kind == "f")

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def test_every_policy_runs_at_batch_size_one_and_sixteen(bundle_dir: Path, aux_bundle_dir: Path):
    for policy in POLICIES:
        e = engine(bundle_for(policy, bundle_dir, aux_bundle_dir), policy)
        for n in (1, 16):
            pred = e.process(windows(n, seed=n))
            assert pred.classes.shape == (n,) and pred.probs.shape == (n, CLASSES)
            np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, rtol=1e-5)
            assert np.all(pred.valid) and np.all(np.isfinite(pred.entropy))
        assert e.counters.windows == 17


def test_source_predictions_never_change(bundle_dir: Path):
    e = engine(bundle_dir, "source")
    x = windows(4, seed=1)
    first = e.process(x).probs
    for seed in range(5):
        e.process(windows(8, seed=seed + 10) * 3)
    np.testing.assert_array_equal(e.process(x).probs, first)
    assert e.counters.adapt_steps == 0


def test_norm_update_equals_the_closed_form(bundle_dir: Path):
    """After one window, each layer's averages are (1 - m) * source + m * that window's moments."""
    m = 0.1
    e = engine(bundle_dir, "norm", momentum=m)
    model = e.model
    source = model.source_stats()
    x = windows(1, seed=3) * 2 + 1
    moments = model.forward(x, source).moments
    e.process(x)
    for layer, (mean0, var0) in source.items():
        mean_b, var_b = (v.astype(np.float64) for v in moments[layer])
        mean = (1 - m) * mean0 + m * mean_b
        second = (1 - m) * (var0 + mean0.astype(np.float64) ** 2) + m * (var_b + mean_b**2)
        got_mean, got_var = e.policy.stats()[layer]
        np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_var, second - mean**2, rtol=1e-4, atol=1e-5)


def test_norm_at_batch_size_one_finds_the_population_statistics(bundle_dir: Path):
    """Windows whose offsets differ: the averaged first-layer variance must include that spread,
    i.e. match what batch statistics over all windows at once report, not the within-window one."""
    rng = np.random.default_rng(0)
    x = windows(400, seed=4) + rng.normal(0, 2.0, (400, len(CHANNELS), 1)).astype(np.float32)
    e = engine(bundle_dir, "norm", momentum=0.01)
    for i in range(len(x)):
        e.process(x[i : i + 1])
    first = e.model.manifest.norm_layers[0].name
    # Layer 1's input does not depend on any normalization, so its population moments are exact.
    population = e.model.forward(x, e.model.source_stats()).moments[first]
    within = np.mean(
        [e.model.forward(x[i : i + 1], e.model.source_stats()).moments[first][1] for i in range(50)], axis=0
    )
    got_mean, got_var = e.policy.stats()[first]
    pop_mean, pop_var = (v.astype(np.float64) for v in population)
    assert np.all(np.abs(got_mean - pop_mean) < 0.2 * np.sqrt(pop_var))  # EMA noise, in population stds
    assert np.all((got_var > 0.75 * pop_var) & (got_var < 1.33 * pop_var))
    assert np.mean(within / pop_var) < 0.6  # the two really differ, so the check above means something


def bad_windows() -> dict[str, np.ndarray]:
    base = windows(1, seed=9)
    nan, inf, flat, huge = (base.copy() for _ in range(4))
    nan[0, 2, 10:40] = np.nan  # more samples missing than `guard.fill_gaps` fills in
    inf[0, 0, 5:25] = np.inf
    flat[0, 4, :] = 0.25  # a stuck gyroscope axis
    huge[0, 1, 3] = 1e6
    return {"nan": nan, "inf": inf, "flat": flat, "constant": np.full_like(base, 3.0), "out_of_range": huge}


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "source"])
def test_invalid_windows_are_predicted_but_never_change_state(
    bundle_dir: Path, aux_bundle_dir: Path, policy: str
):
    e = engine(bundle_for(policy, bundle_dir, aux_bundle_dir), policy)
    e.process(windows(2, seed=1))  # some state that is not the initial one
    before = e.policy.state()
    steps = e.counters.adapt_steps
    for name, x in bad_windows().items():
        pred = e.process(x)
        assert not pred.valid[0], name
        assert np.all(np.isfinite(pred.probs)), name
        assert states_equal(e.policy.state(), before), f"{name} changed the {policy} state"
    assert e.counters.rejected_invalid == len(bad_windows())
    assert e.counters.adapt_steps == steps


def test_a_batch_with_one_bad_window_adapts_on_the_others_only(bundle_dir: Path):
    good = windows(3, seed=2)
    mixed = np.concatenate([good, bad_windows()["nan"]])
    a, b = engine(bundle_dir, "norm"), engine(bundle_dir, "norm")
    pred = a.process(mixed)
    b.process(good)
    assert pred.valid.tolist() == [True, True, True, False]
    assert states_equal(a.policy.state(), b.policy.state())


def test_a_few_dropped_samples_are_filled_in_and_the_window_adapts_as_if_they_had_come(bundle_dir: Path):
    good = windows(4, seed=3)
    holed = good.copy()
    holed[0, 1, 7] = np.nan  # isolated drops, as from a lost packet
    holed[2, :, 30:33] = np.inf
    holed[3, 5, 0] = -np.inf  # at the window's edge: its neighbour's value
    expected = good.copy()
    expected[0, 1, 7] = 0.5 * (good[0, 1, 6] + good[0, 1, 8])
    steps = np.arange(30, 33)
    for c in range(good.shape[1]):
        expected[2, c, 30:33] = np.interp(steps, [29, 33], good[2, c, [29, 33]])
    expected[3, 5, 0] = good[3, 5, 1]
    a, b = engine(bundle_dir, "steady"), engine(bundle_dir, "steady")
    pred = a.process(holed)
    want = b.process(expected)
    assert pred.valid.all() and a.counters.rejected_invalid == 0
    assert a.counters.windows_filled == 3 and b.counters.windows_filled == 0
    np.testing.assert_allclose(pred.probs, want.probs, rtol=1e-5, atol=1e-7)
    assert states_equal(a.policy.state(), b.policy.state())


def test_tent_step_uses_batch_statistics_and_moves_only_norm_affines(bundle_dir: Path):
    e = engine(bundle_dir, "tent")
    before = e.model.parameters(trainable_only=False)
    x = windows(4, seed=6)
    expected = e.model.forward(x, e.model.source_stats(), mix=1.0).logits
    pred = e.process(x)
    probs, _ = softmax_entropy(expected.astype(np.float64))
    np.testing.assert_allclose(pred.probs, probs, rtol=1e-4, atol=1e-6)  # logits before the step
    after = e.model.parameters(trainable_only=False)
    trainable = set(e.model.trainable)
    assert all(np.array_equal(before[k], after[k]) for k in before if k not in trainable)
    assert any(not np.array_equal(before[k], after[k]) for k in trainable)


def test_sar_filters_by_entropy_and_takes_a_sharpness_aware_step(confident_bundle_dir: Path):
    e = engine(confident_bundle_dir, "sar")
    model, policy = e.model, e.policy
    x = windows(16, seed=7)
    stats = model.source_stats()
    h = softmax_entropy(model.forward(x, stats, mix=1.0).logits.astype(np.float64))[1]
    keep = h < 0.4 * math.log(CLASSES)
    assert 0 < keep.sum() < len(x), "the fixture must give both reliable and unreliable windows"

    # The same step by hand: gradient at the origin, ascend rho along it, gradient there, SGD.
    origin = model.parameters()
    model.forward_backward(x, keep / keep.sum(), stats, mix=1.0)
    g1 = model.gradients()
    model.discard_gradients()
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in g1.values()))
    model.set_parameters({k: origin[k] + 0.05 / norm * g1[k] for k in origin})
    h2 = softmax_entropy(model.forward(x, stats, mix=1.0).logits.astype(np.float64))[1]
    keep2 = keep & (h2 < 0.4 * math.log(CLASSES))
    model.forward_backward(x, keep2 / keep2.sum(), stats, mix=1.0)
    g2 = model.gradients()
    model.discard_gradients()
    model.set_parameters(origin)
    lr = 0.00025 / 64 * len(x) * 2

    e.process(x)
    assert e.counters.skipped_unreliable == int((~keep).sum()) and e.counters.adapt_steps == 1
    assert e.counters.resets == 0
    for k in origin:  # compare the steps themselves; float32 parameters resolve about 1e-7
        step = policy.params[k].astype(np.float64) - origin[k]
        np.testing.assert_allclose(step, -lr * g2[k].astype(np.float64), rtol=0, atol=2e-7)
    assert max(float(np.abs(lr * g).max()) for g in g2.values()) > 2e-6  # a step well above that
    assert policy.loss_ema == pytest.approx(float(h2[keep2].mean()), rel=1e-5)


def test_sar_resets_to_source_when_its_loss_average_collapses(bundle_dir: Path):
    e = engine(bundle_dir, "sar")
    e.policy.param_vector = e.policy.param_vector + 1.0
    e.policy.loss_ema = 0.05  # as after a collapse into confident predictions
    e.process(windows(1, seed=8))
    assert e.counters.resets == 1 and e.policy.loss_ema is None
    assert all(np.array_equal(e.policy.params[k], v) for k, v in e.policy.source_params.items())
    assert all(np.array_equal(e.model.parameters()[k], v) for k, v in e.policy.source_params.items())


def test_steady_rolls_back_a_collapse_on_an_adversarial_single_class_stream(bundle_dir: Path):
    """Aggressive settings and one repeated input drive entropy minimization into collapse."""
    e = engine(bundle_dir, "steady", **AGGRESSIVE_STEADY)
    x = windows(1, seed=11)
    for _ in range(300):
        e.process(x + np.random.default_rng(0).normal(0, 0.01, x.shape).astype(np.float32))
    assert e.counters.rollbacks + e.counters.resets > 0
    assert e.counters.rollbacks > 0
    # After each rollback the detector starts over; the model is not left collapsed for good.
    assert e.policy.param_change()[1] <= e.policy.detector.max_param_drift


def test_steady_with_default_settings_does_not_roll_back_on_a_benign_stream(bundle_dir: Path):
    e = engine(bundle_dir, "steady")
    for seed in range(200):
        e.process(windows(1, seed=seed))
    assert e.counters.rollbacks == 0 and e.counters.resets == 0
    assert e.counters.adapt_steps == 200


@pytest.mark.parametrize("policy", POLICIES)
def test_snapshot_round_trip_gives_identical_future_predictions(
    bundle_dir: Path, aux_bundle_dir: Path, tmp_path: Path, policy: str
):
    bundle_dir = bundle_for(policy, bundle_dir, aux_bundle_dir)
    a = engine(bundle_dir, policy)
    for seed in range(5):
        a.process(windows(1, seed=seed) * 1.5)
    a.save_state(tmp_path / "state.npz")
    b = engine(bundle_dir, policy)
    b.load_state(tmp_path / "state.npz")
    assert states_equal(a.policy.state(), b.policy.state())
    assert a.counters == b.counters
    for seed in range(5, 10):
        x = windows(1, seed=seed) * 1.5
        np.testing.assert_array_equal(a.process(x).probs, b.process(x).probs)


@pytest.fixture(scope="module")
def other_bundle_dir(tmp_path_factory) -> Path:
    return exported_bundle(tmp_path_factory, "cnn-gn", "other")


def test_snapshot_is_refused_on_another_bundle_or_policy(
    bundle_dir: Path, other_bundle_dir: Path, tmp_path: Path
):
    a = engine(bundle_dir, "steady")
    a.process(windows(1))
    a.save_state(tmp_path / "state.npz")
    with pytest.raises(StateError, match="adapted on bundle"):
        engine(other_bundle_dir, "steady").load_state(tmp_path / "state.npz")
    with pytest.raises(StateError, match="belongs to policy 'steady'"):
        engine(bundle_dir, "norm").load_state(tmp_path / "state.npz")


def test_broken_state_files_are_refused_by_name(bundle_dir: Path, tmp_path: Path):
    e = engine(bundle_dir, "steady")
    with pytest.raises(StateError, match="does not exist"):
        e.load_state(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(StateError, match=r"junk\.npz cannot be read \(not an \.npz archive") as junk:
        e.load_state(tmp_path / "junk.npz")
    assert "allow_pickle" not in str(junk.value)  # numpy's advice to load it unsafely is not passed on
    e.save_state(tmp_path / "ok.npz")
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match=r"cut\.npz"):
        e.load_state(tmp_path / "cut.npz")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_engine_refuses_bad_shapes_policies_and_options(bundle_dir: Path):
    with pytest.raises(ValueError, match="unknown policy 'magic'"):
        engine(bundle_dir, "magic")
    with pytest.raises(ValueError, match="policy 'steady': bad option"):
        engine(bundle_dir, "steady", learning_speed=3)
    e = engine(bundle_dir, "source")
    with pytest.raises(ValueError, match=rf"\[n, {len(CHANNELS)}, {LENGTH}\]"):
        e.process(np.zeros((1, len(CHANNELS), LENGTH + 1), np.float32))


def test_steady_counts_windows_of_a_dominant_class_less(bundle_dir: Path):
    e = engine(bundle_dir, "steady")
    e.policy.balance.share = np.eye(CLASSES)[0]  # class 0 took every recent prediction
    np.testing.assert_allclose(e.policy.balance.weights(np.array([0, 1])), [1 / CLASSES, 1.0])


def test_a_long_run_of_one_class_moves_steady_statistics_less_than_norm(bundle_dir: Path):
    """The same window over and over (one activity, one predicted class): `norm` follows it at full
    weight, `steady` weights it down once the class dominates the recent predictions."""
    x = windows(1, seed=12) * 2 + 1
    moved = {}
    for policy in ("norm", "steady"):
        e = engine(bundle_dir, policy)
        source = e.model.source_stats()
        for _ in range(300):
            e.process(x)
        first = next(iter(source))
        moved[policy] = float(np.abs(e.policy.stats()[first][0] - source[first][0]).mean())
    # 300 windows against a prior of 100: norm's estimate is 3/4 data; steady's first ~50 windows
    # count fully (the class share is still rising), the rest a fifth: about half data.
    assert moved["steady"] < 0.75 * moved["norm"], moved


def test_steady_stat_shift_is_the_largest_mean_shift_in_source_stds(bundle_dir: Path):
    """The collapse detector's statistics test: per batch norm and channel, |mean - source mean|
    over the source std (its variance eased by 1e-5), the largest of all; 0 at source."""
    e = engine(bundle_dir, "steady")
    assert e.policy.stat_shift() == 0.0
    for i in range(20):
        e.process(windows(1, seed=i) * 3 + 2)
    means = e.policy.moments.means()
    source = e.model.source_stats()
    want = max(float((np.abs(means[k] - m) / np.sqrt(v + 1e-5)).max()) for k, (m, v) in source.items())
    assert want > 0.1
    assert e.policy.stat_shift() == want


def test_drift_gate_skips_gradient_steps_on_source_like_input(bundle_dir: Path):
    """The fixture's source reference is N(0, 1) per channel: such windows leave the gate closed
    (no backward pass, parameters untouched); windows shifted by 2 source stds open it."""
    e = engine(bundle_dir, "steady")
    rng = np.random.default_rng(0)
    for _ in range(50):
        e.process(rng.standard_normal((1, len(CHANNELS), LENGTH)).astype(np.float32))
    assert not e.policy.gate.open
    assert e.counters.skipped_no_drift == 50
    assert all(np.array_equal(e.policy.params[k], v) for k, v in e.policy.source_params.items())
    for _ in range(100):
        e.process((rng.standard_normal((1, len(CHANNELS), LENGTH)) + 2.0).astype(np.float32))
    shift = e.policy.gate.shift()
    assert e.policy.gate.open and shift > 0.5
    assert e.counters.skipped_no_drift < 150  # steps were taken once it opened


def test_steady_steps_on_every_step_every_th_window_and_judges_every_window(bundle_dir: Path):
    """With the gate open, one window in `step_every` takes a training pass; the windows between
    take a forward pass only, and the reliability filter still judges and counts each of them."""
    e = engine(bundle_dir, "steady", gate_shift=0.0, gate_spread=0.0, reliable_quantile=0.7)
    assert e.policy.options.step_every == 4  # the default
    passes, outputs = [], []
    train, update = e.model.forward_backward, e.policy.update
    e.model.forward_backward = lambda *a, **k: passes.append(1) or train(*a, **k)
    e.policy.update = lambda x: outputs.append(update(x)) or outputs[-1]
    x = windows(40, seed=5) * 1.5
    for i in range(len(x)):
        e.process(x[i : i + 1])
    assert len(passes) == 10  # windows 4, 8, ..., 40
    unreliable = sum(int(o.entropy[0] >= e.policy.reliable_entropy) for o in outputs)
    assert 0 < unreliable < 40 and e.counters.skipped_unreliable == unreliable
    assert int(e.policy.state()["since_step"]) == 0 and e.counters.skipped_no_drift == 0


def test_engines_of_several_devices_can_share_one_model(bundle_dir: Path):
    """Two devices adapt on one set of ORT sessions, each exactly as if it had its own model."""
    shared = OrtModel(load_bundle(bundle_dir))
    a, b = Engine(shared, policy="tent"), Engine(shared, policy="tent")
    alone_a, alone_b = engine(bundle_dir, "tent"), engine(bundle_dir, "tent")
    for seed in range(6):
        xa, xb = windows(2, seed=seed), windows(2, seed=100 + seed) * 2
        np.testing.assert_array_equal(a.process(xa).probs, alone_a.process(xa).probs)
        np.testing.assert_array_equal(b.process(xb).probs, alone_b.process(xb).probs)
    assert states_equal(a.policy.state(), alone_a.policy.state())
    assert not states_equal(a.policy.state(), b.policy.state())
