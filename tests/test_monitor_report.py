"""Alert rules, SQL queries and the HTML report over hand-made fleet datasets."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from html import unescape
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from edge_ttt.drift.schema import to_table
from edge_ttt.drift.summary import Adaptation, DriftSummary, SummaryCollector
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import COLUMNS, evaluate
from edge_ttt.monitor.cli import monitor_app
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.health import health
from edge_ttt.monitor.intervals import Intervals, psi_limit
from edge_ttt.monitor.report import REPORT_COLUMNS, write_report
from tests.test_drift_stats import reference
from tests.test_monitor_collector import T0, make_summary

STEP = 300.0
RULES = AlertsSection(
    psi_threshold=0.25,
    psi_intervals=3,
    reset_rate=0.05,
    reset_intervals=4,
    entropy_rise=0.2,
    entropy_intervals=4,
)
NOW = T0 + 6 * STEP  # just after the last interval of the fleet below


def fleet(location: str) -> None:
    """Six intervals per device. `drifting`: channel c0 shifted by 3 sd in its last three;
    `resetting`: 4 resets per 40 windows; `confused`: entropy rising from 0.2 to 0.8 nats in its last
    four; `gone`: one summary, 90 minutes before NOW; `steady`: nothing. One file per interval."""
    for i in range(6):
        end = T0 + (i + 1) * STEP
        made = [
            make_summary("steady", end, seed=i),
            make_summary("drifting", end, shift=3.0 if i >= 3 else 0.0, seed=100 + i),
            make_summary("resetting", end, seed=200 + i, resets=4),
            make_summary("confused", end, seed=300 + i, entropy=0.2 * max(i - 1, 1)),
        ]
        dataset.append(location, to_table(made))
    dataset.append(location, to_table([make_summary("gone", T0 - 3600, seed=400)]))


@pytest.fixture
def location(tmp_path) -> str:
    path = str(tmp_path / "fleet")
    fleet(path)
    return path


def test_alert_rules_give_exactly_the_expected_alerts(location):
    found = evaluate(dataset.read(location), RULES, now=NOW)
    assert sorted((a.device, a.rule) for a in found) == [
        ("confused", "entropy"),
        ("drifting", "psi"),
        ("gone", "silent"),
        ("resetting", "resets"),
    ]
    (resets,) = [a for a in found if a.rule == "resets"]
    assert resets.value == pytest.approx(16 / 160)
    (silent,) = [a for a in found if a.rule == "silent"]
    assert silent.value == pytest.approx(NOW - (T0 - 3600))


def test_psi_must_stay_above_the_threshold_for_k_consecutive_intervals(location):
    table = dataset.read(location)

    def psi_alerts(**rules) -> list[str]:
        return [a.device for a in evaluate(table, RULES.model_copy(update=rules), now=NOW) if a.rule == "psi"]

    assert psi_alerts() == ["drifting"]
    assert psi_alerts(psi_intervals=4) == []  # drifting for three intervals only
    assert psi_alerts(psi_threshold=1e6) == []


def test_the_alerts_command_prints_them_as_json_and_fails(location, tmp_path):
    config = tmp_path / "monitor.toml"
    config.write_text('[collector]\ndataset = "fleet"\n[alerts]\nsilent_s = 1e12\nreset_intervals = 4\n')
    result = CliRunner().invoke(
        monitor_app, ["alerts", "--dataset", location, "--config", str(config), "--json"]
    )
    assert result.exit_code == 1, result.output
    assert sorted((a["device"], a["rule"]) for a in json.loads(result.output)) == [
        ("confused", "entropy"),
        ("drifting", "psi"),
        ("resetting", "resets"),
    ]


def test_a_bad_config_is_reported_with_its_key(location, tmp_path):
    config = tmp_path / "monitor.toml"
    config.write_text('[collector]\ndataset = "fleet"\n[alerts]\npsi_treshold = 0.3\n')
    result = CliRunner().invoke(monitor_app, ["alerts", "--dataset", location, "--config", str(config)])
    assert result.exit_code == 2 and "alerts.psi_treshold" in result.output


def test_query_runs_sql_over_the_dataset(location):
    sql = "SELECT device_id, count(*) AS n, sum(resets) AS resets FROM summaries GROUP BY 1 ORDER BY 1"
    result = CliRunner().invoke(monitor_app, ["query", sql, "--dataset", location, "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows == [
        {"device_id": "confused", "n": 6, "resets": 0},
        {"device_id": "drifting", "n": 6, "resets": 0},
        {"device_id": "gone", "n": 1, "resets": 0},
        {"device_id": "resetting", "n": 6, "resets": 24},
        {"device_id": "steady", "n": 6, "resets": 0},
    ]
    table = CliRunner().invoke(
        monitor_app, ["query", "SELECT DISTINCT date FROM summaries", "--dataset", location]
    )
    assert table.exit_code == 0 and "2023-11-14" in table.output


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    line, rest = result.output.split("\n", 1)
    assert rest == "" and line.startswith("error: ")
    return line


@pytest.mark.parametrize("command", [["alerts"], ["alerts", "--json"], ["report", "--out"]])
def test_an_empty_or_missing_dataset_is_one_line_and_exit_2(tmp_path, command):
    """Not an empty report that looks like a healthy fleet, nor `[]` with exit 0."""
    if command[-1] == "--out":
        command = [*command, str(tmp_path / "r.html")]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(monitor_app, [*command, "--dataset", str(empty)])
    assert f"{empty} holds no drift summaries yet. Fix: " in _one_line_error(result)
    missing = tmp_path / "missing"
    result = CliRunner().invoke(monitor_app, [*command, "--dataset", str(missing)])
    assert f"{missing} is not a dataset directory. Fix: " in _one_line_error(result)
    assert not (tmp_path / "r.html").exists()
    result = CliRunner().invoke(monitor_app, [*command, "--dataset", "ftp://fleet/dataset"])  # no such fs
    assert "ftp://fleet/dataset: cannot open it (Unrecognized filesystem type" in _one_line_error(result)


def test_a_folder_of_other_files_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = CliRunner().invoke(monitor_app, ["alerts", "--dataset", str(tmp_path)])
    assert f"{tmp_path} is not a fleet dataset (" in _one_line_error(result)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", 'Parser Error: syntax error at or near "SELEC"'),
        ("SELECT nope FROM summaries", 'Binder Error: Referenced column "nope" not found'),
    ],
)
def test_bad_sql_is_one_line_with_duckdbs_message(location, sql, message):
    result = CliRunner().invoke(monitor_app, ["query", sql, "--dataset", location])
    line = _one_line_error(result)
    assert line.startswith(f"error: {message}") and "LINE 1" not in line


def test_compact_command(location):
    result = CliRunner().invoke(monitor_app, ["compact", "--dataset", location])
    assert result.exit_code == 0 and json.loads(result.output)["files_merged"] == 7
    assert len(dataset.read(location)) == 25


def damage(location: str) -> list[Path]:
    """A truncated copy of one of the dataset's files and a stray non-Parquet file: what a failing
    disk or a careless hand leaves. The paths."""
    first = Path(sorted(dataset.open_dataset(location).files)[0])
    truncated = first.with_name("part-truncated.parquet")
    truncated.write_bytes(first.read_bytes()[:300])
    stray = first.with_name("part-notes.parquet")
    stray.write_text("not parquet")
    return [truncated, stray]


def test_unreadable_files_are_named_and_left_out_and_the_rest_is_read(location, tmp_path, caplog):
    bad = damage(location)
    result = CliRunner().invoke(monitor_app, ["alerts", "--dataset", location, "--json"])
    assert result.exit_code == 1 and {a["device"] for a in json.loads(result.stdout)} >= {"drifting"}
    warned = [r.getMessage() for r in caplog.records if "unreadable file left out" in r.getMessage()]
    assert all(any(str(p) in m for m in warned) for p in bad) and "Fix: move it out of" in warned[0]
    ids = dataset.read(location, ["summary_id"])["summary_id"].to_pylist()
    assert len(ids) == 25 and dataset.summary_ids(location) == set(ids)  # every good row
    sql = "SELECT count(*) AS n FROM summaries"
    result = CliRunner().invoke(monitor_app, ["query", sql, "--dataset", location, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"n": 25}
    out = tmp_path / "report.html"
    result = CliRunner().invoke(monitor_app, ["report", "--dataset", location, "--out", str(tmp_path)])
    assert result.exit_code == 2 and f"--out {tmp_path} is a directory" in result.output  # before drawing
    result = CliRunner().invoke(monitor_app, ["report", "--dataset", location, "--out", str(out)])
    assert result.exit_code == 0 and out.stat().st_size > 10_000
    result = CliRunner().invoke(monitor_app, ["compact", "--dataset", location])
    assert result.exit_code == 0 and json.loads(result.stdout)["files_merged"] == 7
    assert all(p.exists() for p in bad) and len(dataset.read(location)) == 25  # left in place, not merged


def test_a_collector_starts_on_a_dataset_with_an_unreadable_file_and_knows_the_rest(location):
    from edge_ttt.monitor.collector import Collector
    from tests.test_monitor_collector import config

    ids = set(dataset.read(location, ["summary_id"])["summary_id"].to_pylist())
    damage(location)
    collector = Collector(config(1, location))  # not started: the dataset is read at construction
    assert collector.receiver.seen == ids  # duplicates of stored summaries are still recognised


def test_the_report_ranks_the_drifting_device_first_and_shows_its_alert(location, tmp_path):
    out = tmp_path / "report.html"
    alerts = write_report(dataset.read(location), RULES, out, now=NOW)
    html = out.read_text()
    ranking = html.split('<table id="ranking">')[1].split("</table>")[0]
    assert re.findall(r"<tr><td>([\w-]+)</td>", ranking)[0] == "drifting"
    assert "drifting</b> [psi]" in html and len(alerts) == 4
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    # accuracy over time (the class counts give an estimate), the heat map, reference against
    # current for the worst channels, drift over time
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "drifting: c0 (PSI" not in html  # the plot's titles are inside the PNG, not the page
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # self-contained
    result = CliRunner().invoke(
        monitor_app, ["report", "--dataset", location, "--out", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 0 and (tmp_path / "r.html").stat().st_size > 10_000
    # the command reads the histograms of the plotted devices only, and still draws them
    assert 'alt="worst channel, reference against latest interval"' in (tmp_path / "r.html").read_text()


def test_the_fleet_summary_counts_what_agents_lost_on_the_way(tmp_path):
    location = str(tmp_path / "fleet")
    made = [make_summary("a", T0 + STEP, seed=1), make_summary("b", T0 + STEP, seed=2)]
    made[0].spool_dropped, made[0].frames_missing = 3, 5  # an agent's spool over its bound, a gap
    made[1].spool_dropped = 2
    dataset.append(location, to_table(made))
    out = tmp_path / "report.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    html = out.read_text()
    assert '<li id="lost"><b>5</b> drift summaries lost' in html
    assert '<li id="missing"><b>5</b> sensor frames' in html
    clean = tmp_path / "clean"
    dataset.append(str(clean), to_table([make_summary("c", T0 + STEP, seed=3)]))
    write_report(dataset.read(str(clean)), RULES, out, now=NOW)
    assert '<li id="lost"><b>0</b> drift summaries lost' in out.read_text()


def test_the_health_table_says_how_each_device_was_found_mounted(tmp_path):
    location = str(tmp_path / "fleet")
    made = [make_summary(name, T0 + STEP, seed=i) for i, name in enumerate(("swapped", "plain", "old"))]
    level = Adaptation(None, None, None, 0.0, 0.0)
    made[0].adaptation = replace(level, mounting="sensors exchanged, turned 180° about x")
    made[1].adaptation = replace(level, mounting="as mounted")
    dataset.append(location, to_table(made))  # "old": no adaptation level, as before version 5
    out = tmp_path / "report.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    rows = {
        row.split("</td>")[0]: row
        for row in out.read_text().split('<table id="health">')[1].split("<tr><td>")[1:]
    }
    noise = "\n<td>-</td></tr>"  # then the white noise found: none in these
    assert "<td>sensors exchanged, turned 180° about x</td>" + noise in rows["swapped"]
    assert "<td>as mounted</td>" + noise in rows["plain"]
    assert "<td>-</td>" + noise in rows["old"]


def test_the_health_table_tells_windows_without_a_step_apart_by_why(tmp_path):
    """One "skipped share" of 1.000 read as "adaptation did nothing" where the statistics adapted."""
    location = str(tmp_path / "fleet")
    s = make_summary("d", T0 + STEP, windows=40)
    s.counters.update(skipped_no_drift=30, skipped_unreliable=4)
    dataset.append(location, to_table([s]))
    out = tmp_path / "report.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    html = out.read_text()
    assert "<th>no step: no drift, %</th><th>no step: unreliable, %</th>" in html
    assert "statistics adapt on every valid window" in html
    row = html.split('<table id="health">')[1].split("<tr><td>d</td>")[1]
    assert re.findall(r"<td>([^<]*)</td>", row)[:5] == ["40", "0", "0", "75.0", "10.0"]  # %, as throughout


def test_the_worst_channel_is_the_one_furthest_above_its_limit_and_its_shares_are_plotted(location):
    from edge_ttt.monitor import distributions

    row = {"psi": [2.0, 1.0, None], "psi_limit": [4.0, 0.5, 1.0]}
    assert distributions.worst_channel(row) == 1  # 2x its limit, where channel 0 is at half of it
    assert distributions.worst_channel({"psi": [2.0, 1.0], "psi_limit": None}) == 0
    assert distributions.worst_channel({"psi": [None], "psi_limit": None}) is None
    table = dataset.read(location)
    rows = distributions.latest_rows(table, ["drifting", "steady"])
    assert set(rows) == {"drifting", "steady"}
    latest = max(
        r["interval_end"] for r in table.filter(pc.equal(table["device_id"], "drifting")).to_pylist()
    )
    assert rows["drifting"]["interval_end"] == latest and distributions.worst_channel(rows["drifting"]) == 0
    assert distributions.plot(["drifting"], rows).startswith("iVBOR")  # a PNG
    assert distributions.plot(["nowhere"], rows) is None


def test_a_table_without_histograms_says_why_the_plot_is_missing(location, tmp_path):
    out = tmp_path / "report.html"
    write_report(
        dataset.read(location, REPORT_COLUMNS), RULES, out, now=NOW, bins=dataset.reference_bins(location)
    )
    assert "Not shown: the summaries' histograms" in out.read_text()


def _chromium(out: Path, name: str, tmp_path: Path, height: int = 1600) -> str:
    """Open the report in headless chromium: a screenshot and the DOM after parsing, both kept in
    test-artifacts/ under `name`; the DOM returned. Skipped (failed with EDGE_TTT_REQUIRE_CHROMIUM=1)
    without chromium."""
    chromium = shutil.which("chromium")
    if chromium is None:
        reason = (
            "chromium is not installed (apt-get install chromium): the report was not opened in a browser"
        )
        if os.environ.get("EDGE_TTT_REQUIRE_CHROMIUM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / f"{name}.png"
    shot.unlink(missing_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
    ]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", f"--window-size=1200,{height}", out.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000 and shot.read_bytes().startswith(b"\x89PNG")
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", out.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
        text=True,
    ).stdout
    (artifacts / f"{name}-dom.html").write_text(dom)
    return dom


def test_the_report_renders_in_headless_chromium(location, tmp_path):
    out = tmp_path / "report.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    dom = _chromium(out, "monitor-report", tmp_path)
    # the DOM after the browser parsed it: the summary, the ranking and every plot decoded
    summary = re.sub(r"\s+", " ", dom.split('<ul id="summary">')[1].split("</ul>")[0])
    assert "<b>5</b> devices" in summary and "<b>1</b> drifting" in summary
    assert "<b>1</b> silent" in summary and "<b>0</b> with their clock off" in summary  # gone
    assert "<details open=" in dom  # four alerts: listed open
    assert 'id="ranking-more"' not in dom  # five devices: nothing folded
    assert _ranking(dom)[0][0] == "drifting" and len(_ranking(dom)) == 5
    assert len(re.findall(r'<img alt="[^"]+"\s+src="data:image/png;base64,', dom)) == 4


HOSTILE_IDS = [
    "a$\\frac{$b",  # math markup to a plotting library: it failed to parse and stopped the report
    "<script>alert(1)</script>",
    "ノード1",
    "d" * 300,
    "q\"'&amp;",
]


def test_device_ids_are_shown_as_written_whatever_they_hold(tmp_path):
    """Device ids are whatever a topic level holds. Each is shown as text, in the tables and the
    figures' titles; none is markup, and none stops the report."""
    location = str(tmp_path / "fleet")
    for i in range(6):
        end = T0 + (i + 1) * STEP
        shift = 3.0 * (i >= 3)
        made = [make_summary(d, end, shift=shift, seed=10 * k + i) for k, d in enumerate(HOSTILE_IDS)]
        dataset.append(location, to_table(made))
    out = tmp_path / "report.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    dom = _chromium(out, "monitor-report-hostile-ids", tmp_path)
    assert "<script" not in dom.split("<body>")[1]
    shown = {unescape(r[0]) for r in _ranking(dom)}
    assert shown == set(HOSTILE_IDS[:-2]) | {"d" * 32 + "…" + "d" * 12, HOSTILE_IDS[-1]}
    alerted = re.findall(r'<li class="alert"><b>([^<]*)</b>', dom)
    assert {unescape(a) for a in alerted} == set(HOSTILE_IDS)  # the alerts list keeps ids whole
    assert len(re.findall(r'<img alt="[^"]+"\s+src="data:image/png;base64,', dom)) == 4


