"""Input alignment: the per-channel gain and offset estimates on streams of known shift, its
protections, its state, and the engine, config, replay and manifest around it."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.channel_references import class_references, window_features
from edge_ttt.adapt.engine import AutoInputs, Engine, InputOptions
from edge_ttt.adapt.input_alignment import InputAlignment
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.agent.config import load_config
from edge_ttt.artifacts import load_bundle
from edge_ttt.manifest import Manifest
from tests.agent_config_factory import BASE, problems, write
from tests.model_factory import CLASSES, LENGTH, windows

BARE = InputOptions(momentum=0.02, warmup_windows=0.0, offset_floor=0.0)  # no spread given: no dead band


def smooth_windows(
    n: int, channels: int = 3, length: int = 64, seed: int = 0, at_zero: bool = False
) -> np.ndarray:
    """Windows of a slow random walk around per-channel levels: lag-1 autocovariance near the
    variance, as sensor motion at 50 Hz has."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((n, channels, length)) * 0.3
    walk = np.cumsum(steps, axis=2)
    levels = np.zeros(channels) if at_zero else np.linspace(-2.0, 1.0, channels)
    return walk - walk.mean(axis=2, keepdims=True) + levels[None, :, None]


def stage_for(source: np.ndarray, options: InputOptions = BARE, spread=None) -> InputAlignment:
    refs = class_references(source, np.zeros(len(source), int), 1)
    return InputAlignment(options, refs, channel_std=source.std(axis=(0, 2)), spread=spread)


def feed(stage: InputAlignment, x: np.ndarray) -> None:
    for i in range(len(x)):  # one window at a time, as a device sees them
        stage.update(x[i : i + 1], np.ones((1, 1)), np.zeros(1))


def test_features_are_the_window_mean_and_lag_one_autocovariance():
    x = np.random.default_rng(0).standard_normal((5, 2, 32))
    mean, autocov = window_features(x)
    c = x - x.mean(axis=2, keepdims=True)
    assert np.allclose(mean, x.mean(axis=2))
    assert np.allclose(autocov, np.einsum("ncl,ncl->nc", c[:, :, 1:], c[:, :, :-1]) / 31)


def test_class_references_average_per_class_and_fill_an_absent_class_with_the_overall_mean():
    x = np.zeros((4, 1, 8))
    x[2:] += 3.0
    mean, _ = class_references(x, np.array([0, 0, 1, 1]), classes=3)
    assert mean[:, 0].tolist() == [0.0, 3.0, 1.5]


def test_a_known_gain_and_offset_per_channel_are_learnt_and_undone():
    source = smooth_windows(400, seed=1)
    gain, offset = np.array([2.0, 0.5, 57.3]), np.array([3.0, -1.0, 0.0])
    stream = smooth_windows(400, seed=2) * gain[None, :, None] + offset[None, :, None]
    stage = stage_for(source)
    feed(stage, stream)
    assert np.allclose(np.exp(stage.log_gain), gain, rtol=0.15)
    # the offset is what the stream's mean shows beyond the learnt gain, so an error in the gain
    # shows in it in proportion to the channel's level
    levels = np.abs(source.mean(axis=(0, 2)))
    assert np.allclose(stage.offset, offset, atol=0.2 * gain * (1 + levels))
    aligned = stage.apply(stream)
    assert np.allclose(aligned.mean(axis=(0, 2)), source.mean(axis=(0, 2)), atol=0.2)
    assert np.allclose(aligned.std(axis=(0, 2)), source.std(axis=(0, 2)), rtol=0.15)


@pytest.mark.parametrize("seed", range(6))
def test_aligned_bounds_are_the_extremes_of_the_aligned_windows_bit_for_bit(seed: int):
    """The guard checks the aligned windows from the raw ones' extremes (`aligned_bounds`): they
    must be exactly what reducing `apply`'s output gives, at every gain and offset learnt, however
    large the values (float32 overflow included)."""
    rng = np.random.default_rng(seed)
    source = smooth_windows(200, seed=1)
    gain = np.exp(rng.uniform(-4.0, 4.0, 3))
    stream = smooth_windows(60, seed=2) * gain[None, :, None] + rng.normal(0.0, 5.0, 3)[None, :, None]
    stream[0, rng.integers(3)] = 3e38  # beyond float32's range once the gain is undone
    stage = stage_for(source)
    feed(stage, stream[1:])
    x = stream.astype(np.float32)
    aligned = stage.apply(x)
    assert aligned is not x  # a correction is applied: the case the engine takes the bounds in
    high, low = stage.aligned_bounds(np.maximum.reduce(x, axis=2), np.minimum.reduce(x, axis=2))
    np.testing.assert_array_equal(high, np.maximum.reduce(aligned, axis=2))
    np.testing.assert_array_equal(low, np.minimum.reduce(aligned, axis=2))
    assert high.dtype == np.float32


