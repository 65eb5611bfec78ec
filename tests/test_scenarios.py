"""Drift scenarios and the synthetic IMU: each fault does what docs/simulator.md says, chunked or not."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_ttt.manifest import RATE_TOLERANCE
from firmware_sim.devices import SimDevice
from firmware_sim.scenarios import BUILTINS, KINDS, Scenario, ScenarioError, Step, load_scenario
from firmware_sim.signals import ACTIVITIES, GRAVITY, IMU_CHANNELS, ImuSource

RATE = 50.0


def imu(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return ImuSource(RATE, seed, "dev").read(n), np.arange(n) / RATE


def apply(steps: tuple[Step, ...], values: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    return Scenario("test", (steps,)).for_device(0, "dev", IMU_CHANNELS).apply(values, t_s)


def step(kind: str, start_s: float = 0.0, **params) -> Step:
    return Step(kind, {**KINDS[kind], **params}, start_s)


def test_imu_model_has_gravity_at_rest_and_distinct_activities():
    source = ImuSource(RATE, seed=3, device="dev", segment_s=10.0)
    x = source.read(int(RATE * 10 * 40))
    segments = x.reshape(40, int(RATE * 10), 6)
    kinds = np.array([source.activity(s) for s in range(40)])
    assert set(kinds) == set(range(len(ACTIVITIES)))  # 40 segments visit every activity
    rest = segments[kinds == list(ACTIVITIES).index("rest")]
    assert np.allclose(np.linalg.norm(rest[..., :3], axis=-1).mean(), GRAVITY, atol=0.05)
    spread = [segments[kinds == k][..., :3].std(axis=1).mean() for k in range(len(ACTIVITIES))]
    assert len({round(s, 1) for s in spread}) == len(ACTIVITIES)  # each activity moves differently


def test_imu_source_does_not_depend_on_read_sizes():
    a, b = ImuSource(RATE, 1, "x"), ImuSource(RATE, 1, "x")
    whole = a.read(1234)
    parts = np.vstack([b.read(n) for n in (1, 499, 500, 234)])
    assert np.array_equal(whole, parts)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_gives_the_same_stream_whatever_the_chunking(name):
    values, t_s = imu(4000)
    whole = BUILTINS[name].for_device(5, "dev", IMU_CHANNELS).apply(values, t_s)
    drift = BUILTINS[name].for_device(5, "dev", IMU_CHANNELS)
    cuts = np.r_[0, np.sort(np.random.default_rng(0).choice(np.arange(1, 4000), 60, replace=False)), 4000]
    parts = np.vstack([drift.apply(values[a:b], t_s[a:b]) for a, b in itertools.pairwise(cuts)])
    assert np.array_equal(whole, parts, equal_nan=True)


def test_gain_scales_only_the_named_channels():
    values, t_s = imu(500)
    out = apply((step("gain", factor=1.5, channels=("ax", "wz")),), values, t_s)
    assert np.array_equal(out[:, [0, 5]], values[:, [0, 5]] * 1.5)
    assert np.array_equal(out[:, 1:5], values[:, 1:5])


def test_bias_ramp_grows_linearly_then_holds():
    values, t_s = imu(2000)
    out = apply((step("bias-ramp", start_s=10.0, offset=2.0, ramp_s=10.0),), values, t_s)
    added = out - values
    assert np.all(added[t_s < 10] == 0)
    assert np.allclose(added[t_s == 15.0], 1.0) and np.allclose(added[t_s >= 20], 2.0)


def test_noise_has_the_documented_std():
    values, t_s = imu(20000)
    added = apply((step("noise", std=0.3),), values, t_s) - values
    assert added.std() == pytest.approx(0.3, rel=0.03)


def test_rotation_preserves_vector_norms_and_turns_them():
    values, t_s = imu(1000)
    out = apply((step("rotation", degrees=40.0, axis=[0.0, 1.0, 1.0]),), values, t_s)
    for group in (slice(0, 3), slice(3, 6)):
        assert np.allclose(np.linalg.norm(out[:, group], axis=1), np.linalg.norm(values[:, group], axis=1))
    cos = np.sum(out[:, :3] * values[:, :3], axis=1) / np.linalg.norm(values[:, :3], axis=1) ** 2
    assert np.median(cos) < np.cos(np.deg2rad(10))  # most samples turned, though not those on the axis


def test_clipping_saturates_at_the_limit():
    values, t_s = imu(3000)
    out = apply((step("clipping", limit=10.0),), values, t_s)
    assert np.abs(out).max() == 10.0 and (np.abs(values) > 10).any()
    inside = np.abs(values) <= 10
    assert np.array_equal(out[inside], values[inside])


def test_dropout_holds_the_last_value_at_the_documented_rate():
    values, t_s = imu(50000)
    out = apply((step("dropout", rate=0.3),), values, t_s)
    held = np.all(out == np.vstack([out[:1], out[:-1]]), axis=1) & np.any(out != values, axis=1)
    assert held.mean() == pytest.approx(0.3, abs=0.03)


def test_dead_channel_is_constant_and_the_others_untouched():
    values, t_s = imu(1000)
    out = apply((step("dead-channel", start_s=5.0, channel="ay", value=0.0),), values, t_s)
    assert np.all(out[t_s >= 5, 1] == 0.0) and np.all(out[t_s < 5, 1] == values[t_s < 5, 1])
    assert np.array_equal(np.delete(out, 1, axis=1), np.delete(values, 1, axis=1))


def test_nan_bursts_come_at_the_documented_rate_and_burst_length():
    values, t_s = imu(100000)
    out = apply((step("nan-bursts", rate=0.02, burst=4.0, channels=("wx", "wy")),), values, t_s)
    nan = np.isnan(out)
    assert not nan[:, [0, 1, 2, 5]].any() and np.array_equal(nan[:, 3], nan[:, 4])
    assert nan[:, 3].mean() == pytest.approx(0.02, rel=0.15)
    starts = np.flatnonzero(np.diff(nan[:, 3].astype(int)) == 1)
    assert nan[:, 3].sum() / len(starts) == pytest.approx(4.0, rel=0.15)


def test_abrupt_change_happens_exactly_at_its_time():
    values, t_s = imu(2000)
    out = BUILTINS["abrupt"].for_device(0, "dev", IMU_CHANNELS).apply(values, t_s)
    at = int(20.0 * RATE)
    assert np.array_equal(out[:at], values[:at])
    assert np.all(np.any(out[at:] != values[at:], axis=1))


def test_jitter_keeps_seqs_contiguous_and_perturbs_periods_within_bounds():
    drift = load_scenario("jitter").for_device(0, "dev", IMU_CHANNELS)
    device = SimDevice("dev", ImuSource(RATE), drift, RATE, 10, t0_ns=1_700_000_000_000_000_000)
    frames = [device.next_frame() for _ in range(300)]
    periods = np.array([f.period_ns for f in frames])
    assert [f.seq for f in frames] == list(range(300))
    assert np.all(np.abs(periods - 20_000_000) <= 0.005 * 20_000_000) and len(set(periods)) > 250
    assert np.all(np.abs(periods - 20_000_000) <= RATE_TOLERANCE * 20_000_000)  # the agent takes them all
    t0 = np.array([f.t0_ns for f in frames])
    assert np.array_equal(np.diff(t0), 10 * periods[:-1])  # each frame starts where the last one ended


def test_mixed_fleet_cycles_through_the_kinds():
    assert BUILTINS["mixed"].for_device(0, "a", IMU_CHANNELS).steps == ()
    assert [BUILTINS["mixed"].for_device(i, "a", IMU_CHANNELS).steps[0].kind for i in (1, 2)] == list(KINDS)[
        :2
    ]


def test_toml_scenario_loads_steps_in_order(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'description = "d"\n[[step]]\nkind = "gain"\nfactor = 2\nchannels = ["az"]\n'
        '[[step]]\nkind = "noise"\nstd = 0.1\nstart_s = 5\n'
    )
    scenario = load_scenario(str(path))
    assert [s.kind for s in scenario.variants[0]] == ["gain", "noise"]
    assert scenario.variants[0][0].params["factor"] == 2.0 and scenario.variants[0][1].start_s == 5.0


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[step]]\nkind = "gain"\nfactr = 2\n', "'factr'"),
        ('severity = 3\n[[step]]\nkind = "gain"\n', "'severity'"),
        ('[[step]]\nkind = "gainz"\n', "'kind'"),
        ('[[step]]\nkind = "noise"\nstd = "high"\n', "'std'"),
        ('[[step]]\nkind = "jitter"\nmax = 0.9\n', "'max'"),
        ('[[step]]\nkind = "gain"\nstart_s = -1\n', "'start_s'"),
    ],
)
def test_toml_errors_name_the_key(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=named):
        load_scenario(str(path))


def test_unknown_channel_and_unknown_scenario_are_refused():
    with pytest.raises(ScenarioError, match="'q'"):
        Scenario("x", ((step("gain", channels=("q",)),),)).for_device(0, "d", IMU_CHANNELS)
    with pytest.raises(ScenarioError, match="built-in"):
        load_scenario("no-such-scenario")