def test_a_fleet_of_500_devices_reads_in_a_browser(tmp_path):
    """The benchmark's synthetic fleet, 500 devices of six intervals (every fifth drifted, its source
    model estimated at 3/7): the summary at the top counts them, the drifted rank first, every device
    has its row, the plots stay to the top of the ranking."""
    from benchmarks.monitor_report import T0 as FLEET_T0
    from benchmarks.monitor_report import synthetic

    location = str(tmp_path / "fleet")
    synthetic(location, 500, 6)
    out = tmp_path / "report.html"
    write_report(dataset.read(location), AlertsSection(), out, now=FLEET_T0 + 7 * 60)
    dom = _chromium(out, "monitor-report-500", tmp_path, height=2400)
    summary = re.sub(r"\s+", " ", dom.split('<ul id="summary">')[1].split("</ul>")[0])
    assert "<b>500</b> devices" in summary and "<b>100</b> drifting" in summary
    assert "<b>0</b> silent" in summary and "<b>0</b> with their clock off" in summary
    ranking = _ranking(dom)
    assert len(ranking) == 500
    # the worst 25 open, the other 475 folded: the figures are no longer 25,000 px down
    for table in ("ranking", "health"):
        assert (
            dom.count(f'<table id="{table}">') == 1
            and len(_rows(dom.split(f'id="{table}-more"')[0], table)) == 25
        )
        folded = dom.split(f'<details id="{table}-more"><summary>')[1]
        assert (
            re.sub(r"\s+", " ", folded).startswith("the other 475 devices") and len(_rows(dom, table)) == 500
        )
    assert {r[0] for r in ranking[:100]} == {f"dev-{d:04d}" for d in range(0, 500, 5)}
    assert all(float(r[1]) > 30 for r in ranking[:100])  # 80 % reference, source estimated near 43 %
    assert len(re.findall(r'<img alt="[^"]+"\s+src="data:image/png;base64,', dom)) == 4
    counts = re.sub(r"\s+", " ", dom.split('<p id="alert-counts">')[1].split("</p>")[0])
    assert counts.startswith("<b>100</b> accuracy, <b>100</b> psi (200 in all")
    assert "<details><summary>every alert" in dom  # 200 alerts: folded, the ranking comes next


