"""The mounting search: every quarter turn, and two sensors' streams exchanged, are found and undone
from gravity alone, and shifts that neither explains, or one unusual activity, change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ttt.adapt.channel_references import class_references
from edge_ttt.adapt.input_alignment import InputAlignment, InputOptions
from edge_ttt.adapt.mounting import TURNS, Mounting, MountOptions, posture_reference
from firmware_sim.deployment_shifts import MOUNTINGS

GROUPS = [(0, 1, 2), (3, 4, 5)]
LENGTH = 32


# No quarter turn maps these four directions onto themselves (the next best fits at 0.22,
# squared): gravity tells every turn.
DIRECTIONS = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [0.6, 0.0, -0.8], [-0.48, 0.6, 0.64]])


def stream(
    n: int, seed: int = 0, devices: int = 4, directions: np.ndarray = DIRECTIONS, tilt: float = 0.08
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of a wrist-worn device: per (device, class) a posture of the accelerometer
    (gravity, 1 g, in one of 4 directions by class, tilted per device by about `tilt`), motion on
    top of it, and a zero-mean gyroscope. Returns (windows, labels, devices)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(directions), n)
    owners = rng.integers(0, devices, n)
    tilts = rng.normal(0.0, tilt, (devices, 3))
    gravity = directions[labels] + tilts[owners]
    x = rng.normal(0.0, 0.3, (n, 6, LENGTH))
    x[:, :3] += gravity[:, :, None]
    return x, labels, owners


QUICK = MountOptions(min_windows=50)


def mounting_for(x, labels, owners, options=QUICK) -> Mounting:
    ref = posture_reference(x, labels, owners, GROUPS)
    assert ref is not None
    return Mounting(
        options, np.array(ref["postures"]), ref["classes"], ref["posture_level"], tuple(ref["triad"]), GROUPS
    )


def turn(x: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    out = x.copy()
    for g in GROUPS:
        out[:, list(g)] = np.einsum("ij,njl->nil", rotation, x[:, list(g)])
    return out


def test_the_24_turns_are_distinct_proper_rotations():
    assert len({t.tobytes() for t in TURNS}) == 24
    for t in TURNS:
        assert np.allclose(t @ t.T, np.eye(3)) and np.isclose(np.linalg.det(t), 1.0)


def test_posture_reference_finds_the_gravity_triad_and_a_level():
    x, labels, owners = stream(800)
    ref = posture_reference(x, labels, owners, [(3, 4, 5), (0, 1, 2)])
    assert ref["triad"] == [0, 1, 2]
    assert len(ref["postures"]) == 16 and 0 < ref["posture_level"] < 0.2
    assert posture_reference(x, labels, np.zeros(len(x)), GROUPS) is None  # one device: no level
    assert posture_reference(x, labels, owners, []) is None  # no triads


@pytest.mark.parametrize("name", list(MOUNTINGS))
def test_every_mounting_of_the_shift_suite_is_found_and_undone(name: str):
    source = stream(800, seed=1)
    mounting = mounting_for(*source)
    target, _, _ = stream(400, seed=2)
    mounted = turn(target, MOUNTINGS[name])
    for i in range(0, len(mounted), 4):
        mounting.update(mounted[i : i + 4])
    assert mounting.switches == 1
    assert np.allclose(mounting.apply(mounted), target)


@pytest.mark.parametrize(
    "shift",
    [
        lambda x: x,  # another subject, as mounted
        lambda x: x + np.array([0.5, -0.5, 0.5, 0, 0, 0])[None, :, None],  # a bias on the accelerometer
        lambda x: x * 1.8,  # a gain
        lambda x: turn(x, np.array([[1, 0, 0], [0, 0.77, -0.64], [0, 0.64, 0.77]])),  # 40° about x
    ],
    ids=["clean", "bias", "gain", "rotation-40"],
)
def test_shifts_no_quarter_turn_explains_change_nothing(shift):
    mounting = mounting_for(*stream(800, seed=1))
    target = shift(stream(600, seed=3)[0])
    for i in range(len(target)):
        mounting.update(target[i : i + 1])
    assert mounting.switches == 0 and mounting.apply(target) is target


def swapped(x: np.ndarray) -> np.ndarray:
    """The two sensors' streams exchanged: the gyroscope's values where the accelerometer's go."""
    out = x.copy()
    out[:, :3], out[:, 3:] = x[:, 3:], x[:, :3]
    return out


