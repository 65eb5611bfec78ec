"""The fleet side's accuracy estimates per device (over the latest windows, from the summaries'
class counts and ATC shares) and the accuracy alert built on them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from edge_ttt.drift.schema import to_table
from edge_ttt.drift.summary import DriftSummary, SummaryCollector
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import evaluate
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.estimates import device_estimates, rolling
from edge_ttt.monitor.intervals import Intervals
from tests.test_drift_stats import reference
from tests.test_monitor_collector import T0

STEP = 60.0
PRIOR = (0.5, 0.25, 0.25)
RULES = AlertsSection(estimate_windows=80, accuracy_min_windows=60, accuracy_loss=0.1)
REF = dataclasses.replace(reference(classes=3), class_prior=PRIOR, accuracy=0.8)


def interval(
    device: str,
    k: int,
    classes: list[int],
    source_classes: list[int] | None = None,
    source_atc: float = 1.0,
    served_atc: float = 1.0,
    policy: str = "steady",
    ref=REF,
) -> DriftSummary:
    """One interval of 40 windows: served classes cycle through `classes`, the source model's through
    `source_classes` on every other window (-1: not run), with these ATC shares."""
    n = 40
    c = SummaryCollector(ref, device, "0", "ab" * 32, policy, interval_s=1e9, now=T0 + k * STEP)
    served = np.resize(np.asarray(classes), n)
    source = np.full(n, -1) if source_classes is None else np.resize(np.asarray(source_classes), n)
    source[1::2] = -1
    ran = source >= 0
    h = np.full(n, 0.5)
    c.observe(
        np.zeros((n, 2, 4)),
        served,
        np.exp(-h),
        h,
        estimated_correct=(np.arange(n) < served_atc * n).astype(float),
        source_estimated_correct=np.where(ran, (np.arange(n) < source_atc * n).astype(float), np.nan),
        source_classes=source,
    )
    return c.close(T0 + (k + 1) * STEP)


def intervals_of(tmp_path, summaries: list[DriftSummary]) -> Intervals:
    location = str(tmp_path / "fleet")
    dataset.append(location, to_table(summaries))
    return Intervals.of(dataset.read(location), RULES)


def test_the_bound_follows_the_latest_windows_for_both_models(tmp_path):
    """Interval 0 predicts only class 0 (bound 0.5 under the prior), intervals 1 and 2 the prior's
    mix (bound 1.0): over the latest 80 windows (two intervals) the served estimate is 1.0, at
    interval 1 it is (0.5 + 1) / 2 = 0.75. The source model is stuck on class 1 (bound 0.25); its
    ATC share (0.9 here) is not used: on clean wearers it read losses that were not there."""
    mix = [0, 0, 1, 2]
    made = [
        interval("d", 0, [0], [1], source_atc=0.9),
        interval("d", 1, mix, [1], source_atc=0.9),
        interval("d", 2, mix, [1], source_atc=0.9),
    ]
    roll = rolling(intervals_of(tmp_path, made), 0, RULES.estimate_windows)
    assert roll.served.tolist() == pytest.approx([0.5, 0.75, 1.0])
    assert roll.source.tolist() == pytest.approx([0.25, 0.25, 0.25])
    assert roll.windows.tolist() == [40, 80, 80]
    latest = roll.latest()
    assert (latest.served, latest.reference, latest.windows) == (1.0, 0.8, 80)
    assert latest.lost("source") == pytest.approx(0.55) and latest.lost("served") == pytest.approx(-0.2)


def test_a_confident_or_unconfident_source_model_reads_the_same(tmp_path):
    """The same classes at ATC shares of 0.3 and 1.0 give the same estimates."""
    low = [interval("low", k, [0, 0, 1, 2], [0, 0, 1, 2], source_atc=0.3, served_atc=0.3) for k in range(2)]
    high = [interval("high", k, [0, 0, 1, 2], [0, 0, 1, 2]) for k in range(2)]
    intervals = intervals_of(tmp_path, low + high)
    (a, b) = (device_estimates(intervals, i, RULES.estimate_windows) for i in range(2))
    # the source model ran on every other window: classes 0 and 1 in halves, a bound of 0.5 + 0.25
    assert (a.served, a.source) == (b.served, b.source) == (pytest.approx(1.0), pytest.approx(0.75))


def test_the_accuracy_alert_names_what_the_drift_costs_even_where_adaptation_makes_up_for_it(tmp_path):
    mix, stuck = [0, 0, 1, 2], [1]
    made = []
    for k in range(3):
        made += [
            interval("rescued", k, mix, stuck),  # source model stuck, served predictions fine
            interval("clean", k, mix, mix),
            interval("losing", k, [2], mix),  # served predictions stuck on class 2: bound 0.25
        ]
    made.append(interval("young", 0, [1], [1]))  # 40 windows: too few to judge
    made.append(interval("unreferenced", 0, [1], [1], ref=reference(classes=3)))  # before version 4
    made.append(interval("unreferenced", 1, [1], [1], ref=reference(classes=3)))
    location = str(tmp_path / "fleet")
    dataset.append(location, to_table(made))
    found = [a for a in evaluate(dataset.read(location), RULES, now=T0 + 4 * STEP) if a.rule == "accuracy"]
    assert [(a.device, round(a.value, 3)) for a in found] == [("losing", 0.55), ("rescued", 0.55)]
    by_device = {a.device: a.message for a in found}
    assert by_device["rescued"] == (
        "estimated accuracy over the latest 80 windows: source model 25.0 %, served predictions 100.0 %, "
        "against the reference 80.0 % (55.0 points lost by the source model)"
    )
    assert by_device["losing"].endswith("(55.0 points lost by the served predictions)")


def test_rows_without_class_counts_give_no_estimate_rather_than_an_error(tmp_path):
    made = [interval("d", k, [0, 0, 1, 2], [1]) for k in range(2)]
    location = str(tmp_path / "fleet")
    dataset.append(location, to_table(made))
    table = dataset.read(location)
    nulls = pa.nulls(len(table), table.schema.field("class_counts").type)
    broken = table.set_column(table.schema.get_field_index("class_counts"), "class_counts", nulls)
    broken = broken.set_column(
        broken.schema.get_field_index("ref_class_prior"),
        "ref_class_prior",
        pa.nulls(len(table), table.schema.field("ref_class_prior").type),
    )
    latest = device_estimates(Intervals.of(broken, RULES), 0, RULES.estimate_windows)
    assert latest.served is None and latest.source is None


def test_one_long_activity_is_no_loss_a_stuck_model_among_several_is(tmp_path):
    """Both models predict class 2 only: a wearer at one activity (or a label run). The class-mix
    bound would read 0.25 for both and call it a loss; with one class seen it does not apply and no
    estimate stands. Where the served predictions hold the prior's mix and the source model alone is
    stuck, the bound applies to the source model."""
    sitting = [interval("sitting", k, [2], [2]) for k in range(3)]
    stuck = [interval("stuck", k, [0, 0, 1, 2], [2]) for k in range(3)]
    location = str(tmp_path / "fleet")
    dataset.append(location, to_table(sitting + stuck))
    table = dataset.read(location)
    intervals = Intervals.of(table, RULES)
    by_device = {
        d: device_estimates(intervals, i, RULES.estimate_windows) for i, d in enumerate(intervals.devices)
    }
    assert by_device["sitting"].served is None and by_device["sitting"].source is None
    assert by_device["stuck"].source == pytest.approx(0.25) and by_device["stuck"].served == pytest.approx(
        1.0
    )
    found = [(a.device, a.rule) for a in evaluate(table, RULES, now=T0 + 4 * STEP)]
    assert ("sitting", "accuracy") not in found and ("stuck", "accuracy") in found
