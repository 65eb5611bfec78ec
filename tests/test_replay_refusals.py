"""`edge-ttt replay` on logs and flags that do not fit: one line and the fix, exit 2, and the notes
that say what an accuracy is worth (classes matched by name, windows the input guard refused)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_ttt.cli import app
from edge_ttt.recordlog import RecordedLog, write_log
from tests.conftest import CHANNELS, synthetic_log

pytest.importorskip("torch")  # the bundles are exported here
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def replayed(bundle: Path, log: RecordedLog, path: Path, *args: object) -> dict:
    write_log(path, log)
    result = invoke("replay", "--artifacts", bundle, "--log", path, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refusal(bundle: Path, log_path: Path, *args: object) -> str:
    """The one line a refused replay prints (exit 2, nothing on stdout)."""
    result = invoke("replay", "--artifacts", bundle, "--log", log_path, *args)
    assert result.exit_code == 2 and result.stdout == "", result.output
    (line,) = result.stderr.splitlines()
    return line


def test_labels_are_matched_to_the_models_classes_by_name(bundle_dir: Path, tmp_path: Path):
    """The same samples with the class names in another order (as `datasets import` sorts them)
    score the same; a log without names keeps its indices."""
    log = synthetic_log(devices=2, seconds=20.0)  # c0, c1, c2: the first of the model's c0..c4
    names = ("c2", "c0", "c1")
    shuffled = replace(log, class_names=names, label=np.array([names.index(f"c{y}") for y in log.label]))
    assert (shuffled.label != log.label).any()
    want = replayed(bundle_dir, log, tmp_path / "model.parquet", "--policy", "source")
    got = replayed(bundle_dir, shuffled, tmp_path / "shuffled.parquet", "--policy", "source")
    assert want["accuracy"] is not None
    assert (got["accuracy"], got["device_accuracy"]) == (want["accuracy"], want["device_accuracy"])
    by_index = replayed(
        bundle_dir, replace(shuffled, class_names=None), tmp_path / "idx.parquet", "--policy", "source"
    )
    assert by_index["accuracy"] != want["accuracy"]  # without names, the indices are the model's


def test_a_class_the_model_does_not_know_is_refused_where_a_label_uses_it(bundle_dir: Path, tmp_path: Path):
    log = synthetic_log(devices=1, seconds=20.0)
    write_log(tmp_path / "walk.parquet", replace(log, class_names=("walk", "c1", "c2")))
    line = refusal(bundle_dir, tmp_path / "walk.parquet")
    assert line.startswith(
        f"error: {tmp_path / 'walk.parquet'}: the log's class(es) ['walk'] are not among the model's "
        "(c0, c1, c2, c3, c4); replay matches labels to the model's classes by name. Fix: name the classes"
    )
    unused = replace(log, class_names=("c0", "c1", "c2", "walk"))  # no label says walk
    assert replayed(bundle_dir, unused, tmp_path / "unused.parquet")["accuracy"] is not None


def test_a_log_without_a_complete_window_is_one_line(bundle_dir: Path, tmp_path: Path):
    """The test bundle's window is 64 samples."""
    log = synthetic_log(devices=2, seconds=20.0)
    first = np.zeros(len(log), bool)
    first[np.flatnonzero(log.device_id == "dev0")[:63]] = True
    first[np.flatnonzero(log.device_id == "dev1")[:10]] = True
    cases = {
        "empty": (log.select(np.zeros(len(log), bool)), "the log holds no samples, a window is 64 samples"),
        "short": (log.select(first), "the log holds at most 63 samples per device, a window is 64 samples"),
    }
    for name, (short, message) in cases.items():
        write_log(tmp_path / f"{name}.parquet", short)
        line = refusal(bundle_dir, tmp_path / f"{name}.parquet")
        fix = "Fix: replay a longer recording"
        assert line == f"error: {tmp_path / name}.parquet: no complete window: {message}. {fix}"


def test_a_file_given_for_the_bundle_names_the_directory(bundle_dir: Path, synthetic_log_path: Path):
    for policy in ("steady", "all"):
        line = refusal(bundle_dir / "manifest.json", synthetic_log_path, "--policy", policy)
        assert line == (
            f"error: {bundle_dir / 'manifest.json'} is a file, not an artifact bundle. Fix: pass the "
            f"bundle directory, {bundle_dir}"
        )