@pytest.mark.parametrize("mounted", [None, "180° x (upside down)"])
def test_exchanged_sensors_are_found_and_exchanged_back_turned_or_not(mounted):
    mounting = mounting_for(*stream(800, seed=1))
    target = stream(400, seed=2)[0]
    seen = swapped(target if mounted is None else turn(target, MOUNTINGS[mounted]))
    for i in range(0, len(seen), 4):
        mounting.update(seen[i : i + 4])
    assert mounting.switches == 1 and mounting.turn // len(TURNS) == 1
    assert np.allclose(mounting.apply(seen), target)


@pytest.mark.parametrize(
    "shift",
    [
        lambda x: np.concatenate([x[:, :3] * 9.81, x[:, 3:]], axis=1),
        lambda x: np.concatenate([x[:, :3] + 1.0, x[:, 3:]], axis=1),
        lambda x: np.concatenate([x[:, :3] * 0.3, x[:, 3:] * 0.3], axis=1),
        lambda x: np.concatenate([x[:, :3], x[:, 3:] + 0.6], axis=1),  # gyroscope at about 1 g
        lambda x: x * 1.8,
    ],
    ids=["m/s2", "offset 1 g", "attenuated x0.3", "gyroscope offset", "gain x1.8"],
)
def test_shifts_of_the_sensors_do_not_exchange_the_triads(shift):
    """Units, an offset, attenuation or a gain take the accelerometer off the postures, and no other
    triad lands on them; a gyroscope offset of 1 g's length does not either."""
    mounting = mounting_for(*stream(800, seed=1))
    x = shift(stream(600, seed=3)[0])
    for i in range(len(x)):
        mounting.update(x[i : i + 1])
    assert mounting.switches == 0


def test_a_state_saved_with_24_candidates_keeps_its_turn_and_scores_afresh():
    mounting = mounting_for(*stream(800, seed=1))
    old = {"score": np.ones(24), "mix": np.ones((24, 4)), "windows": np.asarray(500), "turn": np.asarray(5)}
    mounting.load_state({**old, "switches": np.asarray(1)})
    assert mounting.turn == 5 and mounting.switches == 1 and mounting.windows == 0
    assert mounting.score.shape == (48,) and not mounting.score.any()
    target = stream(8, seed=2)[0]
    assert np.allclose(mounting.apply(target), turn(target, TURNS[5]))


def test_a_long_run_of_one_unusual_activity_is_not_enough():
    """Half the stream in a posture that no source class has, but that a quarter turn of class
    3's posture nearly is: one class's postures are not enough to turn on."""
    mounting = mounting_for(*stream(800, seed=1), options=MountOptions())
    x, _, _ = stream(300, seed=4)
    x[:150, :3] = (
        x[:150, :3] - x[:150, :3].mean(axis=2, keepdims=True) + np.array([0.0, -0.7, 0.7])[None, :, None]
    )
    for i in range(len(x)):
        mounting.update(x[i : i + 1])
    assert mounting.switches == 0


def test_input_alignment_turns_first_restarts_its_gain_estimates_and_keeps_the_turn_in_state():
    source = stream(800, seed=1)
    mounting = mounting_for(*source)
    refs = class_references(source[0], source[1], 4)
    stage = InputAlignment(InputOptions(reliable_quantile=1.0), refs, np.ones(6), mounting=mounting)
    target = turn(stream(400, seed=2)[0], MOUNTINGS["180° x (upside down)"])
    probs = np.full((1, 4), 0.25)
    for i in range(len(target)):
        stage.update(target[i : i + 1], probs, np.zeros(1))
    assert mounting.switches == 1
    assert stage.windows < len(target)  # the estimates restarted at the turn
    saved = stage.state()
    assert int(saved["mount/turn"]) == mounting.turn != 0
    fresh = InputAlignment(
        InputOptions(reliable_quantile=1.0), refs, np.ones(6), mounting=mounting_for(*source)
    )
    fresh.load_state(saved)
    assert np.array_equal(fresh.apply(target), stage.apply(target))


def test_two_turns_that_fit_alike_are_not_told_apart():
    """Postures that a quarter turn maps onto themselves (180 degrees about y-z maps the first
    two onto each other and the last two): the true turn and that one times it fit alike, and
    gravity cannot choose; `distinct` 1.0 turns to whichever is ahead by a hair."""
    symmetric = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [0.6, 0.0, -0.8], [-0.6, 0.8, 0.0]])
    source = stream(800, seed=1, directions=symmetric)
    mounted = turn(stream(400, seed=2, directions=symmetric)[0], MOUNTINGS["180° x (upside down)"])
    careful = mounting_for(*source)
    eager = mounting_for(*source, options=MountOptions(min_windows=50, distinct=1.0))
    for i in range(0, len(mounted), 4):
        careful.update(mounted[i : i + 4])
        eager.update(mounted[i : i + 4])
    assert careful.switches == 0 and eager.switches > 0