def test_a_fleet_whose_devices_are_all_silent_says_so_at_the_top(location, tmp_path):
    """A fleet silent for 1,116 days looked fine at the top of the page."""
    out = tmp_path / "report.html"
    write_report(dataset.read(location), RULES, out, now=NOW + 1000 * 86_400)
    summary = re.sub(r"\s+", " ", out.read_text().split('<ul id="summary">')[1].split("</ul>")[0])
    assert "<b>5</b> silent (no summary received for more than 15 min)" in summary


def test_each_line_over_time_has_its_own_colour_and_style(tmp_path, monkeypatch):
    """With 12 devices and 10 colours, two lines shared a colour; the symlog axis had ticks at 0
    and 1 only."""
    from edge_ttt.monitor import plots
    from edge_ttt.monitor.health import health

    location = str(tmp_path / "fleet")
    for i in range(2):
        dataset.append(
            location, to_table([make_summary(f"d{k:02d}", T0 + (i + 1) * STEP, seed=k) for k in range(12)])
        )
    intervals = Intervals.of(dataset.read(location), RULES)
    monkeypatch.setattr(plots, "png", lambda fig: fig)
    fig = plots.timeline(health(intervals, RULES), intervals, np.ones(24, bool))
    (ax,) = fig.axes
    drawn = [
        (line.get_color(), line.get_linestyle())
        for line in ax.get_lines()
        if line.get_label() != "drift limit"
    ]
    assert len(drawn) == 12 and len(set(drawn)) == 12
    assert [t for t in ax.get_yticks() if t <= 2] == [0, 0.25, 0.5, 0.75, 1, 1.5, 2]