def test_aligned_bounds_are_not_given_while_a_turn_mixes_the_channels(bundle_dir: Path):
    stage = Engine(OrtModel(load_bundle(bundle_dir)), inputs=InputOptions()).inputs
    assert stage.mounting is not None
    high, low = np.ones((1, stage.offset.size), np.float32), np.zeros((1, stage.offset.size), np.float32)
    assert stage.aligned_bounds(high, low) is not None
    stage.mounting.turn = 1
    assert stage.aligned_bounds(high, low) is None


def test_white_noise_is_not_mistaken_for_a_gain():
    source = smooth_windows(300, seed=1)
    noisy = smooth_windows(300, seed=3) + np.random.default_rng(4).standard_normal((300, 3, 64))
    stage = stage_for(source)
    feed(stage, noisy)
    assert np.all(np.abs(stage.log_gain) < 0.15), stage.log_gain  # the variance rose ~2x: log 0.35+


def test_shifts_inside_the_dead_band_are_left_alone_and_only_the_excess_is_undone():
    source = smooth_windows(300, seed=1, at_zero=True)
    options = InputOptions(momentum=0.02, warmup_windows=0.0, dead_band=2.0)
    spread = (
        0.05 * source.std(axis=(0, 2)),
        np.full(3, 0.05),
    )  # as if the source devices were this far apart
    stage = stage_for(source, options, spread)
    shifted = smooth_windows(300, seed=2, at_zero=True) * 1.03 + 0.05 * source.std(axis=(0, 2))[None, :, None]
    feed(stage, shifted)
    offset, gain = stage.correction()
    assert np.all(offset == 0.0) and np.all(gain == 1.0)
    stage.reset()
    feed(stage, smooth_windows(300, seed=2, at_zero=True) * 2.0)
    _, gain = stage.correction()
    band = 2.0 * 0.05  # beyond the band: the garrote keeps v * (1 - (band / v)**2)
    assert np.allclose(np.log(gain), stage.log_gain * (1 - (band / stage.log_gain) ** 2))


def test_offsets_within_the_floor_are_left_alone_whatever_the_source_spread():
    source = smooth_windows(300, seed=1, at_zero=True)
    std = source.std(axis=(0, 2))
    options = InputOptions(momentum=0.02, warmup_windows=0.0)  # offset_floor 0.4 stds
    small, large = stage_for(source, options), stage_for(source, options)
    feed(small, smooth_windows(300, seed=2, at_zero=True) + 0.3 * std[None, :, None])
    feed(large, smooth_windows(300, seed=2, at_zero=True) + 2.0 * std[None, :, None])
    assert np.all(small.correction()[0] == 0.0)
    assert np.allclose(large.correction()[0], 2.0 * std * (1 - (0.4 / 2.0) ** 2), rtol=0.1)


def test_a_floor_per_call_narrows_the_offset_band_for_that_call_only():
    source = smooth_windows(300, seed=1, at_zero=True)
    std = source.std(axis=(0, 2))
    spread = (0.6 * std, np.ones(3))  # offsets: above the narrow floor; gains: left alone
    stage = stage_for(source, InputOptions(momentum=0.02, warmup_windows=0.0, offset_floor=3.0), spread)
    stream = smooth_windows(300, seed=2, at_zero=True) + 2.0 * std[None, :, None]
    feed(stage, stream)
    assert np.all(stage.correction()[0] == 0.0)  # 2 stds: within the 3-std floor
    wide = stage.apply(stream)
    assert np.array_equal(wide, stream.astype(np.float32))  # nothing beyond the bands: as it came
    assert np.array_equal(stage.apply(stream, None), wide)
    narrow = stage.apply(stream, offset_floor=0.4)  # the band is the spread, 0.6 stds, here
    kept = stage.offset * (1 - (0.6 * std / stage.offset) ** 2)
    assert np.allclose(stream.mean(axis=(0, 2)) - narrow.mean(axis=(0, 2)), kept, rtol=1e-5)
    assert np.all(stage.correction()[0] == 0.0)  # the stage's own band is unchanged
    zero = stage.apply(stream, offset_floor=0.0)  # the spread still bounds it from below
    assert np.allclose(zero, narrow)