def test_a_turn_contradicted_later_is_undone():
    """Upside down for 200 windows (found), then worn as at the factory again: the turn no longer
    fits and the device as mounted fits better, so the turn goes. (A wearer close to the source
    postures, so that 200 windows are enough to find the turn.)"""
    mounting = mounting_for(*stream(800, seed=1))
    upside_down = turn(stream(200, seed=2, tilt=0.04)[0], MOUNTINGS["180° x (upside down)"])
    righted = stream(600, seed=3, tilt=0.04)[0]
    for i in range(0, len(upside_down), 4):
        mounting.update(upside_down[i : i + 4])
    assert mounting.switches == 1 and mounting.turn != 0
    for i in range(0, len(righted), 4):
        mounting.update(righted[i : i + 4])
    assert mounting.switches == 2 and mounting.turn == 0
    assert mounting.apply(righted) is righted


def test_one_activity_is_not_enough_to_undo_a_turn():
    """Upside down (found), then righted but in one activity for 200 windows: another turn fits
    far better, but on the postures of under 2 classes, so the turn stays; once the righted
    device shows its other activities, the turn goes."""
    mounting = mounting_for(*stream(800, seed=1))
    upside_down = turn(stream(200, seed=2, tilt=0.04)[0], MOUNTINGS["180° x (upside down)"])
    righted, labels, _ = stream(900, seed=3, tilt=0.04)
    one_activity = righted[labels == 3][:200]
    for i in range(0, len(upside_down), 4):
        mounting.update(upside_down[i : i + 4])
    found = mounting.turn
    for i in range(0, len(one_activity), 4):
        mounting.update(one_activity[i : i + 4])
    assert found != 0 and mounting.turn == found and mounting.switches == 1
    for i in range(0, len(righted), 4):
        mounting.update(righted[i : i + 4])
    assert mounting.turn == 0 and mounting.switches == 2


def test_non_finite_windows_do_not_move_the_scores():
    mounting = mounting_for(*stream(800, seed=1))
    x = stream(1, seed=5)[0]
    x[0, 1, 3] = np.nan
    mounting.update(x)
    assert mounting.windows == 0 and not mounting.score.any()


def test_options_refuse_values_out_of_range():
    with pytest.raises(ValueError, match="mounting needs"):
        MountOptions(ratio=1.0)
    with pytest.raises(ValueError, match="min_classes"):
        MountOptions(min_classes=0.5)
    with pytest.raises(ValueError, match="distinct"):
        MountOptions(distinct=0.9)
    with pytest.raises(ValueError, match="undo_classes"):
        MountOptions(undo_classes=0.5)


def test_a_block_of_windows_scores_as_the_same_windows_one_by_one():
    """`update` folds a call's windows in one step, with the weights folding them in turn gives;
    a NaN window counts in neither."""
    x, labels, owners = stream(400, seed=3)
    upside_down = turn(stream(40, seed=4)[0], TURNS[5])
    upside_down[7, 1, 3] = np.nan
    one_by_one, in_blocks = mounting_for(x, labels, owners), mounting_for(x, labels, owners)
    for i in range(len(upside_down)):
        one_by_one.update(upside_down[i : i + 1])
    for start in range(0, len(upside_down), 16):
        in_blocks.update(upside_down[start : start + 16])
    assert in_blocks.windows == one_by_one.windows == 39
    assert np.allclose(in_blocks.score, one_by_one.score, rtol=1e-12)
    assert np.allclose(in_blocks.mix, one_by_one.mix, rtol=1e-12)


def test_the_orientation_found_is_said_in_words():
    mounting = mounting_for(*stream(800, seed=1))
    assert mounting.describe() == "as mounted"
    mounting.turn = int(
        np.flatnonzero([np.array_equal(t, MOUNTINGS["180° x (upside down)"]) for t in TURNS])[0]
    )
    assert mounting.describe() == "turned 180° about x"
    mounting.turn += len(TURNS)
    assert mounting.describe() == "sensors exchanged, turned 180° about x"
    mounting.turn = len(TURNS)
    assert mounting.describe() == "sensors exchanged"


def test_the_engine_reports_the_mounting_to_its_drift_summaries(bundle_dir):
    from edge_ttt.adapt.engine import Engine
    from edge_ttt.adapt.ort_model import OrtModel
    from edge_ttt.artifacts import load_bundle

    model = OrtModel(load_bundle(bundle_dir))
    assert Engine(model, "steady", inputs=InputOptions()).report().adaptation["mounting"] == "as mounted"
    assert Engine(model, "steady", inputs=None).report().adaptation["mounting"] is None  # no search
