"""The label-free accuracy estimates and the fallback counters in drift summaries: collected,
merged by window weight, written and read back, and still readable from version 1 files."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_ttt.class_mix import class_mix_cap
from edge_ttt.drift.merge import merge_summaries
from edge_ttt.drift.reference import Reference
from edge_ttt.drift.schema import SCHEMA, SCHEMA_VERSION, from_table, read_table, to_table
from edge_ttt.drift.summary import COUNTERS, SummaryCollector
from edge_ttt.monitor import dataset
from edge_ttt.monitor.health import health
from edge_ttt.monitor.intervals import Intervals
from edge_ttt.monitor.report import write_report
from tests.test_drift_stats import collector
from tests.test_monitor_collector import T0, make_summary
from tests.test_monitor_report import RULES

NEW_IN_2 = [
    "estimated_accuracy",
    "estimated_windows",
    "source_estimated_accuracy",
    "source_estimated_windows",
    "fallbacks",
    "windows_on_source",
]


def predictions(estimated: list[float], source: list[float], on_source: bool = False) -> SimpleNamespace:
    """What the engine's `Predictions` carries, duck-typed (drift/ never imports adapt/)."""
    n = len(estimated)
    probs = np.full((n, 3), 1 / 3, np.float32)
    return SimpleNamespace(
        classes=np.zeros(n, np.int64),
        probs=probs,
        entropy=np.full(n, np.log(3), np.float32),
        valid=np.ones(n, bool),
        estimated_correct=np.asarray(estimated, np.float32),
        source_estimated_correct=np.asarray(source, np.float32),
        on_source=np.full(n, on_source),
        source_classes=np.where(np.isnan(source), -1, 1),  # class 1 where the source model ran
    )


LEVEL = dict.fromkeys(("norm_layers", "norm_mean_shift", "norm_log_var_ratio"), None)


def estimated(served: list[float], source: list[float], end: float = 1.0, **counters: int):
    """A summary of one batch with these estimates, closed with an engine report of `counters`."""
    c = collector()
    c.observe_predictions(np.zeros((len(served), 2, 8)), predictions(served, source))
    report = SimpleNamespace(
        counters=counters, adaptation={**LEVEL, "param_change": 0.0, "param_change_rel": 0.0}
    )
    return c.close(end, report)


def test_observe_predictions_takes_the_estimates_and_ignores_a_missing_source_pass():
    s = estimated([1, 0, 1, 1], [0, 0, 1, np.nan], fallbacks=1, windows_on_source=3)
    assert s.estimated_accuracy == 0.75 and s.estimated.count == 4
    assert s.source_estimated_accuracy == pytest.approx(1 / 3) and s.source_estimated.count == 3
    assert s.counters["fallbacks"] == 1 and s.counters["windows_on_source"] == 3
    no_source = estimated([1, 1], [np.nan, np.nan])
    assert no_source.estimated_accuracy == 1.0 and no_source.source_estimated_accuracy is None


def test_the_source_models_classes_are_counted_where_it_ran_and_survive_merge_and_schema():
    a = estimated([1, 1, 1], [0, np.nan, 1], end=1.0)
    b = estimated([1, 1], [1, 1], end=2.0)
    assert a.source_class_counts.tolist() == [0, 2, 0] and a.class_counts.tolist() == [3, 0, 0]
    merged = merge_summaries([a, b])
    assert merged.source_class_counts.tolist() == [0, 4, 0]
    back = from_table(to_table([a, merged]))
    assert [x.source_class_counts.tolist() for x in back] == [[0, 2, 0], [0, 4, 0]]
    assert back[0].reference == a.reference
    older = dataset.rows(to_table([a])).drop_columns(["source_class_counts"])
    (old,) = from_table(older)
    assert old.source_class_counts is None  # a version 3 file: not counted, not zero
    assert merge_summaries([old, b]).source_class_counts.tolist() == [0, 2, 0]