def test_one_broken_reading_moves_the_estimates_only_a_bounded_step():
    source = smooth_windows(200, seed=1)
    stage = stage_for(source, InputOptions(momentum=0.01, warmup_windows=0.0))
    feed(stage, smooth_windows(200, seed=2))
    before_gain, before_offset = stage.log_gain.copy(), stage.offset.copy()
    spike = smooth_windows(1, seed=5)
    spike[0, :, ::2] = 1e6
    feed(stage, spike)
    assert np.all(stage.log_gain - before_gain < 0.5 * math.log(1 + 0.01 * 100))
    assert np.all(np.abs(stage.offset - before_offset) <= 0.01 * 50 * source.std(axis=(0, 2)) * 1.2)


def test_a_block_of_windows_moves_the_estimates_as_one_by_one_folding_does():
    """Within the bounds, a block differs from folding its windows in turn only by the gain the
    offsets are read with (the block's last, not each window's), which matters where the gain
    moves fast (the first blocks) and in proportion to the channel's level."""
    source = smooth_windows(300, seed=1)
    gain = np.array([2.0, 0.5, 1.3])
    stream = smooth_windows(160, seed=2) * gain[None, :, None] + 1.0
    one = stage_for(source, replace(BARE, learn_every=1))
    block = stage_for(source, replace(BARE, learn_every=16))
    feed(one, stream)
    feed(block, stream)
    assert block.windows == one.windows == 160
    assert np.allclose(block.autocov, one.autocov, rtol=1e-9)
    assert np.allclose(block.expected, one.expected, rtol=1e-9)
    levels = np.abs(source.mean(axis=(0, 2)))
    assert np.all(np.abs(block.offset - one.offset) <= 0.05 * gain * (1 + levels))


def test_the_estimates_move_once_a_block_has_gathered_and_a_state_includes_the_rest():
    source = smooth_windows(100, seed=1)
    stage = stage_for(source, replace(BARE, learn_every=4))
    shifted = smooth_windows(7, seed=2) * 3.0 + 2.0
    feed(stage, shifted[:3])
    assert stage.windows == 0 and not stage.offset.any()  # three gathered, none learnt
    feed(stage, shifted[3:4])
    assert stage.windows == 4 and stage.offset.any()
    feed(stage, shifted[4:])
    saved = stage.state()  # the three gathered since are learnt first
    assert int(saved["windows"]) == stage.windows == 7
    other = stage_for(source, replace(BARE, learn_every=1))
    feed(other, shifted)
    assert np.allclose(other.autocov, stage.autocov, rtol=1e-9)


def test_unreliable_windows_teach_the_gain_and_offset_nothing():
    source = smooth_windows(50, seed=1)
    refs = class_references(source, np.zeros(50, int), 1)
    stage = InputAlignment(BARE, refs, np.ones(3), reliable_entropy=0.5, noise_share=np.zeros(3))
    before = stage.state()
    stage.update(source[:10] * 3.0, np.ones((10, 1)), np.full(10, 0.9))
    after = stage.state()
    # only the sensor's white noise learns from every window (edge_ttt.adapt.denoise)
    assert {k for k in after if not np.array_equal(before[k], after[k])} <= {"noise/moments", "noise/windows"}
    assert int(after["noise/windows"]) == 10
    assert all(np.array_equal(before[k], v) for k, v in after.items() if not k.startswith("noise/"))


def test_state_round_trip_restores_the_correction_bit_for_bit():
    source = smooth_windows(100, seed=1)
    stage = stage_for(source, InputOptions())
    feed(stage, smooth_windows(100, seed=2) * 3.0 + 1.0)
    saved = stage.state()
    other = stage_for(source, InputOptions())
    other.load_state(saved)
    x = smooth_windows(3, seed=9)
    assert np.array_equal(other.apply(x), stage.apply(x))
    feed(stage, x)
    feed(other, x)
    assert all(np.array_equal(other.state()[k], v) for k, v in stage.state().items())


@pytest.mark.parametrize(
    "bad",
    [
        {"momentum": 0.0},
        {"reliable_quantile": 1.5},
        {"prior_momentum": 1.0},
        {"dead_band": -0.1},
        {"learn_every": 0},
    ],
)
def test_options_refuse_values_out_of_range(bad: dict):
    with pytest.raises(ValueError, match="input alignment"):
        InputOptions(**bad)


