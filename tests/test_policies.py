"""The policy contract: an explicit registry, options as dataclasses, `reset`, a `state` that holds
everything `update` changes, the model's owner switch and the engine's report as a value."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
from pydantic import Strict
from pydantic.fields import FieldInfo

from edge_ttt.adapt.engine import POLICIES, Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import POLICY_TYPES, Policy
from edge_ttt.adapt.policies.steady import NEVER_ROLLED_BACK
from edge_ttt.adapt.snapshot import load_state, save_state
from edge_ttt.agent.policy_options import policy_options
from edge_ttt.artifacts import load_bundle
from edge_ttt.drift.summary import Adaptation
from tests.model_factory import windows
from tests.test_engine import AGGRESSIVE_STEADY, states_equal

GRADIENT_POLICIES = [p for p in POLICIES if POLICY_TYPES[p].loss is not None]


@pytest.fixture
def bundle_of(confident_bundle_dir: Path, aux_bundle_dir: Path):
    """The bundle each policy steps on: the confident cnn-bn (SAR's filter passes some windows),
    the auxiliary one for ttt."""
    return lambda policy: aux_bundle_dir if POLICY_TYPES[policy].loss == "auxiliary" else confident_bundle_dir


def make(path: Path, policy: str, model: OrtModel | None = None) -> Engine:
    """An engine that always serves the policy (no fallback, no input alignment ahead of it):
    these tests are about the policy."""
    options = AGGRESSIVE_STEADY if policy == "steady" else None
    return Engine(model or OrtModel(load_bundle(path)), policy, options, fallback=None, inputs=None)


def stream(seed: int, n: int = 1, policy: str = "") -> np.ndarray:
    """Windows from one repeated activity with a little noise: drives entropy steps to collapse.
    For sar, batches of varied windows, some of which pass its entropy filter."""
    if policy == "sar":
        return windows(16, seed=seed)
    x = windows(1, seed=11) * 1.5
    noise = np.random.default_rng(seed).normal(0, 0.01, (n, *x.shape[1:]))
    return (x + noise).astype(np.float32)


def test_the_registry_lists_every_policy_once_in_its_own_module():
    assert list(POLICY_TYPES) == [
        *("source", "norm", "tent", "sar", "note", "unmix-tns", "rotta", "steady", "ttt")
    ]
    for name, policy in POLICY_TYPES.items():
        module = name.replace("-", "_")  # a hyphenated name lives in a module it can be imported as
        assert policy.name == name and policy.__module__ == f"edge_ttt.adapt.policies.{module}"


@pytest.mark.parametrize("policy", POLICIES)
def test_the_config_schema_is_the_options_dataclass(policy: str):
    options = POLICY_TYPES[policy].Options
    assert dataclasses.is_dataclass(options) and options.__dataclass_params__.frozen
    schema = policy_options(policy).model_fields
    hints = get_type_hints(options, include_extras=True)
    for field in dataclasses.fields(options):
        typed = FieldInfo.from_annotation(hints[field.name])  # the type, and the range it carries
        assert schema[field.name].annotation == typed.annotation
        # The same ranges; a tuple option also takes a TOML array (lax for the container only).
        lax = [m for m in schema[field.name].metadata if m == Strict(False)]
        assert [m for m in schema[field.name].metadata if m != Strict(False)] == typed.metadata
        assert bool(lax) == ((policy, field.name) == ("note", "lengths"))
        assert schema[field.name].default == field.default
    episodic = {"episodic"} if POLICY_TYPES[policy].loss is not None else set()
    assert set(schema) == {f.name for f in dataclasses.fields(options)} | episodic


@pytest.mark.parametrize("policy", sorted(POLICY_TYPES))
def test_every_option_range_is_checked_without_a_configuration(policy: str):
    """The API path (Engine(options=...)) refuses what the configuration refuses, from the same
    ranges: each ranged field past each of its bounds, and NaN."""
    from edge_ttt.ranges import hint_bounds

    options = POLICY_TYPES[policy].Options
    hints = get_type_hints(options, include_extras=True)
    for field in dataclasses.fields(options):
        bounds = hint_bounds(hints[field.name])
        for bad in [
            *(v - 1 for k, v in bounds.items() if k in ("gt", "ge")),
            *(v + 1 for k, v in bounds.items() if k in ("lt", "le")),
            *([float("nan")] if bounds else []),
        ]:
            with pytest.raises(ValueError, match=rf"^{field.name} must be "):
                options(**{field.name: bad})


def test_option_values_are_checked_by_the_options_themselves():
    with pytest.raises(ValueError, match=r"snapshot_every \(12\) must be a multiple of watch_every \(8\)"):
        POLICY_TYPES["steady"].Options(snapshot_every=12)
    with pytest.raises(ValueError, match="stats must be 'balanced', 'ema' or 'source', got 'batch'"):
        POLICY_TYPES["ttt"].Options(stats="batch")


@pytest.mark.parametrize("policy", POLICIES)
def test_reset_returns_to_a_fresh_twin(bundle_of, policy: str):
    path = bundle_of(policy)
    used, fresh = make(path, policy), make(path, policy)
    for seed in range(24):
        used.process(stream(seed, 2))
    used.policy.reset()
    assert states_equal(used.policy.state(), fresh.policy.state())
    for seed in range(24, 30):
        x = stream(seed, 2)
        np.testing.assert_array_equal(used.process(x).probs, fresh.process(x).probs)
    assert states_equal(used.policy.state(), fresh.policy.state())


@pytest.mark.parametrize("episode", ["episode", "update"])
@pytest.mark.parametrize("policy", GRADIENT_POLICIES)
def test_an_episode_leaves_no_trace(bundle_of, policy: str, episode: str):
    """After `policy.episode(x)` (or any `update` inside `restoring()`) the state is array for
    array the twin's that never saw x, and so is every later prediction, rollbacks included."""
    path = bundle_of(policy)
    a, twin = make(path, policy), make(path, policy)
    for seed in range(21):  # steady: snapshots taken and a detector view, mid-interval
        x = stream(seed, 1, policy)
        np.testing.assert_array_equal(a.process(x).probs, twin.process(x).probs)
    before = a.policy.state()
    steps = a.counters.adapt_steps
    x = stream(99, 3, policy) * 2
    if episode == "episode":
        a.policy.episode(x)
    else:
        with a.policy.restoring():
            a.policy.update(x)
    assert a.counters.adapt_steps > steps  # it did adapt
    assert states_equal(a.policy.state(), before) and states_equal(a.policy.state(), twin.policy.state())
    for seed in range(21, 80):
        x = stream(seed, 1, policy)
        np.testing.assert_array_equal(a.process(x).probs, twin.process(x).probs)
    assert states_equal(a.policy.state(), twin.policy.state())
    if policy == "sar":
        assert twin.counters.adapt_steps > 0
    if policy == "steady":  # the guard was part of what had to be restored
        assert twin.counters.rollbacks + twin.counters.resets > 0


def test_a_steady_state_without_the_guard_restores_with_a_fresh_guard(
    confident_bundle_dir: Path, tmp_path: Path
):
    a = make(confident_bundle_dir, "steady")
    for seed in range(11):
        a.process(stream(seed))
    assert a.policy.snapshots and len(a.policy.detector.state()["classes"])
    a.save_state(tmp_path / "full.npz")
    arrays, meta = load_state(tmp_path / "full.npz")
    guard = ("detector/", "snapshot0/", "snapshot1/", "last_rollback")
    adapted = {k: v for k, v in arrays.items() if not k.startswith(guard)}
    assert len(adapted) < len(arrays)
    save_state(tmp_path / "adapted.npz", adapted, meta)
    b = make(confident_bundle_dir, "steady")
    b.load_state(tmp_path / "adapted.npz")
    state = b.policy.state()
    engine_parts = ("input/", "runs/")  # the engine's alignment and label-run detector
    policy_part = {k: v for k, v in adapted.items() if not k.startswith(engine_parts)}
    assert states_equal({k: v for k, v in state.items() if not k.startswith(guard)}, policy_part)
    assert not b.policy.snapshots and b.policy.last_rollback == NEVER_ROLLED_BACK
    assert all(len(v) == 0 for v in b.policy.detector.state().values())
    x = stream(50)
    np.testing.assert_array_equal(b.process(x).probs, a.process(x).probs)  # same adapted arrays


def test_the_model_is_written_only_when_its_owner_changes(bundle_dir: Path):
    shared = OrtModel(load_bundle(bundle_dir))
    writes = []
    inner = shared.write_parameters
    shared.write_parameters = lambda v, owner=None: (writes.append(owner), inner(v, owner))[1]
    a, b = Engine(shared, "source"), Engine(shared, "source")
    assert writes == []  # `source` never writes parameters of its own
    a.process(windows(1))
    a.process(windows(1))
    assert writes == [a.policy]
    b.process(windows(1))
    b.process(windows(1))
    a.process(windows(1))
    assert writes == [a.policy, b.policy, a.policy]


def test_building_or_restoring_an_engine_does_not_disturb_the_one_served(bundle_dir: Path, tmp_path: Path):
    """A policy writes its parameters when built or restored; the engine served before must not
    then predict with them."""
    shared = OrtModel(load_bundle(bundle_dir))
    a, alone = make(bundle_dir, "steady", shared), make(bundle_dir, "steady")
    for seed in range(6):
        np.testing.assert_array_equal(a.process(stream(seed)).probs, alone.process(stream(seed)).probs)
    other = make(bundle_dir, "sar")
    other.process(windows(4) * 3)
    other.save_state(tmp_path / "sar.npz")
    make(bundle_dir, "sar", shared).load_state(tmp_path / "sar.npz")
    for seed in range(6, 9):
        np.testing.assert_array_equal(a.process(stream(seed)).probs, alone.process(stream(seed)).probs)


def test_an_engine_built_after_another_adapted_on_the_shared_model_starts_from_source(bundle_dir: Path):
    """The agent makes a device's engine when its first frame comes, on the model the other
    devices' engines already adapt: the new policy's source is the bundle's, not what the model
    holds for the engine served last; and it predicts as on a model of its own."""
    shared = OrtModel(load_bundle(bundle_dir))
    first = Engine(shared, "steady", AGGRESSIVE_STEADY)
    for seed in range(4):
        first.process(windows(4, seed) * 3)
    assert not np.array_equal(first.policy.param_vector, first.policy.source_vector)  # it adapted
    for policy in ("steady", "source"):
        late, alone = Engine(shared, policy), Engine(OrtModel(load_bundle(bundle_dir)), policy)
        np.testing.assert_array_equal(late.policy.source_vector, alone.policy.source_vector)
        for seed in range(4, 7):
            np.testing.assert_array_equal(late.process(stream(seed)).probs, alone.process(stream(seed)).probs)


def test_the_report_is_a_frozen_value_with_the_fields_of_a_summary(bundle_dir: Path):
    e = make(bundle_dir, "norm")
    e.process(windows(2) * 2 + 1)
    report = e.report()
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.counters = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        report.counters["windows"] = 0  # type: ignore[index]
    assert set(report.adaptation) == {f.name for f in dataclasses.fields(Adaptation)}
    level = dict(report.adaptation)
    e.process(windows(2, seed=1) * 2 + 1)
    assert report.counters["windows"] == 2 and dict(report.adaptation) == level  # not a view


def test_only_policies_with_statistics_of_their_own_report_them():
    own = {name for name, p in POLICY_TYPES.items() if p.keeps_stats}
    assert own == {"norm", "note", "unmix-tns", "rotta", "steady", "ttt"}
    assert all(POLICY_TYPES[p].stats is not Policy.stats for p in own)
