"""`monitor report|alerts --since`: a fleet's recent summaries only, by when the collector received
them, so that months of history need not be read; devices that went silent before stay in."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from typer.testing import CliRunner

from edge_ttt.drift.schema import to_table
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import COLUMNS
from edge_ttt.monitor.cli import monitor_app
from edge_ttt.monitor.collector import received
from tests.test_monitor_collector import make_summary

HOUR = 3600.0


def recent_fleet(location: str, now: float) -> None:
    """Two days of `busy` (a summary an hour, the last a minute ago), `rtc` (dated 1970, received
    within the last hours),
    `gone` (nothing for a day), and `legacy` rows without `received` (dated within the last hours)."""
    for h in range(48):
        at = now - 60 - (47 - h) * HOUR
        dataset.append(location, received(to_table([make_summary("busy", at, seed=h)]), at + 1))
    for h in range(3):
        at = now - 60 - (2 - h) * HOUR
        dataset.append(location, received(to_table([make_summary("rtc", 1_000 + h * HOUR, seed=h)]), at))
        dataset.append(location, to_table([make_summary("legacy", at, seed=10 + h)]))
    for h in range(3):
        at = now - (30 - h) * HOUR
        dataset.append(location, received(to_table([make_summary("gone", at, seed=20 + h)]), at + 1))


def test_read_since_keeps_what_arrived_since_and_devices_silent_since(tmp_path):
    location, now = str(tmp_path / "fleet"), time.time()
    recent_fleet(location, now)
    table = dataset.read_since(location, ["device_id", "interval_end"], now - 6 * HOUR)
    counts = Counter(table.column("device_id").to_pylist())
    # busy: its last 6 hours; rtc: all three (received lately, whatever their dates);
    # legacy: by date; gone: nothing since, so its newest, to be called silent
    assert counts == {"busy": 6, "rtc": 3, "legacy": 3, "gone": 1}
    newest = dataset.read_since(location, COLUMNS, now + HOUR)  # nothing since: each device's newest
    assert sorted(newest.column("device_id").to_pylist()) == ["busy", "gone", "legacy", "rtc"]
    assert max(newest.column("interval_end").to_pylist()).timestamp() == pytest.approx(now - 60)
    assert dataset.read(location, ["device_id"]).num_rows == 48 + 3 + 3 + 3


def test_the_commands_take_since_as_a_duration_or_a_date_and_refuse_anything_else(tmp_path):
    location, now = str(tmp_path / "fleet"), time.time()
    recent_fleet(location, now)
    runner = CliRunner()
    result = runner.invoke(monitor_app, ["alerts", "--dataset", location, "--since", "6h", "--json"])
    assert result.exit_code == 1, result.output  # gone is silent, rtc's clock is behind
    found = {(a["device"], a["rule"]) for a in json.loads(result.stdout)}
    assert {("gone", "silent"), ("rtc", "clock")} <= found and ("busy", "silent") not in found
    out = tmp_path / "r.html"
    day = time.strftime("%Y-%m-%d", time.gmtime(now - 86_400))
    result = runner.invoke(monitor_app, ["report", "--dataset", location, "--out", str(out), "--since", day])
    assert result.exit_code == 0, result.output
    assert f"received since {day} 00:00:00 UTC" in out.read_text()
    for bad in ("yesterday", "6 hours", "-2h"):
        result = runner.invoke(monitor_app, ["alerts", "--dataset", location, "--since", bad])
        assert result.exit_code == 2 and "--since" in result.output and "Fix:" in result.output
        assert len(result.output.strip().splitlines()) == 1
