"""Devices whose clocks are off: the collector stamps when it received each summary, the clock rule
names such devices, silence is judged by the collector's clock, and the report's plots over time
leave out summaries whose dates cannot be right instead of squeezing the fleet into one line."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from edge_ttt.drift.schema import to_table
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import evaluate
from edge_ttt.monitor.clocks import clock_problem, plottable
from edge_ttt.monitor.collector import received
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.report import write_report
from tests.test_monitor_collector import T0, make_summary

STEP = 300.0
NOW = T0 + 6 * STEP
RULES = AlertsSection()  # clock_skew_s 3600, max_late_s 30 days, silent_s 900
NAN = math.nan


def test_plottable_leaves_out_dates_ahead_of_now_or_long_before_arrival():
    ends = np.array([NOW - 60, NOW + 7200, 1_000.0, NOW - 86_400, NOW - 60, -62e9])
    got = np.array([NOW - 50, NOW, NOW - 10, NOW, NAN, NAN])  # NaN: stored before `received`
    assert plottable(ends, got, NOW, 3600, 30 * 86_400).tolist() == [True, False, False, True, True, False]


@pytest.mark.parametrize(
    ("end", "got", "off", "words"),
    [
        (NOW - 300, NOW - 290, None, None),  # on time
        (NOW - 3000, NOW - 10, None, None),  # late, within the tolerance
        (1_000.0, NOW - 10, NOW - 10 - 1_000, "clock is behind"),  # a board that booted in 1970
        (NOW + 86_400, NOW - 10, 86_410, "clock runs ahead"),
        (NOW + 86_400, NAN, 86_400, "ahead of now"),  # no arrival time: judged against now
        (NOW - 86_400, NAN, None, None),  # no arrival time: an old date may be silence, not a clock
    ],
)
def test_a_clock_is_judged_by_the_newest_summary(end, got, off, words):
    problem = clock_problem(end, got, NOW, 3600)
    if off is None:
        assert problem is None
    else:
        assert problem is not None and problem[0] == pytest.approx(off) and words in problem[1]


def stamped(s, at: float):
    return received(to_table([s]), at)


def clocked_fleet(location: str) -> None:
    """`ok`: on time; `rtc`: its clock in 1970; `ahead`: a day ahead; `drained`: summaries kept
    through a 5-hour outage, then a fresh one; `legacy`: stored before `received`, dated ahead."""
    for i in range(6):
        end = T0 + (i + 1) * STEP
        dataset.append(location, stamped(make_summary("ok", end, seed=i), end - 2))
        dataset.append(location, stamped(make_summary("rtc", 1_000 + i * STEP, seed=10 + i), end - 2))
        dataset.append(location, stamped(make_summary("ahead", end + 86_400, seed=20 + i), end - 2))
        dataset.append(location, stamped(make_summary("drained", end - 18_000, seed=30 + i), NOW - 20))
    dataset.append(location, stamped(make_summary("drained", NOW - 60, seed=36), NOW - 10))
    dataset.append(location, to_table([make_summary("legacy", NOW + 86_400, seed=40)]))


def test_the_clock_rule_names_devices_with_clocks_off_and_silence_uses_the_collectors_clock(tmp_path):
    location = str(tmp_path / "fleet")
    clocked_fleet(location)
    table = dataset.read(location)
    assert table.column("received").null_count == 1  # the legacy row only
    found = {(a.device, a.rule): a for a in evaluate(table, RULES, now=NOW)}
    assert sorted(found) == [("ahead", "clock"), ("legacy", "clock"), ("rtc", "clock")]
    assert "behind" in found["rtc", "clock"].message and "1970-01-01" in found["rtc", "clock"].message
    assert found["ahead", "clock"].value == pytest.approx(86_400 + 2)
    # `rtc` is heard from every 5 minutes: not silent, whatever its dates say
    assert {(a.device, a.rule) for a in evaluate(table, RULES, now=NOW + 600)} == set(found)
    later = {(a.device, a.rule) for a in evaluate(table, RULES, now=NOW + 7200)}
    assert {("ok", "silent"), ("rtc", "silent"), ("drained", "silent")} <= later
    (silent,) = [a for a in evaluate(table, RULES, now=NOW + 7200) if (a.device, a.rule) == ("rtc", "silent")]
    assert silent.value == pytest.approx(NOW + 7200 - (T0 + 6 * STEP - 2))


def test_the_report_leaves_dates_that_cannot_be_right_off_its_time_plots_and_says_so(tmp_path):
    location = str(tmp_path / "fleet")
    clocked_fleet(location)
    out = tmp_path / "report.html"
    alerts = write_report(dataset.read(location), RULES, out, now=NOW)
    html = out.read_text()
    # rtc's six (dated 1970), ahead's six and legacy's one (dated a day ahead); drained's are drawn
    said = re.search(r'<p id="undrawn">(\d+) summaries of (\d+) devices', html)
    assert said is not None and said.groups() == ("13", "3")
    assert sum(a.rule == "clock" for a in alerts) == 3
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 4
    ok = tmp_path / "ok"
    for i in range(3):
        dataset.append(str(ok), stamped(make_summary("ok", T0 + i * STEP, seed=i), T0 + i * STEP + 1))
    write_report(dataset.read(str(ok)), RULES, out, now=NOW)
    assert 'id="undrawn"' not in out.read_text()


FAR = (253_402_300_800.0 + 86_400 * 400, -62_170_156_800.0)  # the year 10001; the year 0


def test_a_summary_dated_where_no_reader_can_go_is_refused_by_the_collector():
    from edge_ttt.drift.receiver import Receiver
    from edge_ttt.drift.schema import to_parquet
    from edge_ttt.drift.shipper import encode_chunks

    receiver = Receiver()
    for i, end in enumerate((*FAR, NOW)):
        s = make_summary("far", end, seed=i)
        (message,) = encode_chunks(s.summary_id, to_parquet([s]), 10**6)
        receiver.accept(message, "far")
    assert (receiver.counters.corrupt, receiver.counters.accepted) == (2, 1)


def test_rows_stored_with_such_dates_are_left_out_and_the_fleet_is_still_reported(tmp_path, caplog):
    """Stored before the collector refused them, they made every report and alert fail."""
    from typer.testing import CliRunner

    from edge_ttt.monitor.cli import monitor_app

    location = str(tmp_path / "fleet")
    clocked_fleet(location)
    dataset.append(location, to_table([make_summary("garbled", end, seed=i) for i, end in enumerate(FAR)]))
    dataset.append(location, to_table([make_summary("ancient", -62e9 + i * STEP, seed=i) for i in range(3)]))
    with caplog.at_level("WARNING", logger="edge_ttt.monitor.dataset"):
        table = dataset.read(location)
    assert "garbled" not in table.column("device_id").to_pylist()
    assert any("2 summaries dated outside the years 1 to 9999" in r.getMessage() for r in caplog.records)
    runner = CliRunner()
    result = runner.invoke(monitor_app, ["report", "--dataset", location, "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output  # `ancient` (the year 5) is listed, not drawn
    assert "ancient" in (tmp_path / "r.html").read_text()
    assert runner.invoke(monitor_app, ["alerts", "--dataset", location]).exit_code == 1


def test_an_empty_read_has_no_dates_to_leave_out():
    """`pc.all` of nothing is null, not true: every empty read warned of 0 summaries left out."""
    import pyarrow as pa

    from edge_ttt.drift.schema import readable_times

    assert readable_times(pa.table({"interval_end": pa.array([], pa.timestamp("us", tz="UTC"))})) is None