def smooth_bundle(bundle_dir: Path, out: Path) -> Path:
    """The test bundle with class references of smooth windows (its own come from white noise,
    whose lag-1 autocovariance is about 0 and shows no gain)."""
    copy = shutil.copytree(bundle_dir, out)
    doc = json.loads((copy / "manifest.json").read_text())
    mean, autocov = class_references(smooth_windows(200, 6, LENGTH), np.zeros(200, int), 1)
    doc["reference"]["class_channels"] = {
        "mean": [mean[0].tolist()] * CLASSES,
        "autocov": [autocov[0].tolist()] * CLASSES,
        "offset_spread": [0.0] * 6,
        "log_gain_spread": [0.0] * 6,
    }
    (copy / "manifest.json").write_text(json.dumps(doc))
    return copy


def test_engine_learns_a_unit_error_that_the_guard_refuses_raw(bundle_dir: Path, tmp_path: Path):
    """Channel 5 scaled 400x is beyond the 50-std range raw: without alignment every window is
    refused; with it the refusals stop once the gain is learnt, and the state keeps it."""
    bundle = load_bundle(smooth_bundle(bundle_dir, tmp_path / "smooth"))
    x = smooth_windows(300, 6, LENGTH, seed=3).astype(np.float32)
    x[:, 5] *= 400.0
    plain = Engine(OrtModel(bundle), "source")
    plain.process(x)
    assert plain.counters.rejected_invalid == 300
    options = InputOptions(reliable_quantile=1.0)  # random weights: no entropy filter
    aligned = Engine(OrtModel(bundle), "source", inputs=options)
    for i in range(0, 300, 10):
        aligned.process(x[i : i + 10])
    late = aligned.process(x[-50:])
    assert late.valid.all()
    assert aligned.inputs is not None and math.exp(aligned.inputs.log_gain[5]) > 200
    arrays, meta = aligned.snapshot()
    assert {"input/offset", "input/autocov", "input/expected"} <= set(arrays)
    restored = Engine(OrtModel(bundle), "source", inputs=options)
    restored.restore_snapshot(arrays, meta)
    assert np.array_equal(restored.process(x[:4]).classes, aligned.process(x[:4]).classes)


def test_glitches_out_of_range_teach_the_alignment_nothing(bundle_dir: Path, tmp_path: Path):
    """A bit error (one reading 1e4 times too large) puts a window out of range as a unit error
    does, but in one sample: the alignment learns from the stream as if those windows were not
    there, while a unit error is still learnt (above)."""
    bundle = load_bundle(smooth_bundle(bundle_dir, tmp_path / "smooth"))
    x = smooth_windows(120, 6, LENGTH, seed=3).astype(np.float32)
    glitched = x.copy()
    hit = np.arange(0, 120, 3)
    glitched[hit, 2, 40] *= 1e4
    glitched[hit, 2, 40] += 1e4
    options = InputOptions(reliable_quantile=1.0, warmup_windows=4.0)
    engines = [Engine(OrtModel(bundle), "norm", inputs=options) for _ in range(2)]
    for i in range(120):
        engines[0].process(glitched[i : i + 1])
        if i not in hit:
            engines[1].process(x[i : i + 1])
    assert engines[0].counters.rejected_invalid == len(hit)
    learnt = [{k: v for k, v in e.snapshot()[0].items() if k.startswith("input/")} for e in engines]
    assert learnt[0].keys() == learnt[1].keys() and learnt[0]
    for key in learnt[0]:
        np.testing.assert_array_equal(learnt[0][key], learnt[1][key], err_msg=key)
    assert not np.array_equal(learnt[1]["input/offset"], np.zeros_like(learnt[1]["input/offset"]))


def test_windows_out_of_range_raw_are_predicted_aligned_but_never_adapt_the_policy(
    bundle_dir: Path, tmp_path: Path
):
    """While the alignment learns a unit error, what it lets through is still off: the policy's
    statistics must not keep it. Windows in range raw adapt as before."""
    bundle = load_bundle(smooth_bundle(bundle_dir, tmp_path / "smooth"))
    x = smooth_windows(200, 6, LENGTH, seed=3).astype(np.float32)
    unit = x.copy()
    unit[:, 5] *= 400.0
    engine = Engine(OrtModel(bundle), "norm", inputs=InputOptions(reliable_quantile=1.0))
    before = engine.policy.state()
    for i in range(0, 200, 10):
        out = engine.process(unit[i : i + 10])
    assert out.valid.all()  # aligned, they pass the guard and are served
    assert all(np.array_equal(before[k], v) for k, v in engine.policy.state().items())
    fresh = Engine(OrtModel(bundle), "norm", inputs=InputOptions(reliable_quantile=1.0))
    fresh.process(x[:10])  # in range raw: the policy adapts
    assert not all(np.array_equal(before[k], v) for k, v in fresh.policy.state().items())


