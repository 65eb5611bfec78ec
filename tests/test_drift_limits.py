"""In-distribution PSI limits: calibrated on held-out source devices at export, shipped in every
summary at its interval size, and used by the psi alert instead of sampling theory alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic import ValidationError

from edge_ttt.drift.calibration import drift_limits, held_out_psi, limit_at, window_counts
from edge_ttt.drift.merge import merge_summaries
from edge_ttt.drift.reference import Reference
from edge_ttt.drift.schema import from_table, to_table
from edge_ttt.drift.summary import DriftSummary, SummaryCollector
from edge_ttt.manifest import DriftLimits
from edge_ttt.manifest import Reference as ManifestReference
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import evaluate
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.intervals import Intervals, psi_limit
from tests.test_drift_stats import reference
from tests.test_monitor_collector import T0

STEP = 300.0
RULES = AlertsSection(psi_intervals=3, psi_min_windows=8)
EDGES = np.array(reference().edges[0])


def wearers(devices: int, windows: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`devices` wearers of one distribution: each its own offset (sd `spread`) on both channels,
    and windows whose 16 samples move together (one draw per window and channel, slow signals)."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, spread, (devices, 1, 2, 1))
    x = np.repeat(rng.standard_normal((devices, windows, 2, 1)), 16, axis=3) + offsets
    return x.reshape(devices * windows, 2, 16), np.repeat([f"d{i}" for i in range(devices)], windows)


def test_limits_grow_with_the_spread_between_devices_and_shrink_with_the_interval():
    x, devices = wearers(10, 120, spread=0.0)
    alike = drift_limits(x, devices, [EDGES, EDGES])
    x, devices = wearers(10, 120, spread=0.5)
    apart = drift_limits(x, devices, [EDGES, EDGES])
    assert alike["windows"] == apart["windows"] == [1, 2, 4, 8, 16, 32, 64]  # 128: too few intervals
    assert alike["devices"] == 10 and alike["quantile"] == 0.99
    a, b = np.array(alike["psi"]), np.array(apart["psi"])
    assert np.all(np.diff(a, axis=0) <= 0) and np.all(np.diff(b, axis=0) <= 0)
    assert np.all(b[-1] > 1.5 * a[-1])  # wearers apart: the limit keeps their difference
    assert held_out_psi(window_counts(x, [EDGES])[0], np.zeros(len(x)), 4).size == 0  # one device
    assert drift_limits(x[:50], np.zeros(50), [EDGES, EDGES]) is None


def test_a_new_wearer_stays_under_the_limit_where_sampling_theory_calls_it_drifted():
    """Ten source wearers apart by 0.5 sd; an eleventh like them and one shifted by 2 sd, in
    intervals of 40 windows: the calibrated limit passes the one and flags the other, while the
    chi-square limit at 40 windows flags both."""
    x, devices = wearers(10, 120, spread=0.5)
    limits = drift_limits(x, devices, [EDGES, EDGES])
    ref = dataclasses.replace(
        reference(), limit_windows=tuple(limits["windows"]), limit_psi=tuple(map(tuple, limits["psi"]))
    )
    rng = np.random.default_rng(5)
    new = np.repeat(rng.standard_normal((40, 2, 1)), 16, axis=2) + 0.5  # one sd of the spread
    shifted = new + 1.5
    chi2 = psi_limit(16, 40, RULES)
    for data, drifted in ((new, False), (shifted, True)):
        s = _summary(ref, "d", data, T0)
        assert s.windows == 40
        assert (s.psi() > s.psi_limit()).any() == drifted
        assert (s.psi() > chi2).any()  # sampling theory alone: drift either way


def test_limit_at_interpolates_in_log_size_and_holds_beyond_the_grid():
    grid, table = (2, 8, 32), ((4.0, 2.0), (2.0, 1.0), (1.0, 0.5))
    assert limit_at(4, grid, table).tolist() == pytest.approx([3.0, 1.5])
    assert limit_at(1, grid, table).tolist() == [4.0, 2.0]  # an interval smaller than the grid
    assert limit_at(1000, grid, table).tolist() == [1.0, 0.5]
    assert np.isnan(limit_at(0, grid, table)).all()


def test_nan_samples_are_not_counted_as_in_the_summaries():
    x = np.zeros((2, 1, 4))
    x[0, 0, :2] = np.nan
    (counts,) = window_counts(x, [np.array([-1.0, 1.0])])
    assert counts.tolist() == [[0, 2, 0], [0, 4, 0]]


def test_the_manifest_refuses_limits_of_the_wrong_shape():
    good = {"windows": [1, 2], "quantile": 0.99, "psi": [[2.0], [1.0]], "intervals": [40, 30], "devices": 3}
    assert DriftLimits(**good).windows == [1, 2]
    with pytest.raises(ValidationError, match="increase strictly"):
        DriftLimits(**{**good, "windows": [2, 1]})
    with pytest.raises(ValidationError, match="one psi row"):
        DriftLimits(**{**good, "psi": [[2.0]]})
    channel = {"name": "c0", "mean": 0.0, "var": 1.0, "hist_edges": [0.0], "hist_share": [0.5, 0.5]}
    base = {"entropy": {"q": [0.5], "value": [1.0]}, "samples": 10, "val_windows": 4, "val_accuracy": 0.5}
    assert ManifestReference(channels=[channel], drift_limits=good, **base).drift_limits is not None
    with pytest.raises(ValidationError, match="one value per reference channel"):
        ManifestReference(channels=[channel, {**channel, "name": "c1"}], drift_limits=good, **base)


def _limited() -> Reference:
    return dataclasses.replace(
        reference(), limit_windows=(1, 8, 64), limit_psi=((6.0, 6.0), (3.0, 3.0), (1.5, 1.5))
    )


def _summary(ref: Reference, device: str, x: np.ndarray, end: float) -> DriftSummary:
    c = SummaryCollector(ref, device, "0", "ab" * 32, "steady", interval_s=1e9, now=end - STEP)
    n = len(x)
    h = np.full(n, 0.5)
    c.observe(x, np.zeros(n, np.int64), np.exp(-h), h, None, {}, None, [5.0] * n)
    return c.close(end)


def test_limits_survive_the_schema_and_a_merge_takes_the_limit_at_its_own_size():
    rng = np.random.default_rng(0)
    parts = [_summary(_limited(), "d", rng.standard_normal((8, 2, 16)), T0 + k * STEP) for k in (1, 2)]
    assert parts[0].psi_limit().tolist() == [3.0, 3.0]
    back = from_table(to_table(parts))
    assert [b.reference for b in back] == [p.reference for p in parts]
    merged = merge_summaries(back)
    assert merged.windows == 16  # a third of the way from 8 to 64 in log size:
    assert merged.psi_limit() == pytest.approx([2.5, 2.5])
    table = to_table([merged])
    assert table.column("psi_limit").to_pylist() == [pytest.approx([2.5, 2.5])]
    uncalibrated = to_table([_summary(reference(), "d", rng.standard_normal((8, 2, 16)), T0)])
    assert uncalibrated.column("psi_limit").to_pylist() == [None]
    assert from_table(uncalibrated)[0].reference == reference()


def test_the_alert_takes_the_shipped_limit_and_leaves_out_intervals_too_small_to_judge(tmp_path):
    """Both devices' channel c0 is 1.5 sd off in intervals of 40 windows; one agent ships a limit
    above that PSI (its source devices were that far apart), the other none (an older agent: the
    chi-square limit). Each ends with an interval of 3 windows that would otherwise break the run."""
    location = str(tmp_path / "fleet")
    rng = np.random.default_rng(1)
    loose = dataclasses.replace(reference(), limit_windows=(1, 64), limit_psi=((50.0, 50.0), (20.0, 20.0)))
    for k in range(4):
        n = 3 if k == 3 else 40
        x = rng.standard_normal((n, 2, 16))
        x[:, 0] += 1.5
        end = T0 + (k + 1) * STEP
        dataset.append(
            location, to_table([_summary(loose, "calibrated", x, end), _summary(reference(), "old", x, end)])
        )
    table = dataset.read(location)
    found = evaluate(table, RULES, now=T0 + 5 * STEP)
    assert [(a.device, a.rule) for a in found] == [("old", "psi")]
    assert "last 3 intervals of 8+ windows" in found[0].message
    intervals = Intervals.of(table, RULES)
    ratio = intervals.drift_ratio[intervals.scores(intervals.devices.index("calibrated"))]
    assert np.all(ratio[:3] < 1) and np.all(ratio[:3] > 0)
    strict = AlertsSection(psi_intervals=3, psi_min_windows=1)  # the 3-window interval counts: no run
    assert evaluate(table, strict, now=T0 + 5 * STEP) == []


def test_an_agent_on_a_bundle_without_limits_says_how_to_get_them(tmp_path, tmp_path_factory, caplog):
    """An older bundle still runs (the monitor falls back to the sampling limit) and the agent
    says at start what re-exporting would bring; a bundle with limits says nothing of them."""
    from edge_ttt.agent import Agent
    from edge_ttt.agent.config import load_config
    from tests.agent_harness import write_config
    from tests.conftest import exported_bundle

    old = exported_bundle(
        tmp_path_factory, "cnn-bn", "no-limits", prepare=lambda src: src.reference.pop("drift_limits")
    )
    new = exported_bundle(tmp_path_factory, "cnn-bn", "limits")
    for bundle, warned in ((old, True), (new, False)):
        caplog.clear()
        folder = tmp_path / bundle.parent.name
        folder.mkdir()
        with caplog.at_level("WARNING", logger="edge_ttt.agent"):
            Agent(load_config(write_config(folder, bundle, 1)))
        said = [r.getMessage() for r in caplog.records if "drift limits" in r.getMessage()]
        assert bool(said) == warned
        if warned:
            assert "re-export it with `edge-ttt export`" in said[0]


def test_the_explanation_orders_channels_by_how_far_beyond_their_limit_they_are():
    """A new wearer's PSI of 3.0 on a channel whose source devices reach 6.0 is less drift than 1.5
    where they reach 0.75: the ranking names b first, and the report's plot takes b."""
    from edge_ttt.monitor import distributions
    from edge_ttt.monitor.config import AlertsSection
    from edge_ttt.monitor.health import _worst_channels, drift_scores

    rules = AlertsSection()
    row = {"channels": ["a", "b"], "psi": [3.0, 1.5], "psi_limit": [6.0, 0.75], "windows": 1000}
    assert drift_scores(row).tolist() == [0.5, 2.0]
    assert _worst_channels(row, 16, rules) == (("b", "1.50"),)  # a is within its limit: not named
    assert distributions.worst_channel(row) == 1
    both = {**row, "psi_limit": [2.0, 0.5]}  # both beyond: the furthest first
    assert _worst_channels(both, 16, rules) == (("b", "1.50"), ("a", "3.00"))
    older = {"channels": ["a", "b"], "psi": [3.0, 1.5], "psi_limit": None, "windows": 1000}  # PSI orders
    assert _worst_channels(older, 16, rules) == (("a", "3.00"), ("b", "1.50"))
    assert distributions.worst_channel(older) == 0
