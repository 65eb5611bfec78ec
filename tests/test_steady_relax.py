"""`steady`'s class protections (the class-balance weights and the class correction of its
statistics) hold in a label run and fade outside one when the input is far from source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies.steady import RUNS, Steady
from edge_ttt.adapt.statistics import ClassBalance, LayerMoments, fold_moments
from edge_ttt.artifacts import load_bundle
from edge_ttt.stream.window import windows_from_log
from tests.conftest import synthetic_log

NEVER = 1e9  # a relax_from no stream reaches: the protections always hold


@pytest.fixture(scope="module")
def model(bundle_dir: Path) -> OrtModel:
    return OrtModel(load_bundle(bundle_dir))


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    batch, _ = windows_from_log(synthetic_log(seed=3), 64, 32)
    return batch.x[:12]


def steady(model: OrtModel, relax_from: float, relax_to: float) -> Steady:
    return Steady(model, Counters(), Steady.Options(relax_from=relax_from, relax_to=relax_to))


def unprotected_fold(model: OrtModel, policy: Steady, x: np.ndarray) -> LayerMoments:
    """What `policy`'s statistics become after `x` with neither protection: the window's moments,
    under the statistics before it, folded in as one window with nothing taken off."""
    moments = LayerMoments(
        policy.source_stats, policy.options.stat_momentum, policy.options.stat_prior_windows
    )
    moments.load_state(policy.moments.state())
    moments.fold(model.forward(x, policy.stats()).moments, 1, None)
    return moments


def test_outside_a_run_past_the_gate_the_statistics_take_the_window_as_it_is(model, windows):
    relaxed, held = steady(model, 0.0, 0.0), steady(model, NEVER, NEVER)
    for x in windows[:3]:  # a few windows: the run detector starts from a uniform class mix
        expected = unprotected_fold(model, relaxed, x[None])
        assert not relaxed.runs.in_run
        relaxed.update(x[None])
        np.testing.assert_array_equal(relaxed.moments.ema.m1, expected.ema.m1)
        np.testing.assert_array_equal(relaxed.moments.ema.m2, expected.ema.m2)
        held.update(x[None])
    # with the protections held, the class correction moved the same windows' moments elsewhere
    assert relaxed.correction is not None
    assert not np.allclose(relaxed.moments.ema.m1, held.moments.ema.m1)


def test_in_a_run_the_protections_hold_however_far_the_input(model, windows):
    relaxed, held = steady(model, 0.0, 0.0), steady(model, NEVER, NEVER)
    for policy in (relaxed, held):  # a run of class 0 so far
        policy.runs.mix.share = np.eye(policy.classes)[0]
    for x in windows:
        relaxed.update(x[None] + 5.0)
        held.update(x[None] + 5.0)
        assert relaxed.runs.in_run == held.runs.in_run
    assert relaxed.gate.distance() > 1.0
    np.testing.assert_array_equal(relaxed.moments.ema.m1, held.moments.ema.m1)
    np.testing.assert_array_equal(relaxed.moments.ema.m2, held.moments.ema.m2)


def test_the_label_run_detector_is_saved_with_the_state(model, windows):
    policy = steady(model, 1.0, 2.0)
    for x in windows:
        policy.update(x[None])
    state = policy.state()
    assert {f"{RUNS}/share", f"{RUNS}/in_run"} <= set(state)
    restored = steady(model, 1.0, 2.0)
    restored.load_state(state)
    np.testing.assert_array_equal(restored.runs.share, policy.runs.share)
    assert restored.runs.in_run == policy.runs.in_run
    older = {k: v for k, v in state.items() if not k.startswith(f"{RUNS}/")}  # saved before it existed
    restored.load_state(older)
    np.testing.assert_array_equal(restored.runs.share, np.full(policy.classes, 1.0 / policy.classes))
    assert not restored.runs.in_run


def test_relax_to_below_relax_from_is_refused():
    with pytest.raises(ValueError, match=r"relax_to \(1\.0\) must be at least relax_from \(2\.0\)"):
        Steady.Options(relax_from=2.0, relax_to=1.0)


@pytest.mark.parametrize(("power", "windows"), [(1.0, 1.0 + 0.5), (0.0, 2.0), (0.5, 1.0 + np.sqrt(0.5))])
def test_the_balance_weights_count_to_a_power(power, windows):
    balance = ClassBalance(classes=2, momentum=0.5)
    balance.share = np.array([1.0, 0.0])  # class 0 dominates: its weight 1 / (2 * 1) = 0.5
    moments = LayerMoments({"bn": (np.zeros(1), np.ones(1))}, momentum=0.1)
    fold_moments(moments, {"bn": (np.ones(1), np.ones(1))}, np.array([0, 1]), balance, None, power)
    assert moments.ema.seen == pytest.approx(windows)