def test_channels_in_another_order_get_the_import_that_fixes_them(bundle_dir: Path, tmp_path: Path):
    """The command in the message, run as printed, gives a log the model replays."""
    log = synthetic_log(devices=1, seconds=20.0)
    order = [3, 4, 5, 0, 1, 2]
    swapped = replace(log, values=log.values[:, order], channels=tuple(CHANNELS[i] for i in order))
    write_log(tmp_path / "swapped.parquet", swapped)
    line = refusal(bundle_dir, tmp_path / "swapped.parquet")
    command = line.split("`")[1].replace("FIXED.parquet", str(tmp_path / "fixed.parquet"))
    assert command.startswith(f"edge-ttt datasets import {tmp_path / 'swapped.parquet'} --out ")
    assert command.endswith("--channels ax,ay,az,wx,wy,wz --label label --classes c0,c1,c2")
    assert invoke(*command.split()[1:]).exit_code == 0
    fixed = invoke("replay", "--artifacts", bundle_dir, "--log", tmp_path / "fixed.parquet", "--json")
    want = replayed(bundle_dir, log, tmp_path / "direct.parquet")
    assert json.loads(fixed.stdout)["device_accuracy"] == want["device_accuracy"]
    write_log(tmp_path / "fast.parquet", replace(log, sample_rate_hz=100.0))
    assert "Fix: resample the recording to 50 Hz" in refusal(bundle_dir, tmp_path / "fast.parquet")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "source", "--fallback"], "--fallback serves the source model while the adapted one"),
        (["--policy", "source", "--label-runs"], "--label-runs holds an adapting policy still"),
        (["--fallback", "--source-every", "0"], "--fallback compares with the source model"),
        (["--policy", "source", "--source-every", "4"], "--source-every does nothing with --policy source"),
    ],
)
def test_flags_that_change_nothing_are_refused(bundle_dir: Path, synthetic_log_path: Path, args, message):
    assert refusal(bundle_dir, synthetic_log_path, *args).startswith(f"error: {message}")


def test_most_windows_failing_the_input_guard_is_said_whatever_the_policy(bundle_dir: Path, tmp_path: Path):
    log = synthetic_log(devices=1, seconds=20.0)
    values = log.values.copy()
    values[::5, 0] = np.nan  # 12 or 13 in every 64-sample window: more than are filled in
    path = tmp_path / "nan.parquet"
    for policy in ("steady", "source"):
        summary = replayed(bundle_dir, replace(log, values=values), path, "--policy", policy)
        assert summary["rejected_invalid"] == summary["windows"] > 0 and summary["collapse"] is None
        assert summary["input_guard"].startswith(
            f"{summary['windows']} of {summary['windows']} windows failed the input guard"
        )
        text = invoke("replay", "--artifacts", bundle_dir, "--log", path, "--policy", policy).stdout
        assert f"\n  {summary['input_guard']}\n" in text


def test_a_collapse_needs_enough_windows_and_a_dead_sensor_is_no_collapse(bundle_dir: Path):
    from edge_ttt.adapt.counters import Counters
    from edge_ttt.artifacts import load_bundle
    from edge_ttt.replay import COLLAPSE_MIN_WINDOWS, collapse_note, guard_note

    manifest = load_bundle(bundle_dir).manifest
    for n, collapsed in ((1, False), (COLLAPSE_MIN_WINDOWS - 1, False), (COLLAPSE_MIN_WINDOWS, True)):
        note = collapse_note("steady", manifest, 1, Counters(windows=n, adapt_steps=n), "c0", 1.0)
        assert (note is not None) == collapsed, n
    dead = Counters(windows=100, rejected_invalid=50)
    assert collapse_note("steady", manifest, 1, dead, "c0", 1.0) is None
    assert guard_note(dead, "c0", 1.0).endswith(
        "predicted from a sanitized copy: their class, 'c0', says nothing of the model; check the sensor "
        "or the log"
    )
    assert guard_note(Counters(windows=100, rejected_invalid=49), "c0", 1.0) is None