def test_merged_estimates_are_window_weighted_means():
    a = estimated([1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], end=1.0)  # 6 windows at 1.0, source 0.0
    b = estimated([0, 0], [np.nan, np.nan], end=2.0)  # 2 windows at 0.0, no source pass
    m = merge_summaries([a, b])
    assert m.estimated_accuracy == pytest.approx(6 / 8) and m.estimated.count == 8
    assert m.source_estimated_accuracy == 0.0 and m.source_estimated.count == 6
    unestimated = collector().observe(np.zeros((4, 2, 8)), [0] * 4, [0.5] * 4, [0.1] * 4).close(3.0)
    assert unestimated.estimated_accuracy is None
    assert merge_summaries([b, unestimated]).estimated_accuracy == 0.0  # no weight without estimates
    assert (a.estimated_accuracy, b.estimated.count) == (1.0, 2)  # the inputs stay as they were


def test_estimates_round_trip_through_the_schema_including_null_ones():
    with_all = estimated([1, 0, 1], [1, 1, 0], fallbacks=2, windows_on_source=3)
    without = estimated([0, 1], [np.nan, np.nan])
    table = to_table([with_all, without])
    assert table.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode() == b"7"
    rows = table.to_pylist()
    assert [r["estimated_accuracy"] for r in rows] == [pytest.approx(2 / 3), 0.5]
    assert [r["source_estimated_accuracy"] for r in rows] == [pytest.approx(2 / 3), None]
    assert [r["source_estimated_windows"] for r in rows] == [3, 0]
    assert [(r["fallbacks"], r["windows_on_source"]) for r in rows] == [(2, 3), (0, 0)]
    for back, s in zip(from_table(table), [with_all, without], strict=True):
        assert back.estimated == s.estimated and back.source_estimated == s.source_estimated
        assert back.counters == s.counters
    assert to_table(from_table(table)).equals(table)


def version_1(table: pa.Table) -> pa.Table:
    """The table as a version 1 writer wrote it: without the columns version 2 added."""
    old = table.drop_columns(NEW_IN_2)
    old = old.set_column(0, "schema_version", pa.array([1] * len(old), pa.int32()))
    return old.replace_schema_metadata({**SCHEMA.metadata, b"schema_version": b"1"})


def test_a_version_1_summary_reads_with_null_estimates_and_merges_without_weight(tmp_path):
    old_summary = make_summary("old", T0)
    pq.write_table(version_1(to_table([old_summary])), tmp_path / "v1.parquet")
    table = read_table(tmp_path / "v1.parquet")
    assert table["schema_version"].to_pylist() == [1]
    assert all(table[c].null_count == 1 for c in NEW_IN_2)
    (back,) = from_table(table)
    assert back.estimated_accuracy is None and back.source_estimated_accuracy is None
    assert back.counters == dict.fromkeys(COUNTERS, 0) and back.windows == old_summary.windows
    merged = merge_summaries([back, estimated([1, 0], [1, 1])])
    assert merged.estimated_accuracy == 0.5 and merged.windows == back.windows + 2


