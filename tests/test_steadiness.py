"""How steady a model's classes are from window to window (`edge_ttt.steadiness`): counted alike
batch by batch and in one go, carried by the drift summaries (schema 7), and scaling the fleet
side's estimates as it scales `edge-ttt replay`'s."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_ttt.adapt.estimates import steadiness
from edge_ttt.drift.merge import merge_summaries
from edge_ttt.drift.schema import from_table, to_table
from edge_ttt.drift.summary import SummaryCollector
from edge_ttt.drift.validation import Invalid, check_table
from edge_ttt.monitor import dataset
from edge_ttt.monitor.estimates import rolling
from edge_ttt.monitor.intervals import Intervals
from edge_ttt.steadiness import StayCounter, Stays
from tests.test_drift_stats import reference
from tests.test_monitor_collector import T0
from tests.test_monitor_estimates import PRIOR, RULES

STAY = (0.9, 0.8, 0.7, 0.6)
REF = dataclasses.replace(reference(classes=3), class_prior=PRIOR, accuracy=0.8, stay=STAY)


def test_batches_and_one_pass_count_the_same():
    rng = np.random.default_rng(0)
    classes = np.where(rng.random(500) < 0.3, -1, rng.integers(0, 3, 500))  # a source pass here and there
    whole = StayCounter(STAY).count(classes)
    counter, parts = StayCounter(STAY), Stays()
    for piece in np.array_split(classes, np.sort(rng.choice(np.arange(1, 500), 40, replace=False))):
        parts += counter.count(piece)
    assert parts.kept == whole.kept and parts.expected == pytest.approx(whole.expected)
    assert whole.factor() == steadiness(classes, list(STAY))  # what replay and the benchmark compute
    gaps = np.diff(np.flatnonzero(classes >= 0))
    assert whole.expected == pytest.approx(sum(STAY[g - 1] for g in gaps if g <= len(STAY)))


def test_the_summaries_carry_the_counts_across_intervals_and_back_from_parquet():
    c = SummaryCollector(REF, "d", "0", "ab" * 32, "steady", interval_s=1e9, now=T0)
    served = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    source = np.array([0, -1, 0, -1, 2, -1, 2, -1])
    x = np.zeros((4, 2, 4))
    c.observe(x, served[:4], np.full(4, 0.9), np.full(4, 0.1), source_classes=source[:4])
    first = c.close(T0 + 60)
    c.observe(x, served[4:], np.full(4, 0.9), np.full(4, 0.1), source_classes=source[4:])
    second = c.close(T0 + 120)
    # served: pairs 0-0 1-1 | 1-2 2-2 2-2 2-0 across the close (the last class carries over)
    assert (first.stays.kept, second.stays.kept) == (2, 2)
    assert (first.stays.expected, second.stays.expected) == pytest.approx((2.7, 3.6))
    # the source model every other window: pairs 0-0 | 0-2 2-2 at gap 2
    assert (first.source_stays, second.source_stays.kept) == (Stays(1, 0.8), 1)
    merged = merge_summaries([first, second])
    assert merged.stays == first.stays + second.stays
    back = from_table(to_table([first, second]))
    assert [s.stays for s in back] == [first.stays, second.stays]
    assert back[0].reference.stay == STAY and back[1].source_stays == second.source_stays
    older = to_table([first]).drop_columns(["stays_kept", "stays_expected", "ref_stay"])  # schema 6
    (old,) = from_table(dataset.rows(older))
    assert old.stays == Stays() and old.stays.factor() == 1.0 and old.reference.stay == ()


def test_a_summary_with_impossible_counts_is_refused():
    c = SummaryCollector(REF, "d", "0", "ab" * 32, "steady", interval_s=1e9, now=T0)
    c.observe(np.zeros((2, 2, 4)), [0, 0], [0.9, 0.9], [0.1, 0.1])
    s = c.close(T0 + 60)
    check_table(to_table([s]))
    for broken, message in [
        (dataclasses.replace(s, stays=Stays(1, -2.0)), "stays_expected is negative"),
        (
            dataclasses.replace(s, reference=dataclasses.replace(REF, stay=(1.5,))),
            "ref_stay is outside 0 to 1",
        ),
    ]:
        with pytest.raises(Invalid, match=message):
            check_table(to_table([broken]))


def fleet(tmp_path, flip: bool, drop: tuple[str, ...] = ()) -> Intervals:
    """Two intervals of 40 windows in the prior's mix (0 1 0 2), in activities of 10 windows, or
    changing class every window (`flip`): the same mix, the same bound."""
    made = []
    for k in range(2):
        c = SummaryCollector(REF, "d", "0", "ab" * 32, "steady", interval_s=1e9, now=T0 + 60 * k)
        served = np.resize([0, 1, 0, 2], 40) if flip else np.repeat([0, 1, 0, 2], 10)
        c.observe(np.zeros((40, 2, 4)), served, np.full(40, 0.9), np.full(40, 0.1))
        made.append(c.close(T0 + 60 * (k + 1)))
    location = str(tmp_path / ("flip" if flip else "steady") / "fleet")
    dataset.append(location, to_table(made).drop_columns(list(drop)))
    return Intervals.of(dataset.read(location), RULES)


def test_the_fleet_estimate_is_the_bound_times_the_steadiness(tmp_path):
    steady = rolling(fleet(tmp_path, flip=False), 0, RULES.estimate_windows).latest()
    flipping = rolling(fleet(tmp_path, flip=True), 0, RULES.estimate_windows).latest()
    assert steady.served == pytest.approx(1.0)  # 72 of 79 pairs kept against 0.9 x 79 expected
    assert flipping.served == pytest.approx(0.0)  # never kept: nothing of the mix is believed
    assert flipping.source is None  # no source pass
    older = rolling(fleet(tmp_path / "old", flip=True, drop=("stays_kept", "stays_expected")), 0, 80)
    assert older.latest().served == pytest.approx(1.0)  # files from before the counts: the bound alone
