"""Drift statistics: exact merges, drift scores, and the collector fed by a real engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_ttt.drift.merge import merge_summaries
from edge_ttt.drift.reference import Reference
from edge_ttt.drift.stats import Histogram, Moments, psi
from edge_ttt.drift.summary import COUNTERS, DriftSummary, SummaryCollector

EDGES = (-1.0, 0.0, 0.5, 2.0)
values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False) | st.sampled_from(
    [np.nan, np.inf, -np.inf, 0.0, 0.5, -1.0, 2.0]
)
batches = st.lists(
    hnp.arrays(np.float64, st.tuples(st.integers(0, 30), st.just(3)), elements=values), max_size=6
)


def assert_same_moments(got: Moments, want: Moments) -> None:
    np.testing.assert_array_equal(got.count, want.count)
    np.testing.assert_array_equal(got.nonfinite, want.nonfinite)
    scale = np.maximum(np.abs(want.max), np.abs(want.min))
    scale = np.where(np.isfinite(scale), scale, 0.0)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-9, atol=1e-9 * scale.max(initial=1.0))
    np.testing.assert_allclose(got.var, want.var, rtol=1e-9, atol=1e-9 * scale.max(initial=1.0) ** 2)
    np.testing.assert_array_equal(got.min, want.min)
    np.testing.assert_array_equal(got.max, want.max)


@settings(max_examples=200, deadline=None)
@given(batches)
def test_merged_moments_and_histograms_equal_those_of_the_concatenated_data(parts):
    whole = np.concatenate(parts) if parts else np.empty((0, 3))
    merged_m, merged_h = Moments.empty(3), Histogram.over(EDGES)
    for part in parts:
        merged_m += Moments.empty(3).update(part)
        merged_h = merged_h + Histogram.over(EDGES).update(part[:, 0])
    direct = Moments.empty(3).update(whole)
    assert_same_moments(merged_m, direct)
    finite = whole[np.isfinite(whole)].reshape(-1) if whole.size else whole.reshape(-1)
    assert direct.count.sum() + direct.nonfinite.sum() == whole.size
    assert direct.count.sum() == finite.size
    col = whole[:, 0]
    col = col[np.isfinite(col)]
    np.testing.assert_array_equal(
        merged_h.counts, np.bincount(np.searchsorted(EDGES, col, "right"), minlength=5)
    )
    if len(col):
        np.testing.assert_allclose(direct.mean[0], col.mean(), rtol=1e-9, atol=1e-9 * np.abs(col).max())
        np.testing.assert_allclose(direct.var[0], col.var(), rtol=1e-9, atol=1e-9 * np.abs(col).max() ** 2)


def test_histograms_over_other_edges_refuse_to_merge():
    with pytest.raises(ValueError, match="different edges"):
        Histogram.over([0.0]) + Histogram.over([1.0])


def reference(channels: int = 2, classes: int = 3) -> Reference:
    """A standard normal source: equal-share bins at the 1/16 ... 15/16 quantiles."""
    from statistics import NormalDist

    edges = tuple(NormalDist().inv_cdf(k / 16) for k in range(1, 16))
    return Reference(
        tuple(f"c{i}" for i in range(channels)),
        (0.0,) * channels,
        (1.0,) * channels,
        (edges,) * channels,
        ((1 / 16,) * 16,) * channels,
        tuple(f"k{i}" for i in range(classes)),
    )


def observe(collector: SummaryCollector, x: np.ndarray, seed: int = 0) -> SummaryCollector:
    rng = np.random.default_rng(seed)
    n = len(x)
    conf = rng.uniform(0.3, 1.0, n)
    return collector.observe(
        x, rng.integers(0, 3, n), conf, -np.log(conf), rng.random(n) > 0.1, None, None, [5.0] * n
    )


def collector(**kw) -> SummaryCollector:
    return SummaryCollector(reference(), "dev", "0", "sha", "steady", now=0.0, **kw)


def test_psi_and_mean_shift_are_near_zero_on_source_data_and_large_on_shifted_data():
    rng = np.random.default_rng(0)
    source = observe(collector(), rng.standard_normal((200, 2, 64))).close(1.0)
    x = rng.standard_normal((200, 2, 64))
    x[:, 0] += 2.0  # offset
    x[:, 1] *= 3.0  # gain
    shifted = observe(collector(), x).close(1.0)
    assert np.all(source.psi() < 0.01) and np.all(np.abs(source.mean_shift()) < 0.02)
    assert np.all(shifted.psi() > 0.5)
    assert shifted.mean_shift()[0] == pytest.approx(2.0, abs=0.05)
    assert abs(shifted.mean_shift()[1]) < 0.1  # a gain moves spread, not the mean: PSI sees it


def test_psi_of_an_empty_bin_is_large_but_finite():
    assert 1.0 < psi(np.array([0, 100]), np.array([0.5, 0.5])) < 10.0


def test_summaries_of_consecutive_intervals_merge_to_the_summary_of_all_the_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((90, 2, 16)) * 2 + 0.5
    x[3, 1, :4] = np.nan
    x[50, 0, 2] = np.inf
    whole = observe(collector(), x).close(30.0)
    split = collector(interval_windows=30)
    parts = []
    for i in range(3):
        observe(split, x[30 * i : 30 * (i + 1)])
        parts.append(split.maybe_close(10.0 * (i + 1)))
    assert all(p is not None for p in parts) and len({p.summary_id for p in parts}) == 3
    merged = merge_summaries(parts)
    assert_same_moments(merged.moments, whole.moments)
    for a, b in zip(merged.channel_hist, whole.channel_hist, strict=True):
        np.testing.assert_array_equal(a.counts, b.counts)
    assert (merged.windows, merged.start, merged.end) == (90, 0.0, 30.0)
    assert merged.moments.nonfinite.tolist() == [1, 4]
    np.testing.assert_allclose(merged.psi(), whole.psi(), rtol=1e-12)
    assert merge_summaries(reversed(parts)).summary_id == merged.summary_id


def test_merging_devices_marks_differing_identity_and_adds_counters():
    a = observe(collector(), np.zeros((4, 2, 8))).close(5.0)
    other = SummaryCollector(reference(), "dev2", "0", "sha", "steady", now=0.0, counters={"resets": 1})
    b = other.observe(np.ones((2, 2, 8)), [0, 1], [0.9, 0.9], [0.1, 0.1], counters={"resets": 3}).close(6.0)
    m = merge_summaries([a, b])
    assert (m.device, m.stream, m.policy) == ("*", "0", "steady")
    assert m.counters["resets"] == 2 and m.class_counts.sum() == 6 and m.adaptation is None


def test_an_interval_closes_by_time_or_window_count_and_an_empty_one_yields_nothing():
    c = collector(interval_s=60.0, interval_windows=10)
    assert c.maybe_close(59.0) is None
    assert c.maybe_close(61.0) is None  # over, but nothing seen
    observe(c, np.zeros((4, 2, 8)))
    assert c.maybe_close(62.0) is None
    observe(c, np.zeros((6, 2, 8)))
    s = c.maybe_close(63.0)
    assert s is not None and s.windows == 10 and (s.start, s.end) == (61.0, 63.0)
    observe(c, np.zeros((1, 2, 8)))
    assert c.maybe_close(100.0) is None and c.maybe_close(123.0).windows == 1


def test_a_clock_set_back_ends_the_interval_instead_of_stalling_it():
    """Network time setting back a clock that ran a day ahead: without this, no summary for a day."""
    c = collector(interval_s=60.0)
    observe(c, np.zeros((3, 2, 8)))
    assert c.maybe_close(30.0) is None
    s = c.maybe_close(30.0 - 86_400)
    assert s is not None and s.windows == 3 and (s.start, s.end) == (0.0, 30.0 - 86_400)
    observe(c, np.zeros((2, 2, 8)))  # the next interval runs by the corrected clock
    assert c.maybe_close(30.0 - 86_400 + 59) is None and c.maybe_close(30.0 - 86_400 + 60).windows == 2


def test_latency_percentiles_come_from_a_mergeable_histogram():
    s = DriftSummary.empty(reference(), "d", "0", 0.0, "sha", "source")
    s.latency.update(np.r_[np.full(98, 2.0), 900.0, 900.0])
    assert 2.0 <= s.latency_ms(0.5) < 2.7 and 900.0 <= s.latency_ms(0.99) < 1200.0


@pytest.mark.parametrize("policy", ["steady", "norm", "tent", "source"])
def test_the_collector_reads_counters_and_adaptation_from_a_real_engine(bundle_dir: Path, policy: str):
    from edge_ttt.adapt.engine import Engine
    from edge_ttt.adapt.ort_model import OrtModel
    from edge_ttt.artifacts import load_bundle
    from tests.model_factory import windows

    engine = Engine(OrtModel(load_bundle(bundle_dir)), policy=policy)
    c = SummaryCollector(
        Reference.from_manifest(engine.model.manifest), "d", "0", engine.model.bundle_sha256, policy, now=0.0
    )
    x = windows(8, seed=3) * 3 + 1  # shifted, so that steady's drift gate opens
    for i in range(4):
        batch = x[2 * i : 2 * i + 2]
        c.observe_predictions(batch, engine.process(batch))
    s = c.close(1.0, engine.report())
    assert s.windows == 8 and s.class_counts.sum() == 8
    assert s.counters == {k: getattr(engine.counters, k) for k in COUNTERS}
    a = s.adaptation
    if policy in ("steady", "norm"):
        assert a.norm_layers == tuple(layer.name for layer in engine.model.manifest.batch_norms)
        assert len(a.norm_mean_shift) == len(a.norm_layers) and max(a.norm_mean_shift) > 0
    else:
        assert a.norm_layers is None and a.norm_mean_shift is None
    assert (a.param_change > 0) == (policy in ("steady", "tent"))


def test_the_drift_package_imports_nothing_of_the_engine():
    """Summaries take the engine's report as a value; drift/ stays beside adapt/, not above it."""
    import ast

    for path in (Path(__file__).parents[1] / "edge_ttt" / "drift").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.startswith("edge_ttt.adapt")], path.name
