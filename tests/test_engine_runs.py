"""The engine's opt-in label-run switch: off by default and then nothing changes; in a run the
source model serves the windows aligned with the run's offset floor and the policy stands still."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_ttt.adapt.engine import AutoInputs, AutoRuns, Engine, InputOptions, RunOptions
from edge_ttt.adapt.fallback import FallbackOptions
from edge_ttt.adapt.flat import unprefixed
from edge_ttt.adapt.instance_offsets import FirstNorm
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.agent.config import load_config
from edge_ttt.artifacts import load_bundle
from edge_ttt.cli import app
from tests.agent_config_factory import BASE, problems, write
from tests.model_factory import windows
from tests.test_engine import bad_windows, states_equal
from tests.test_label_runs import windows_to_enter

# Alignment learns from every window at once; the batch-norm bundle still widens its offset floor.
INPUTS = AutoInputs(InputOptions(reliable_quantile=1.0, warmup_windows=0.0))
NEVER = RunOptions(enter=1.0, leave=1.0)  # no histogram has fewer than one effective class
# The switch that serves the source model alone, over a horizon the untrained model enters soon.
SWITCH = RunOptions(horizon=64.0, serve="source", instance_offsets=0.0)
FALLBACK = FallbackOptions(horizon=8, margin=0.0, recover=0.0, min_windows=2)


def one_activity(n: int, seed: int = 3) -> np.ndarray:
    """Windows offset on one channel (an offset to learn), which the untrained test model all
    puts in one class: one activity."""
    x = windows(n, seed=seed)
    x[:, 0] += 3.0
    return x


def engine(bundle_dir: Path, runs: RunOptions | None, **kwargs) -> Engine:
    return Engine(OrtModel(load_bundle(bundle_dir)), inputs=INPUTS, runs=runs, **kwargs)


def policy_state(e: Engine) -> dict:
    return {k: v for k, v in e.snapshot()[0].items() if "/" not in k}


def in_run(e: Engine) -> Engine:
    """Feed `e` one activity until it is in a run (the adapting policy serves two classes or so)."""
    for w in one_activity(400):
        e.process(w[None])
        if e.runs.in_run:
            return e
    raise AssertionError(
        f"no run after 400 windows of one activity ({e.runs.effective_classes():.2f} classes)"
    )


def test_one_served_class_enters_a_run_when_the_detector_says(bundle_dir: Path):
    e = engine(bundle_dir, SWITCH, policy="source")  # the untrained model: class 0 throughout
    classes = len(e.model.manifest.model.classes)
    expected = windows_to_enter(classes, e.runs.options.horizon, e.runs.options.enter)
    entered = [e.process(w[None]).on_source[0] or e.runs.in_run for w in one_activity(expected)]
    assert entered == [False] * (expected - 1) + [True]


def test_on_by_default_ahead_of_steady_only_and_a_detector_that_never_fires_changes_nothing(
    bundle_dir: Path,
):
    model = OrtModel(load_bundle(bundle_dir))
    assert Engine(model).runs.options == RunOptions() and Engine(model).follow is not None
    assert Engine(model, "tent").runs is None and Engine(model, "norm").runs is None
    assert Engine(model, "steady", {"episodic": True}).runs is None  # it forgets every batch
    plain, watched = engine(bundle_dir, None), engine(bundle_dir, NEVER)
    for seed in range(6):
        x = np.concatenate([windows(3, seed=seed), bad_windows()["nan"]])
        a, b = plain.process(x), watched.process(x)
        assert all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in vars(a))
    arrays = watched.snapshot()[0]
    assert states_equal(plain.snapshot()[0], {k: v for k, v in arrays.items() if not k.startswith("runs/")})
    assert plain.counters == watched.counters and watched.counters.windows_in_runs == 0


def test_in_a_run_the_source_model_serves_the_run_aligned_windows_and_the_policy_stands_still(
    bundle_dir: Path,
):
    e = in_run(engine(bundle_dir, SWITCH, fallback=FALLBACK))
    counters, policy, fallback = e.counters.as_dict(), policy_state(e), e.fallback.state()
    x = one_activity(4, seed=4)
    narrow = e.inputs.apply(x, e.runs.options.offset_floor)
    assert not np.allclose(narrow, e.inputs.apply(x))  # the run's floor undoes more of the offset
    e.model.serve(None, e.policy.source_vector)
    expected = e.model.forward(narrow, e.policy.source_stats).softmax[0]
    offset = e.inputs.offset.copy()
    out = e.process(x)
    np.testing.assert_allclose(out.probs, expected, rtol=1e-5, atol=1e-6)
    assert out.on_source.all() and np.array_equal(out.source_classes, out.classes)
    assert states_equal(policy_state(e), policy) and states_equal(e.fallback.state(), fallback)
    assert not np.array_equal(e.inputs.offset, offset)  # the alignment keeps learning
    assert e.counters.windows_in_runs == 4 and e.counters.windows == counters["windows"] + 4
    assert e.counters.adapt_steps == counters["adapt_steps"]


def test_a_blending_run_serves_the_mean_of_the_source_model_and_the_held_policy(bundle_dir: Path):
    e = in_run(engine(bundle_dir, RunOptions(horizon=64.0, instance_offsets=0.0)))
    policy = policy_state(e)
    x = one_activity(4, seed=4)
    narrow = e.inputs.apply(x, e.runs.options.offset_floor)
    held = e.policy.predict(narrow).softmax[0]
    e.model.serve(None, e.policy.source_vector)
    source = e.model.forward(narrow, e.policy.source_stats).softmax[0]
    predicted = e.predict(x)  # the same blend, learning nothing
    out = e.process(x)
    np.testing.assert_allclose(out.probs, (held + source) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predicted.probs, out.probs, rtol=1e-5, atol=1e-6)
    assert not np.allclose(held, source, atol=1e-3)  # a blend of two different views
    assert np.array_equal(out.source_classes, source.argmax(axis=1)) and not out.on_source.any()
    entropy = -(out.probs * np.log(out.probs)).sum(axis=1)
    np.testing.assert_allclose(out.entropy, entropy, rtol=1e-4)
    assert states_equal(policy_state(e), policy) and e.counters.windows_in_runs == len(x)


def test_a_blending_run_with_instance_offsets_has_both_models_follow_each_batch_offset(bundle_dir: Path):
    e = in_run(engine(bundle_dir, RunOptions(serve="blend", instance_offsets=4.0)))
    policy = policy_state(e)
    x = one_activity(4, seed=4)
    x[:, 1] += 2.0  # an offset the held statistics have not seen
    narrow = e.inputs.apply(x, e.runs.options.offset_floor)
    first = FirstNorm.of(e.model, e.policy.source_stats, 4.0)

    def followed(stats):
        moved = first.moved(stats, e.model.forward(narrow, stats), len(x))
        assert moved is not None  # the offset is beyond what sampling explains
        return e.model.forward(narrow, moved).softmax[0], e.model.forward(narrow, stats).softmax[0]

    held, held_still = followed(e.policy.stats())
    e.model.serve(None, e.policy.source_vector)
    source, source_still = followed(e.policy.source_stats)
    out = e.process(x)
    np.testing.assert_allclose(out.probs, (held + source) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out.probs, (held_still + source_still) / 2, atol=1e-3)
    assert np.array_equal(out.source_classes, source.argmax(axis=1))
    assert states_equal(policy_state(e), policy)


def test_steady_keeps_its_own_run_detector_over_64_windows_whatever_the_engines_default(bundle_dir: Path):
    """`steady`'s fading protections watch for runs with a detector of their own; the engine's
    label-run defaults moved to 128 windows, and with them, by accident, that detector (a full
    benchmark run caught the change: class-sorted `drift` 55.9 -> 52.2 without the engine's runs)."""
    e = Engine(OrtModel(load_bundle(bundle_dir)))
    assert e.runs.options.horizon == RunOptions().horizon == 128.0
    assert e.policy.runs.options.horizon == 64.0


def test_instance_offsets_in_a_run_follow_only_plain_policies_and_only_when_on(bundle_dir: Path):
    assert engine(bundle_dir, RunOptions(instance_offsets=0.0)).follow is None  # 0: off
    e = engine(bundle_dir, RunOptions(serve="blend", instance_offsets=4.0), policy="tent")
    x = one_activity(4, seed=4)
    assert e.follow is not None and not e.policy.plain  # tent normalizes with the batch's moments
    np.testing.assert_array_equal(e.policy.predict_following(x, e.follow).logits, e.policy.predict(x).logits)
    with pytest.raises(ValueError, match="instance_offsets must be >= 0"):
        RunOptions(instance_offsets=-1.0)


def test_who_serves_in_a_run_is_checked():
    with pytest.raises(ValueError, match="serve must be one of source, blend"):
        RunOptions(serve="policy")


def test_predict_in_a_run_serves_the_same_and_learns_nothing(bundle_dir: Path):
    e = in_run(engine(bundle_dir, SWITCH))
    x = np.concatenate([one_activity(2), bad_windows()["nan"]])
    before, counters = e.snapshot()[0], e.counters.as_dict()
    predicted = e.predict(x)
    assert states_equal(e.snapshot()[0], before) and e.counters.as_dict() == counters
    served = e.process(x)
    np.testing.assert_allclose(predicted.probs, served.probs, rtol=1e-6)
    assert predicted.valid.tolist() == [True, True, False] and e.counters.rejected_invalid == 1


def test_out_of_the_run_the_policy_adapts_again(bundle_dir: Path):
    e = in_run(engine(bundle_dir, SWITCH))
    policy = policy_state(e)
    e.runs.reset()  # the untrained test model never mixes classes: the detector's leaving is its own test
    out = e.process(windows(4, seed=99))
    assert not out.on_source.any() and not states_equal(policy_state(e), policy)


def test_the_detector_state_round_trips_and_an_older_state_starts_it_afresh(bundle_dir: Path):
    e = in_run(engine(bundle_dir, SWITCH))
    arrays, meta = e.snapshot()
    assert set(unprefixed("runs", arrays)) == {"share", "in_run"}
    restored = engine(bundle_dir, SWITCH)
    restored.restore_snapshot(arrays, meta)
    assert restored.runs.in_run and np.array_equal(restored.runs.share, e.runs.share)
    assert restored.counters.windows_in_runs == e.counters.windows_in_runs
    older = {k: v for k, v in arrays.items() if not k.startswith("runs/")}
    restored.restore_snapshot(older, meta)
    assert not restored.runs.in_run
    plain = engine(bundle_dir, None)  # an engine without the switch ignores the detector's arrays
    plain.restore_snapshot(arrays, meta)
    assert states_equal(policy_state(plain), policy_state(e))


def test_episodic_engines_refuse_label_runs(bundle_dir: Path):
    with pytest.raises(ValueError, match="label runs"):
        Engine(OrtModel(load_bundle(bundle_dir)), "tent", {"episodic": True}, runs=RunOptions())


def test_config_turns_the_switch_on_with_its_options_and_names_a_bad_pair(tmp_path: Path):
    auto = load_config(write(tmp_path, BASE), check_files=False)
    assert auto.model.runs.options() == AutoRuns(RunOptions())  # on ahead of the default policy
    off = load_config(write(tmp_path, BASE + "[model.runs]\nenabled = false\n"), check_files=False)
    assert off.model.runs.options() is None
    on = load_config(
        write(tmp_path, BASE + "[model.runs]\nenabled = true\nhorizon = 32\n"), check_files=False
    )
    assert on.model.runs.options() == RunOptions(horizon=32)
    message = problems(write(tmp_path, BASE + "[model.runs]\nenter = 5.0\nleave = 4.0\n"), check_files=False)
    assert "model.runs" in message and "leave" in message
    blend = load_config(
        write(tmp_path, BASE + '[model.runs]\nenabled = true\nserve = "blend"\n'), check_files=False
    )
    assert blend.model.runs.options() == RunOptions(serve="blend")
    message = problems(write(tmp_path, BASE + '[model.runs]\nserve = "policy"\n'), check_files=False)
    assert "model.runs.serve" in message and "blend" in message
    follow = load_config(
        write(tmp_path, BASE + "[model.runs]\nenabled = true\ninstance_offsets = 4.0\n"), check_files=False
    )
    assert follow.model.runs.options() == RunOptions(instance_offsets=4.0)
    message = problems(write(tmp_path, BASE + "[model.runs]\ninstance_offsets = -1\n"), check_files=False)
    assert "model.runs.instance_offsets" in message


def test_replay_with_label_runs_counts_the_windows_served_in_runs(bundle_dir: Path, synthetic_log_path: Path):
    def replay(*flags: str) -> dict:
        args = ("replay", "--artifacts", str(bundle_dir), "--log", str(synthetic_log_path), "--json", *flags)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.splitlines()[-1])

    short = ("--run-horizon", "16")  # the synthetic devices' streams are short
    plain, switched = replay("--no-label-runs"), replay(*short)
    assert plain["windows_in_runs"] == 0
    # The untrained test model puts nearly every window in one class: a run from early on.
    assert 0 < switched["windows_in_runs"] <= switched["windows"]
    assert (
        replay("--label-runs", *short)["windows_in_runs"] == switched["windows_in_runs"]
    )  # steady: on either way
    assert replay(*short, "--run-serve", "source")["windows_in_runs"] == switched["windows_in_runs"]
    # Over a longer horizon one class makes a run later (each device's engine starts afresh).
    longer = replay("--run-horizon", "32")
    assert longer["windows_in_runs"] < switched["windows_in_runs"]
    # on for every policy with --label-runs, for steady only without it
    assert replay("--policy", "norm", *short)["windows_in_runs"] == 0
    assert replay("--policy", "norm", "--label-runs", *short)["windows_in_runs"] > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--no-label-runs", "--run-serve", "blend"), "which --no-label-runs turns off"),
        (("--no-label-runs", "--run-horizon", "128"), "which --no-label-runs turns off"),
        (("--run-serve", "x"), "serve must be one of source, blend"),
    ],
)
def test_replay_refuses_a_run_serve_it_cannot_use(bundle_dir: Path, synthetic_log_path: Path, flags, message):
    args = ("replay", "--artifacts", str(bundle_dir), "--log", str(synthetic_log_path), *flags)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output


def test_config_refuses_label_runs_with_an_episodic_policy(tmp_path: Path):
    text = BASE + "[model.options]\nepisodic = true\n[model.runs]\nenabled = true\n"
    message = problems(write(tmp_path, text), check_files=False)
    assert "model.runs" in message and "episodic" in message