def test_a_rollback_of_the_policy_restarts_the_alignment_too(bundle_dir: Path):
    """The collapse the policy's guard undoes may have come through the alignment: both start afresh."""
    from tests.test_engine import AGGRESSIVE_STEADY

    engine = Engine(
        OrtModel(load_bundle(bundle_dir)),
        "steady",
        AGGRESSIVE_STEADY,
        inputs=InputOptions(reliable_quantile=1.0),
    )
    x = windows(1, seed=11)
    undone, restarts = 0, 0
    for i in range(300):
        engine.process(x + np.random.default_rng(i).normal(0, 0.01, x.shape).astype(np.float32))
        now = engine.counters.rollbacks + engine.counters.resets
        if now > undone:
            assert engine.inputs.windows == 0 and engine.inputs.mounting.turn == 0
            restarts += 1
        undone = now
    assert restarts > 0 and engine.inputs.state()["windows"] > 0  # and it learns again after


def test_a_turn_of_the_mounting_restarts_the_policy_from_source(bundle_dir: Path, monkeypatch):
    """The policy adapted to the old orientation: when the mounting turns, it starts afresh, and
    only then; the alignment keeps the turn."""
    engine = Engine(
        OrtModel(load_bundle(bundle_dir)),
        "steady",
        {"gate_shift": 0.0, "gate_spread": 0.0, "step_every": 1},
        inputs=InputOptions(reliable_quantile=1.0, learn_every=1),
    )
    x = windows(20, seed=12) * 1.5 + 0.5
    for i in range(10):
        engine.process(x[i : i + 1])
    assert engine.policy.updates == 10 and engine.inputs.mounting.turn == 0
    mounting = engine.inputs.mounting
    learn = mounting.update

    def turn_once(windows: np.ndarray) -> None:
        learn(windows)
        if mounting.switches == 0:
            mounting.turn, mounting.switches = 5, 1

    monkeypatch.setattr(mounting, "update", turn_once)
    engine.process(x[10:11])
    fresh = Engine(OrtModel(load_bundle(bundle_dir)), "steady", inputs=None).policy.state()
    state = engine.policy.state()
    assert engine.policy.updates == 0 and mounting.turn == 5
    assert state.keys() == fresh.keys() and all(np.array_equal(state[k], fresh[k]) for k in fresh)
    for i in range(11, 20):  # no further turn: the policy adapts again, no restart
        engine.process(x[i : i + 1])
    assert engine.policy.updates == 9


def test_a_turn_found_in_the_windows_a_snapshot_learns_restarts_the_policy_before_it_is_saved(
    bundle_dir: Path, monkeypatch
):
    """A snapshot learns the windows the alignment gathered; a turn found there restarts the policy
    first, so the state saved is never a turned mounting beside a policy of the old orientation."""
    engine = Engine(
        OrtModel(load_bundle(bundle_dir)),
        "steady",
        {"gate_shift": 0.0, "gate_spread": 0.0, "step_every": 1},
        inputs=InputOptions(reliable_quantile=1.0, warmup_windows=0.0, learn_every=16),
    )
    x = windows(10, seed=13) * 1.5 + 0.5
    for i in range(len(x)):  # fewer than a block: gathered, not learnt
        engine.process(x[i : i + 1])
    mounting = engine.inputs.mounting
    assert mounting.windows == 0 and engine.policy.updates == 10
    learn = mounting.update

    def turn(windows: np.ndarray) -> None:
        learn(windows)
        mounting.turn, mounting.switches = 5, mounting.switches + 1

    monkeypatch.setattr(mounting, "update", turn)
    arrays, _ = engine.snapshot()
    fresh = Engine(OrtModel(load_bundle(bundle_dir)), "steady", inputs=None).policy.state()
    assert engine.policy.updates == 0 and int(arrays["input/mount/turn"]) == 5
    assert all(np.array_equal(arrays[k], v) for k, v in fresh.items())


