"""The newcomer's path through the CLI: train → export → replay, and its failure messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_ttt.cli import app

pytest.importorskip("torch")
runner = CliRunner()

REPLAY_KEYS = {
    "policy",
    "devices",
    "device_accuracy",
    "devices_below_source",
    "estimated_accuracy",
    "source_estimated_accuracy",
    "fallbacks",
    "windows_on_source",
    "windows",
    "accuracy",
    "macro_f1",
    "adapt_steps",
    "skipped_unreliable",
    "rejected_invalid",
    "resets",
    "rollbacks",
    "ms_per_window",
    "top_class",
    "top_class_share",
    "collapse",
}


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(synthetic_log_path: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "model.pt"
    args = ("train", "--log", synthetic_log_path, "--model", "cnn-bn", "--window", 64, "--hop", 32)
    result = invoke(*args, "--epochs", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert "held-out validation accuracy" in result.output
    # not a terminal, so no bar: a line per epoch on stderr instead of a silent minute
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == [
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
    ]
    return out


def test_train_export_replay(trained: Path, synthetic_log_path: Path, tmp_path: Path):
    result = invoke("export", "--checkpoint", trained, "--out", tmp_path / "art")
    assert result.exit_code == 0, result.output
    result = invoke("replay", "--artifacts", tmp_path / "art", "--log", synthetic_log_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert set(summary) >= REPLAY_KEYS
    assert summary["policy"] == "steady" and summary["windows"] > 0
    # 4 devices x 2000 samples, window 64, hop 32: 61 windows each
    assert summary["windows"] == 4 * ((2000 - 64) // 32 + 1)
    assert 0.0 <= summary["accuracy"] <= 1.0


def test_replay_with_input_alignment_learns_a_unit_error(trained: Path, tmp_path: Path):
    """A gyroscope channel in the wrong unit (x100) is out of the source range: every window is
    refused raw, while input alignment learns the gain and lets most of them through."""
    import dataclasses

    from edge_ttt.recordlog import write_log
    from tests.conftest import synthetic_log

    log = synthetic_log()
    values = log.values.copy()
    values[:, 4] *= 100.0
    write_log(tmp_path / "unit.parquet", dataclasses.replace(log, values=values))
    assert invoke("export", "--checkpoint", trained, "--out", tmp_path / "art").exit_code == 0
    args = ("replay", "--artifacts", tmp_path / "art", "--log", tmp_path / "unit.parquet", "--json")
    raw = json.loads(invoke(*args, "--input-alignment", "off").output)
    result = invoke(*args, "--input-alignment", "on")
    assert result.exit_code == 0, result.output
    aligned = json.loads(result.output)
    assert set(aligned) >= REPLAY_KEYS
    assert raw["rejected_invalid"] == raw["windows"]
    assert aligned["rejected_invalid"] < 0.5 * aligned["windows"]
    result = invoke(*args, "--input-alignment", "sometimes")
    assert result.exit_code == 2 and "choose one of auto, on, off" in result.output


def test_training_is_reproducible_with_a_seed(trained: Path, synthetic_log_path: Path, tmp_path: Path):
    import torch

    again = tmp_path / "again.pt"
    args = ("train", "--log", synthetic_log_path, "--model", "cnn-bn", "--window", 64, "--hop", 32)
    assert invoke(*args, "--epochs", 3, "--out", again).exit_code == 0
    a = torch.load(trained, weights_only=True)["state_dict"]
    b = torch.load(again, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_refuses_unknown_model(synthetic_log_path: Path, tmp_path: Path):
    result = invoke("train", "--log", synthetic_log_path, "--model", "resnet", "--out", tmp_path / "m.pt")
    assert result.exit_code == 2
    assert "unknown model 'resnet'" in result.output


def test_train_refuses_a_file_that_is_not_a_log(tmp_path: Path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    result = invoke("train", "--log", bad, "--out", tmp_path / "m.pt")
    assert result.exit_code == 2
    assert "bad.parquet" in result.output


def test_export_of_a_missing_checkpoint(tmp_path: Path):
    result = invoke("export", "--checkpoint", tmp_path / "nope.pt", "--out", tmp_path / "art")
    assert result.exit_code == 2
    assert "nope.pt does not exist" in result.output
    assert not (tmp_path / "art").exists()


def _pickled_object(path: Path) -> None:
    import torch

    torch.save({"a": object()}, path)


@pytest.mark.parametrize(
    "write", [lambda p: p.write_text("hello"), _pickled_object], ids=["text file", "pickled object"]
)
def test_export_of_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path: Path, write):
    junk = tmp_path / "junk.pt"
    write(junk)
    result = invoke("export", "--checkpoint", junk, "--out", tmp_path / "art")
    assert result.exit_code == 2
    line, end = result.output.split("\n", 1)  # one line, torch's advice on untrusted files left out
    assert end == "" and "weights_only" not in line
    assert line.startswith(f"error: {junk} is not an edge-ttt checkpoint (torch cannot load it")
    assert line.endswith("Fix: pass the model.pt that `edge-ttt train` wrote")


def test_replay_refuses_a_tampered_bundle(bundle_dir: Path, synthetic_log_path: Path, tmp_path: Path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(bundle_dir, art)
    (art / "eval_model.onnx").write_bytes(b"tampered")
    result = invoke("replay", "--artifacts", art, "--log", synthetic_log_path, "--json")
    assert result.exit_code == 2
    assert "eval_model.onnx does not match its SHA-256" in result.output


def test_replay_refuses_a_log_with_other_channels(bundle_dir: Path, tmp_path: Path):
    from dataclasses import replace

    from edge_ttt.recordlog import write_log
    from tests.conftest import synthetic_log

    log = synthetic_log(devices=1)
    renamed = replace(log, channels=("a", "b", "c", "d", "e", "f"))
    write_log(tmp_path / "other.parquet", renamed)
    result = invoke("replay", "--artifacts", bundle_dir, "--log", tmp_path / "other.parquet")
    assert result.exit_code == 2
    assert "do not match the model's" in result.output


def test_replay_all_policies_prints_one_object_each(bundle_dir: Path, synthetic_log_path: Path):
    """`all` is every policy the bundle can run: not the auxiliary-task one on a plain bundle."""
    from edge_ttt.adapt.engine import POLICIES

    result = invoke(
        "replay", "--artifacts", bundle_dir, "--log", synthetic_log_path, "--policy", "all", "--json"
    )
    assert result.exit_code == 0, result.output
    summaries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["policy"] for s in summaries] == [p for p in POLICIES if p != "ttt"]
    assert result.stderr.splitlines() == [  # said, not left out silently; stdout stays JSON
        "left out ttt: it steps on the auxiliary loss, and this bundle's model (cnn-bn) was exported "
        "with the entropy loss; train and export a model with an auxiliary head, e.g. cnn-bn-ttt, to run it"
    ]
    assert all(set(s) >= REPLAY_KEYS for s in summaries)
    by_policy = {s["policy"]: s for s in summaries}
    assert by_policy["source"]["adapt_steps"] == 0
    assert by_policy["tent"]["adapt_steps"] == by_policy["tent"]["windows"]  # one step per window


def test_replay_accuracy_is_the_share_of_correct_windows(bundle_dir: Path, synthetic_log_path: Path):
    """Recomputed here from the engines' own predictions on the same windows: by default one
    engine per device, each fed its device's windows in time order; `--one-engine` feeds every
    window, in live-stream order, to a single engine."""
    import numpy as np

    from edge_ttt.adapt.engine import Engine
    from edge_ttt.adapt.ort_model import OrtModel
    from edge_ttt.artifacts import load_bundle
    from edge_ttt.recordlog import read_log
    from edge_ttt.stream.window import windows_from_log

    args = ("replay", "--artifacts", bundle_dir, "--log", synthetic_log_path, "--policy", "norm", "--json")
    per_device, one = (json.loads(invoke(*args, *extra).output) for extra in ((), ("--one-engine",)))
    windows, devices = windows_from_log(read_log(synthetic_log_path), 64, 32)
    model = OrtModel(load_bundle(bundle_dir))
    predicted = np.full(len(windows), -1)
    for d in np.unique(devices):
        engine = Engine(model, policy="norm")
        for i in np.flatnonzero(devices == d)[np.argsort(windows.t_end_ns[devices == d], kind="stable")]:
            predicted[i] = engine.process(windows.x[i : i + 1]).classes[0]
    assert per_device["devices"] == len(np.unique(devices)) > 1 and one["devices"] == 1
    assert per_device["windows"] == one["windows"] == len(windows)
    assert per_device["accuracy"] == pytest.approx(float(np.mean(predicted == windows.label)))
    engine = Engine(model, policy="norm")
    shared = np.concatenate([engine.process(windows.x[i : i + 1]).classes for i in range(len(windows))])
    assert one["accuracy"] == pytest.approx(float(np.mean(shared == windows.label)))
    assert per_device["adapt_steps"] == one["adapt_steps"] == len(windows)
    # per device, by the log's device ids, whichever way the engines were laid out
    assert per_device["device_accuracy"] == {
        str(d): pytest.approx(float(np.mean(predicted[devices == d] == windows.label[devices == d])))
        for d in np.unique(devices)
    }
    assert one["device_accuracy"] == {
        str(d): pytest.approx(float(np.mean(shared[devices == d] == windows.label[devices == d])))
        for d in np.unique(devices)
    }
    assert per_device["devices_below_source"] is None  # no source replayed beside it


def test_replay_names_the_devices_a_policy_made_worse_than_source(bundle_dir: Path, synthetic_log_path: Path):
    """A mean over devices hides the device that adaptation made worse: each policy lists the
    devices more than 1 point below the source model of the same replay, worst first."""
    args = ("replay", "--artifacts", bundle_dir, "--log", synthetic_log_path, "--policy", "all")
    summaries = {s["policy"]: s for s in map(json.loads, invoke(*args, "--json").stdout.splitlines())}
    source = summaries["source"]["device_accuracy"]
    assert summaries["source"]["devices_below_source"] == []
    for name, s in summaries.items():
        worse = [d for d, acc in s["device_accuracy"].items() if acc < source[d] - 0.01]
        below = s["devices_below_source"]
        assert sorted(b["device"] for b in below) == sorted(worse), name
        assert [b["points"] for b in below] == pytest.approx(
            sorted(100 * (s["device_accuracy"][d] - source[d]) for d in worse)
        )
    # tent at batch size 1 normalizes each window by its own moments: worse than source on every device
    tent = summaries["tent"]
    assert len(tent["devices_below_source"]) == len(source) == tent["devices"] > 1
    text = invoke(*args).stdout
    worst = tent["devices_below_source"][0]
    assert (
        f"  {len(source)} of {len(source)} devices more than 1 point below source: "
        f"{worst['device']} {worst['points']:+.1f}, "
    ) in text


def test_replay_refuses_an_unknown_policy(bundle_dir: Path, synthetic_log_path: Path):
    result = invoke("replay", "--artifacts", bundle_dir, "--log", synthetic_log_path, "--policy", "magic")
    assert result.exit_code == 2 and "unknown policy 'magic'" in result.output


def test_replay_episodic_runs_the_gradient_policies_the_bundle_can_run(
    aux_bundle_dir: Path, synthetic_log_path: Path
):
    args = ("replay", "--artifacts", aux_bundle_dir, "--log", synthetic_log_path, "--json")
    result = invoke(*args, "--policy", "all", "--episodic")
    assert result.exit_code == 0, result.output
    summaries = [json.loads(line) for line in result.stdout.splitlines()]
    left_out = [line.split(":")[0] for line in result.stderr.splitlines()]
    assert left_out == [
        f"left out {p}" for p in ("source", "norm", "tent", "sar", "note", "unmix-tns", "rotta", "steady")
    ]
    assert [(s["policy"], s["episodic"]) for s in summaries] == [("ttt", True)]
    assert summaries[0]["adapt_steps"] == summaries[0]["windows"]  # one step per window, each forgotten


def test_replay_names_the_policy_that_does_not_fit_the_bundle(aux_bundle_dir: Path, synthetic_log_path: Path):
    result = invoke("replay", "--artifacts", aux_bundle_dir, "--log", synthetic_log_path, "--policy", "tent")
    assert result.exit_code == 2
    assert "policy 'tent' cannot run on bundle" in result.output
    assert "it steps on the entropy loss" in result.output and "ttt" in result.output


def test_replay_text_says_what_it_leaves_out_and_every_counter(bundle_dir: Path, synthetic_log_path: Path):
    result = invoke("replay", "--artifacts", bundle_dir, "--log", synthetic_log_path, "--policy", "all")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("left out ttt: it steps on the auxiliary loss")
    sar = next(line for line in lines if line.startswith("sar: "))
    assert " skipped as unreliable, " in sar and " without drift, " in sar


def test_a_collapse_is_explained_by_the_counters_and_the_policy(bundle_dir: Path):
    """Why tent and sar sit at one class on the smartwatch data at batch size 1 (docs/adaptation.md)."""
    from edge_ttt.adapt.counters import Counters
    from edge_ttt.artifacts import load_bundle
    from edge_ttt.replay import collapse_note

    manifest = load_bundle(bundle_dir).manifest
    skipped = Counters(windows=1917, skipped_unreliable=1917)
    assert collapse_note("sar", manifest, 1, skipped, "ABD", 0.89) is None
    assert collapse_note("sar", manifest, 1, skipped, "ABD", 1.0) == (
        "100% of windows predicted as 'ABD': a collapse to one class; sar normalizes with the "
        "statistics of each batch, and a batch of one window is normalized by its own moments (why "
        "tent and sar collapse: docs/adaptation.md); use larger batches of mixed windows, or norm or "
        "steady, which keep population statistics; 1917 of 1917 windows were skipped as unreliable, "
        "so no adaptation step caused it"
    )
    stepped = Counters(windows=100, adapt_steps=100, resets=2, rollbacks=1)
    assert collapse_note("steady", manifest, 1, stepped, "ABD", 0.95) == (
        "95% of windows predicted as 'ABD': a collapse to one class; 2 resets and 1 rollbacks did not undo it"
    )
    dead = Counters(windows=100, rejected_invalid=100)  # a sensor that sends NaN: `guard_note` says it
    assert collapse_note("steady", manifest, 1, dead, "ROW", 1.0) is None


def test_replay_takes_a_policys_options(bundle_dir: Path, synthetic_log_path: Path):
    """`--option` sets what `[model.options]` sets in the agent: the same engine as the API with
    those options, and not the default one (norm following each window alone: momentum 1)."""
    from edge_ttt.replay import replay as run_replay

    args = ("replay", "--artifacts", bundle_dir, "--log", synthetic_log_path, "--policy", "norm", "--json")
    result = invoke(*args, "--option", "momentum=1", "--option", "prior_windows=1e-3")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    options = {"momentum": 1, "prior_windows": 1e-3}
    expected = run_replay(bundle_dir, synthetic_log_path, ["norm"], options=options)[0]
    default = run_replay(bundle_dir, synthetic_log_path, ["norm"])[0]
    assert got["device_accuracy"] == expected["device_accuracy"] != default["device_accuracy"]
    assert "--option KEY=VALUE" in invoke("replay", "--help").output


@pytest.mark.parametrize(
    ("option", "policy", "message"),
    [
        ("instance_offsets=-4", "steady", "error: --option: instance_offsets: must be at least 0, got -4"),
        (
            "instance_offset=4",
            "steady",
            "did you mean 'instance_offsets'? allowed in the options of steady: stat_momentum",
        ),
        ("lr", "steady", "write KEY=VALUE, for example --option instance_offsets=4"),
        ("snapshot_every=7", "steady", "snapshot_every (7) must be a multiple of watch_every (8)"),
        ("lr=0.1", "all", "--option sets the options of one policy; name it with --policy"),
    ],
)
def test_replay_refuses_a_bad_option_in_one_line(
    bundle_dir: Path, synthetic_log_path: Path, option: str, policy: str, message: str
):
    args = ("replay", "--artifacts", bundle_dir, "--log", synthetic_log_path, "--policy", policy)
    result = invoke(*args, "--option", option)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