def _mix(estimate: float, n: int = 60) -> np.ndarray:
    """Class counts of n windows whose class-mix bound is `estimate` under a uniform prior over 3
    classes (bound = 1/3 + 1 - top share)."""
    top = round(n * (4 / 3 - estimate))
    return np.array([top, (n - top) // 2, n - top - (n - top) // 2])


def _estimated(device: str, i: int, shift: float, served: float, source: float):
    """A summary of 60 windows whose served and source estimates (class-mix bounds) are `served`
    and `source`."""
    s = make_summary(device, T0 + (i + 1) * STEP, shift=shift, seed=500 + 10 * i + len(device), windows=60)
    s.class_counts, s.source_class_counts = _mix(served), _mix(source)
    return s


# device: (shift of c0 from interval 0 on, served estimate, source estimate)
ESTIMATED = {"clean": (0.0, 0.8, 0.8), "rotated": (3.0, 0.75, 0.5), "noisy": (1.5, 0.6, 0.55)}


@pytest.fixture
def estimated_fleet(tmp_path) -> str:
    path = str(tmp_path / "estimated")
    for i in range(4):
        dataset.append(path, to_table([_estimated(d, i, *spec) for d, spec in ESTIMATED.items()]))
    return path


def _rows(html: str, table_id: str) -> list[list[str]]:
    """The cells of a table's rows, those folded below it (`<table id="ID-rest">`) included."""
    rows = []
    for part in (table_id, f"{table_id}-rest"):
        if f'<table id="{part}">' in html:
            table = html.split(f'<table id="{part}">')[1].split("</table>")[0]
            rows += [re.findall(r"<td>([^<]*)</td>", row) for row in table.split("<tr>")[2:]]
    return rows


def _ranking(html: str) -> list[list[str]]:
    return _rows(html, "ranking")


def test_the_report_ranks_by_estimated_accuracy_lost_and_sums_up_the_fleet(estimated_fleet, tmp_path):
    """The loss is the reference minus the lower estimate: `rotated` serves 75 % but its source
    model is at 50 %, so it ranks above `noisy` (60 % and 55 %)."""
    out = tmp_path / "report.html"
    write_report(dataset.read(estimated_fleet), RULES, out, now=NOW, reference_accuracy=0.8)
    html = out.read_text()
    rows = _ranking(html)
    assert [r[0] for r in rows] == ["rotated", "noisy", "clean"]
    # accuracy lost, served and source estimate, gain, in points
    assert [r[1:5] for r in rows] == [
        ["30.0", "75.0", "50.0", "25.0"],
        ["25.0", "60.0", "55.0", "5.0"],
        ["0.0", "80.0", "80.0", "0.0"],
    ]
    assert rows[0][6].startswith("c0 ")  # the drifted channel explains the loss
    summary = re.sub(r"\s+", " ", html.split('<ul id="summary">')[1].split("</ul>")[0])
    assert "<b>3</b> devices" in summary and "<b>2</b> drifting" in summary
    assert "<b>1</b> estimated to serve predictions more than 15.0 % points" in summary  # noisy
    assert "<b>1</b> rescued by adaptation" in summary  # rotated: source 30 points lost, served 5
    assert "<b>2</b> of 3 with both estimates where adaptation helped" in summary
    assert "reference: the bundle&#39;s validation accuracy" in html
    write_report(dataset.read(estimated_fleet), RULES, out, now=NOW, reference_accuracy=0.95)
    assert "<b>0</b> rescued by adaptation" in re.sub(r"\s+", " ", out.read_text())  # rotated serves 20 lost


def test_without_a_reference_no_loss_is_known_and_drift_orders(estimated_fleet, tmp_path):
    """Summaries before version 4 carry no reference accuracy: no loss, ranked by drift, clean last."""
    out = tmp_path / "report.html"
    write_report(dataset.read(estimated_fleet), RULES, out, now=NOW)
    rows = _ranking(out.read_text())
    assert [(r[0], r[1]) for r in rows] == [("rotated", "n/a"), ("noisy", "n/a"), ("clean", "n/a")]
    assert "summaries before version 4 do not: pass --bundle" in out.read_text()


def _blocky(device: str, i: int, shift: float) -> DriftSummary:
    """40 in-distribution windows whose 16 samples move together (one standard normal draw per
    window and channel, as slow sensor signals do): 640 samples, but 40 draws."""
    rng = np.random.default_rng(700 + i + 50 * int(shift))
    c = SummaryCollector(reference(), device, "0", "ab" * 32, "steady", interval_s=1e9, now=T0 + i * STEP)
    x = np.repeat(rng.standard_normal((40, 2, 1)), 16, axis=2)
    x[:, 0] += shift
    h = np.full(40, 0.5)
    c.observe(x, rng.integers(0, 3, 40), np.exp(-h), h, None, {}, None, [5.0] * 40)
    return c.close(T0 + (i + 1) * STEP)


def test_the_drift_alert_counts_windows_not_samples(tmp_path):
    """In-distribution intervals of 40 windows have a PSI above the fixed 0.25 from sampling noise
    alone; the limit at 40 windows (chi-square, 15 degrees of freedom, 0.999) keeps them quiet, while
    a 1.5 sd shift of the same size still alerts."""
    location = str(tmp_path / "blocky")
    for i in range(4):
        dataset.append(location, to_table([_blocky("steady", i, 0.0), _blocky("shifted", i, 1.5)]))
    table = dataset.read(location)
    intervals = Intervals.of(table, RULES)
    steady = intervals.max_psi[intervals.scores(intervals.devices.index("steady"))]
    assert len(steady) == 4 and all(steady > RULES.psi_threshold)  # the fixed threshold fires
    assert psi_limit(16, 40, RULES) == pytest.approx(37.697 / 40, rel=0.01)  # scipy chi2.ppf(0.999, 15)
    found = evaluate(table, RULES, now=T0 + 5 * STEP)
    assert [(a.device, a.rule) for a in found] == [("shifted", "psi")]
    ratio = found[0].value / psi_limit(16, 40, RULES)  # no calibration in these summaries
    assert f"{ratio:.1f}x its no-drift limit" in found[0].message and "at 40 windows" in found[0].message
    # the commands read the bins once per model instead of every row's ref_share: the same alerts
    bins = dataset.reference_bins(location)
    assert bins == {"ab" * 32: [16, 16]}
    assert evaluate(dataset.read(location, COLUMNS), RULES, now=T0 + 5 * STEP, bins=bins) == found


def test_each_device_says_since_when_it_drifts(location, tmp_path):
    """`drifting` is shifted in its last three intervals: since the start of the fourth."""
    out = tmp_path / "report.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    since = {r[0]: r[7] for r in _ranking(out.read_text())}
    start = dt.datetime.fromtimestamp(T0 + 3 * STEP, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert since == {"drifting": start, "steady": "-", "resetting": "-", "confused": "-", "gone": "-"}


def test_an_interval_too_small_to_judge_neither_ends_the_drift_nor_its_alert(location, tmp_path):
    """A last interval of 3 windows (a stream that stopped): `drifting` still drifts since the fourth
    interval, and its psi alert still holds."""
    dataset.append(location, to_table([make_summary("drifting", T0 + 6.5 * STEP, seed=9, windows=3)]))
    out = tmp_path / "report.html"
    alerts = write_report(dataset.read(location), RULES, out, now=NOW + STEP)
    ranking = {r[0]: r for r in _ranking(out.read_text())}
    start = dt.datetime.fromtimestamp(T0 + 3 * STEP, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert ranking["drifting"][7] == start
    assert ("drifting", "psi") in [(a.device, a.rule) for a in alerts]
    # the channels over their limit beside it are the judged interval's: not "none" (3 windows'
    # sampling limit is wide), which contradicted "drifting since" and the alert in one row
    assert ranking["drifting"][6].startswith("c0 ")
    # and so are the drift column and the heat map's row: the alert's interval, not the 3 windows
    table = dataset.read(location)
    intervals = Intervals.of(table, RULES)
    (h,) = [h for h in health(intervals, RULES) if h.device == "drifting"]
    at = intervals.scores(intervals.devices.index("drifting"))
    assert h.judged == 2 and h.score == float(intervals.max_psi[at][-2]) != float(intervals.max_psi[at][-1])
    assert ranking["drifting"][5] == f"{h.score:.3f}"


def test_the_estimates_are_drawn_over_time_when_there_are_any(estimated_fleet, tmp_path):
    out = tmp_path / "report.html"
    write_report(dataset.read(estimated_fleet), RULES, out, now=NOW, reference_accuracy=0.8)
    html = out.read_text()
    assert 'alt="estimated accuracy over time per device"' in html
    assert (
        len(re.findall(r'src="data:image/png;base64,', html)) == 4
    )  # with the heat map, the worst channels and drift over time


def test_a_device_with_thousands_of_channels_does_not_blow_up_the_heat_map(tmp_path):
    """The heat map grew a column per channel: one device's summary with 20,000 channels (a forged
    payload fits within the collector's bounds) took 210 s and 12 GB to draw. It shows the 40 most
    drifted channels."""
    import pyarrow as pa

    location = str(tmp_path / "fleet")
    fleet(location)
    rows = []
    for i in range(3):
        row = to_table([make_summary("wide", T0 + (i + 1) * STEP, seed=500 + i)]).to_pylist()[0]
        row["channels"] = [f"w{k}" for k in range(3000)]
        row["psi"] = [float(k % 7) for k in range(3000)]
        row["psi_limit"] = [1.0] * 3000
        rows.append(row)
    dataset.append(location, pa.Table.from_pylist(rows, schema=to_table([make_summary("x", T0)]).schema))
    out = tmp_path / "report.html"
    write_report(dataset.read(location), RULES, out, now=NOW)
    html = out.read_text()
    heat = re.search(r'alt="per-channel PSI heat map"\s+src="data:image/png;base64,([^"]+)"', html)[1]
    width = int.from_bytes(base64.b64decode(heat)[16:20], "big")  # the PNG header's width
    assert 800 < width < 4000


def test_a_summary_whose_lists_do_not_fit_together_does_not_stop_the_report(tmp_path):
    """Per-channel lists of unequal lengths (a forged or broken payload): the worst channel beyond
    the reference's bins made the reference-against-current plot, and the whole report, fail."""
    import pyarrow as pa

    location = str(tmp_path / "fleet")
    fleet(location)
    rows = []
    for i in range(3):
        row = to_table([make_summary("odd", T0 + (i + 1) * STEP, seed=600 + i)]).to_pylist()[0]
        row["channels"] = ["only-one"]
        row["psi"] = [0.1, 50.0, 0.2]  # the worst channel has no name, no reference, no histogram
        row["psi_limit"] = [1.0]
        rows.append(row)
    dataset.append(location, pa.Table.from_pylist(rows, schema=to_table([make_summary("x", T0)]).schema))
    out = tmp_path / "report.html"
    alerts = write_report(dataset.read(location), RULES, out, now=NOW)
    assert "odd" in out.read_text() and any(a.device == "odd" for a in alerts)
    runner = CliRunner()
    result = runner.invoke(monitor_app, ["report", "--dataset", location, "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "broken",
    [
        {"class_counts": [None, 3, None]},  # a null count stopped the estimates (ArrowInvalid)
        {"source_class_counts": [None, None, None]},
        {"channels": [None, None]},  # a null channel name stopped the heat map (TypeError)
    ],
)
def test_null_values_inside_a_summarys_lists_do_not_stop_the_report(tmp_path, broken):
    """Found by mutating the list fields of stored summaries at random (lengths, nulls, empties) and
    rendering: these made the report and the alerts of the whole fleet fail."""
    import pyarrow as pa

    location = str(tmp_path / "fleet")
    fleet(location)
    rows = []
    for i in range(4):
        row = to_table([make_summary("broken", T0 + (i + 1) * STEP, seed=700 + i)]).to_pylist()[0]
        row.update({k: v[: len(row[k] or [])] if k.endswith("counts") else v for k, v in broken.items()})
        rows.append(row)
    dataset.append(location, pa.Table.from_pylist(rows, schema=to_table([make_summary("x", T0)]).schema))
    table = dataset.read(location)
    alerts = write_report(table, RULES, tmp_path / "report.html", now=NOW)
    assert "broken" in (tmp_path / "report.html").read_text()
    assert evaluate(table, RULES, now=NOW) == alerts