def test_the_guard_still_refuses_nan_and_flat_windows_with_alignment(bundle_dir: Path):
    engine = Engine(OrtModel(load_bundle(bundle_dir)), "steady", inputs=InputOptions())
    x = windows(3, seed=4)
    x[0, 1, 5:40] = np.nan  # more than `guard.fill_gaps` fills in
    x[1, 2] = 0.25
    before = engine.inputs.state()
    out = engine.process(x)
    assert out.valid.tolist() == [False, False, True]
    assert engine.inputs.state()["windows"] == before["windows"] + (
        out.entropy[2] < engine.inputs.reliable_entropy
    )


def test_a_bundle_without_class_references_is_refused_with_the_fix(bundle_dir: Path, tmp_path: Path):
    old = shutil.copytree(bundle_dir, tmp_path / "old")
    doc = json.loads((old / "manifest.json").read_text())
    del doc["reference"]["class_channels"]
    (old / "manifest.json").write_text(json.dumps(doc))
    model = OrtModel(load_bundle(old))
    Engine(model, "steady")  # without alignment it still runs
    with pytest.raises(ValueError, match=r"no reference.class_channels .* re-export it"):
        Engine(model, "steady", inputs=InputOptions())


def test_manifest_refuses_class_references_of_the_wrong_shape(bundle_dir: Path):
    doc = json.loads((bundle_dir / "manifest.json").read_text())
    spread = Manifest.model_validate(doc).reference.class_channels
    assert len(spread.offset_spread) == len(spread.log_gain_spread) == 6  # export wrote them
    doc["reference"]["class_channels"]["mean"] = doc["reference"]["class_channels"]["mean"][:-1]
    with pytest.raises(ValueError, match=r"class_channels needs \[classes\]\[channels\]"):
        Manifest.model_validate(doc)


def test_config_turns_alignment_on_with_its_options_and_names_a_bad_key(tmp_path: Path):
    auto = load_config(write(tmp_path, BASE), check_files=False)
    assert auto.model.input.options() == AutoInputs(InputOptions())
    off = load_config(write(tmp_path, BASE + "[model.input]\nenabled = false\n"), check_files=False)
    assert off.model.input.options() is None
    on = load_config(
        write(tmp_path, BASE + "[model.input]\nenabled = true\nmomentum = 0.01\n"), check_files=False
    )
    assert on.model.input.options() == InputOptions(momentum=0.01)
    every_key = "[model.input]\nenabled = true\noffset_floor = 0.2\nmounting = false\nlearn_every = 4\n"
    assert load_config(write(tmp_path, BASE + every_key), check_files=False).model.input.options() == (
        InputOptions(offset_floor=0.2, mounting=False, learn_every=4)
    )
    message = problems(write(tmp_path, BASE + "[model.input]\nlearn_every = 0\n"), check_files=False)
    assert "model.input.learn_every: must be at least 1, got 0" in message
    message = problems(
        write(tmp_path, BASE + "[model.input]\nenabled = true\nmomentun = 0.01\n"), check_files=False
    )
    assert "momentun" in message and "momentum" in message
    message = problems(write(tmp_path, BASE + "[model.input]\nmomentum = 0\n"), check_files=False)
    assert "model.input.momentum" in message and "greater than 0" in message


def test_auto_turns_alignment_on_for_this_projects_policies_and_leaves_offsets_to_batch_norms(
    bundle_dir: Path, aux_bundle_dir: Path, tmp_path_factory
):
    from tests.conftest import exported_bundle

    group_norm = OrtModel(load_bundle(exported_bundle(tmp_path_factory, "cnn-gn", "auto")))
    batch_norm = OrtModel(load_bundle(bundle_dir))
    assert Engine(group_norm, "steady").inputs is not None  # the default: AUTO_INPUTS
    assert Engine(group_norm, "source").inputs is None
    assert Engine(group_norm, "norm").inputs is None
    assert all(Engine(batch_norm, p).inputs is None for p in ("tent", "note", "rotta"))  # as published
    ttt = Engine(OrtModel(load_bundle(aux_bundle_dir)), "ttt").inputs  # test-time training is ours too
    assert ttt is not None and ttt.options.offset_floor == 3.0
    on_batch_norm = Engine(batch_norm, "steady").inputs  # offsets left to steady's statistics
    assert on_batch_norm is not None and on_batch_norm.options.offset_floor == 3.0
    assert Engine(group_norm, "steady", inputs=None).inputs is None
    assert Engine(batch_norm, "source", inputs=InputOptions()).inputs is not None