def test_the_monitor_reads_a_dataset_holding_version_1_and_2_files(tmp_path):
    location = str(tmp_path / "fleet")
    old = dataset.rows(to_table([make_summary("old", T0)])).drop_columns(NEW_IN_2)
    part = Path(location) / "date=2023-11-14" / "part-old.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(old, part)
    new = make_summary("new", T0, seed=1)
    new.estimated.update(np.array([1.0, 1.0, 0.0, 1.0]))
    new.source_estimated.update(np.array([0.0, 1.0, 0.0, 0.0]))
    dataset.append(location, to_table([new]))

    table = dataset.read(location)
    by_device = {h.device: h for h in health(Intervals.of(table, RULES), RULES)}
    # the class-mix bound of the served classes; no source classes, no source estimate (its ATC
    # share is carried, and the monitor does not read it)
    bound = float(class_mix_cap(new.class_counts, np.full(3, 1 / 3)))
    assert (by_device["new"].estimated_accuracy, by_device["new"].source_estimated_accuracy) == (bound, None)
    # version 1 had class counts: the bound, no source estimate
    old_bound = float(class_mix_cap(make_summary("old", T0).class_counts, np.full(3, 1 / 3)))
    assert (by_device["old"].estimated_accuracy, by_device["old"].source_estimated_accuracy) == (
        old_bound,
        None,
    )
    out = tmp_path / "report.html"
    write_report(table, RULES, out, now=T0)
    rows = out.read_text().split('<table id="health">')[1].split("</table>")[0].split("<tr>")
    cells = {r[0]: r[-4:] for r in (re.findall(r"<td>([^<]*)</td>", row) for row in rows) if r}
    # the two estimates, then the mounting found (version 5 on; "-" before) and the white noise
    # found (version 6 on)
    assert cells == {
        "new": [f"{100 * bound:.1f}", "n/a", "-", "-"],
        "old": [f"{100 * old_bound:.1f}", "n/a", "-", "-"],
    }
    assert dataset.compact(location) == {"date=2023-11-14": 2}
    compacted = dataset.read(location).sort_by("device_id")
    assert compacted["estimated_accuracy"].to_pylist() == [0.75, None]


@pytest.mark.parametrize("fallback", [True, False])
def test_a_real_engine_summary_carries_its_estimates_and_windows_on_source(bundle_dir: Path, fallback):
    from edge_ttt.adapt.engine import Engine
    from edge_ttt.adapt.fallback import FallbackOptions
    from edge_ttt.adapt.ort_model import OrtModel
    from edge_ttt.artifacts import load_bundle
    from tests.model_factory import windows

    options = FallbackOptions(horizon=4, margin=0.0, recover=0.0, min_windows=1) if fallback else None
    engine = Engine(OrtModel(load_bundle(bundle_dir)), policy="steady", fallback=options)
    if fallback:
        engine.fallback.on_source = True  # as after a fallback: the source model serves
    reference = Reference.from_manifest(engine.model.manifest)
    c = SummaryCollector(reference, "d", "0", "sha", "steady", now=0.0)
    x = windows(12, seed=5) * 3 + 1
    served, source, on_source = [], [], 0
    for i in range(6):
        p = engine.process(x[2 * i : 2 * i + 2])
        c.observe_predictions(x[2 * i : 2 * i + 2], p)
        served += p.estimated_correct.tolist()
        source += p.source_estimated_correct.tolist()
        on_source += int(p.on_source.sum())
    s = c.close(1.0, engine.report())
    assert s.estimated_accuracy == pytest.approx(np.mean(served)) and s.estimated.count == 12
    # The source model's estimate is from every 4th window (0, 4, 8), also where it served them all.
    assert s.source_estimated_accuracy == pytest.approx(np.nanmean(source))
    assert s.source_estimated.count == 3
    assert s.counters["windows_on_source"] == on_source == engine.counters.windows_on_source
    assert (on_source >= 2) if fallback else on_source == 0  # the first batch at least, on source
    assert s.counters["fallbacks"] == engine.counters.fallbacks


def test_the_mounting_found_round_trips_and_an_older_file_reads_none():
    c = collector()
    c.observe_predictions(np.zeros((2, 2, 8)), predictions([1, 1], [1, 1]))
    level = {**LEVEL, "param_change": 0.0, "param_change_rel": 0.0, "mounting": "sensors exchanged"}
    s = c.close(1.0, SimpleNamespace(counters={}, adaptation=level))
    assert s.adaptation.mounting == "sensors exchanged"
    (back,) = from_table(to_table([s]))
    assert back.adaptation.mounting == "sensors exchanged"
    assert merge_summaries([s, back]).adaptation.mounting == "sensors exchanged"  # the latest's
    (old,) = from_table(dataset.rows(to_table([s])).drop_columns(["mounting"]))  # a version 4 file
    assert old.adaptation.mounting is None
