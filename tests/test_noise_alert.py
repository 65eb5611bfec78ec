"""The white noise input alignment finds, carried in the drift summaries (`noise_share`, schema 6)
and alerted on by the monitor (`noise` rule): a noisy sensor the class-mix estimates cannot see."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.engine import Engine
from edge_ttt.adapt.input_alignment import InputOptions
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import load_bundle
from edge_ttt.drift.merge import merge_summaries
from edge_ttt.drift.schema import from_table, to_table
from edge_ttt.drift.summary import Adaptation
from edge_ttt.drift.validation import Invalid, check_table
from edge_ttt.monitor import dataset
from edge_ttt.monitor.alerts import evaluate
from edge_ttt.monitor.config import AlertsSection
from tests.model_factory import LENGTH
from tests.test_monitor_collector import T0, make_summary

NOW = T0 + 600


def with_noise(share: list[float] | None, end: float = T0 + 300, device: str = "d"):
    """A real summary whose adaptation carries `share` as the noise found."""
    s = make_summary(device, end)
    s.adaptation = Adaptation(None, None, None, 0.0, 0.0, None, None if share is None else tuple(share))
    return s


def test_the_noise_found_round_trips_and_an_older_file_reads_none():
    s = with_noise([0.0, 0.6])
    (back,) = from_table(to_table([s]))
    assert back.adaptation.noise_share == (0.0, 0.6)
    assert merge_summaries([s, back]).adaptation.noise_share == (0.0, 0.6)
    (old,) = from_table(dataset.rows(to_table([s])).drop_columns(["noise_share"]))  # a version 5 file
    assert old.adaptation.noise_share is None


def test_a_share_outside_0_to_1_is_refused():
    with pytest.raises(Invalid, match="noise_share is outside 0 to 1"):
        check_table(to_table([with_noise([0.0, 1.5])]))
    check_table(to_table([with_noise([0.0, 1.0])]))


@pytest.mark.parametrize(("share", "alerted"), [([0.0, 0.6], True), ([0.1, 0.19], False), (None, False)])
def test_the_noise_rule_names_the_noisy_channels(tmp_path: Path, share, alerted: bool):
    location = str(tmp_path / "fleet")
    dataset.append(location, to_table([with_noise([0.9, 0.9], end=T0 + 100)]))  # earlier: not judged
    dataset.append(location, to_table([with_noise(share)]))
    found = [a for a in evaluate(dataset.read(location), AlertsSection(), now=NOW) if a.rule == "noise"]
    assert bool(found) == alerted
    if alerted:
        (a,) = found
        assert a.value == pytest.approx(0.6) and "c1 60 %" in a.message and "c0" not in a.message
    stricter = AlertsSection(noise_share=0.7)
    assert not [a for a in evaluate(dataset.read(location), stricter, now=NOW) if a.rule == "noise"]


def smooth_noisy(n: int, seed: int = 0) -> np.ndarray:
    """Smooth motion (a first-order autoregression) on every channel, white noise on channel 1."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 6, LENGTH))
    x[:, :, 0] = rng.standard_normal((n, 6))
    for t in range(1, LENGTH):
        x[:, :, t] = 0.98 * x[:, :, t - 1] + 0.2 * rng.standard_normal((n, 6))
    x[:, 1] += 2.0 * rng.standard_normal((n, LENGTH))
    return x.astype(np.float32)


def bundle_with_share(bundle_dir: Path, out: Path, share: float) -> Path:
    copy = shutil.copytree(bundle_dir, out)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["reference"]["class_channels"]["noise_share"] = [share] * 6
    (copy / "manifest.json").write_text(json.dumps(doc))
    return copy


@pytest.mark.parametrize(("source_share", "noisy"), [(0.0, True), (1.0, False)])
def test_the_engine_reports_noise_beyond_the_training_windows(
    bundle_dir: Path, tmp_path: Path, source_share: float, noisy: bool
):
    """The test model was trained on white noise (its share about 1): there nothing counts."""
    bundle = load_bundle(bundle_with_share(bundle_dir, tmp_path / "b", source_share))
    engine = Engine(OrtModel(bundle), "steady", inputs=InputOptions(reliable_quantile=1.0))
    for i in range(0, 64, 16):
        engine.process(smooth_noisy(16, seed=i))
    share = engine.report().adaptation["noise_share"]
    assert len(share) == 6 and all(0.0 <= v <= 1.0 for v in share)
    assert (share[1] > 0.5) == noisy and max(share[:1] + share[2:]) < 0.1
    assert Engine(OrtModel(bundle), "steady", inputs=None).report().adaptation["noise_share"] is None


def test_the_report_shows_the_noise_found_per_device(tmp_path: Path):
    from edge_ttt.monitor.health import health
    from edge_ttt.monitor.intervals import Intervals
    from edge_ttt.monitor.report import write_report

    location = str(tmp_path / "fleet")
    dataset.append(location, to_table([with_noise([0.05, 0.9], device="noisy")]))
    dataset.append(location, to_table([with_noise([0.0, 0.1], device="quiet")]))
    dataset.append(location, to_table([with_noise(None, device="older")]))
    table, rules = dataset.read(location), AlertsSection()
    found = {h.device: h.noise for h in health(Intervals.of(table, rules), rules)}
    assert found == {"noisy": "c1 90 %", "quiet": None, "older": None}
    out = tmp_path / "report.html"
    write_report(table, rules, out, now=NOW)
    page = out.read_text()
    assert "white noise found, % of variance" in page and "<td>c1 90 %</td>" in page
