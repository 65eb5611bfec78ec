"""The column-wise interval scores against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.intervals import Intervals, chi2_quantile, psi_limit

FLOATS = pa.list_(pa.float64())


def _table(psi: list, share_bins: list, windows: list, edges: list, counts: list) -> pa.Table:
    n = len(psi)
    return pa.table(
        {
            "device_id": pa.array(["b", "a", "a", "b"][:n]),
            "interval_end": pa.array(range(n), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "psi": pa.array(psi, FLOATS),
            "ref_share": pa.array(
                [None if b is None else [[1 / k] * k for k in b] for b in share_bins], pa.list_(FLOATS)
            ),
            "windows": pa.array(windows, pa.int64()),
            "entropy_edges": pa.array(edges, FLOATS),
            "entropy_counts": pa.array(counts, pa.list_(pa.int64())),
        }
    )


def test_scores_per_interval_sorted_by_device_then_time():
    rules = AlertsSection(psi_threshold=0.25, psi_false_alarm=0.001)
    table = _table(
        psi=[[0.1, 0.3], [2.0, None, 0.5], None, [float("nan")]],
        share_bins=[[16, 16], [16, 16, 16], None, [16]],
        windows=[400, 40, 40, None],
        edges=[[0.5, 1.0], [1.0], None, [0.2, 0.4, 0.6]],
        counts=[[1, 1, 2], [3, 1], None, [0, 0, 0, 0]],
    )
    got = Intervals.of(table, rules)
    assert got.devices == ["a", "b"] and got.bounds.tolist() == [0, 2, 4]
    # rows now: a@1, a@2, b@0, b@3
    np.testing.assert_allclose(got.max_psi, [2.0, np.nan, 0.3, np.nan])
    limit_40 = chi2_quantile(0.999, 15) / 40
    np.testing.assert_allclose(got.drift_ratio, [2.0 / limit_40, np.nan, 0.3 / 0.25, np.nan])
    # a@1: one edge 1.0 -> bins [0, 1) and [1, 2), middles 0.5 and 1.5, weights 3 and 1
    # b@0: edges 0.5, 1.0 (width 0.5) -> middles 0.25, 0.75, 1.25, weights 1, 1, 2
    np.testing.assert_allclose(got.mean_entropy, [0.75, np.nan, (0.25 + 0.75 + 2.5) / 4, np.nan])
    assert [r["interval_end"].timestamp() for r in got.rows(0)] == [1e-6, 2e-6]
    assert len(got.rows(1, last=1)) == 1


def test_the_chi2_quantile_is_close_to_the_exact_one():
    # scipy.stats.chi2.ppf(p, dof) for the tails the limit uses
    for p, dof, exact in [(0.999, 15, 37.697), (0.99, 15, 30.578), (0.999, 3, 16.266), (0.95, 7, 14.067)]:
        assert chi2_quantile(p, dof) == pytest.approx(exact, rel=0.02)
    assert chi2_quantile(0.999, 15) == pytest.approx(37.697, rel=0.005)
    rules = AlertsSection()
    assert psi_limit(16, 4000, rules) == rules.psi_threshold  # many windows: the floor
    assert math.isinf(psi_limit(1, 40, rules)) and math.isinf(psi_limit(16, 0, rules))
