"""Without a fallback the source model runs on a sample of the windows for its label-free
estimate: which windows, what it predicts there, that the policy serves what it would serve
without the sample, and the config key and replay option that set it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_ttt.adapt.engine import SOURCE_EVERY, Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.agent.config import load_config
from edge_ttt.agent.loop import _settings
from edge_ttt.artifacts import load_bundle
from edge_ttt.cli import app
from tests.agent_config_factory import BASE, problems, write
from tests.model_factory import windows
from tests.test_engine import AGGRESSIVE_STEADY, states_equal

N = 12
SAMPLED = [0, 4, 8]  # every SOURCE_EVERY-th of N windows


@pytest.fixture
def stream() -> np.ndarray:
    """Windows at half the source scale: the default `steady` adapts on them and serves, on one
    of the sampled windows, a class the source model does not predict there."""
    return windows(N, seed=0) * 0.5


def run(engine: Engine, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """What the engine hands out over the stream in batches of `batch`, window by window."""
    outs = [engine.process(x[i : i + batch]) for i in range(0, len(x), batch)]
    fields = ("classes", "probs", "estimated_correct", "source_classes", "source_estimated_correct")
    return {f: np.concatenate([getattr(o, f) for o in outs]) for f in fields}


def source_calls(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of windows of each source pass the engine makes from now on."""
    calls: list[int] = []
    inner = engine._source

    def counted(x: np.ndarray, owner: object):
        calls.append(len(x))
        return inner(x, owner)

    monkeypatch.setattr(engine, "_source", counted)
    return calls


def test_the_source_model_runs_on_every_fourth_window(
    bundle_dir: Path, stream: np.ndarray, monkeypatch: pytest.MonkeyPatch
):
    model = OrtModel(load_bundle(bundle_dir))
    source = Engine(model, "source")
    # Without the class correction, whose statistics stay near source on this short random stream,
    # steady serves classes of its own on some sampled windows, which tells the two apart below.
    e = Engine(model, "steady", {"class_correction": 0.0})
    # A threshold at which the source model counts as right on some windows and not on others.
    e.threshold = source.threshold = float(np.median(source.process(stream).entropy))
    expected = run(source, stream, 1)
    seen = source_calls(e, monkeypatch)
    out = run(e, stream, 1)
    assert SOURCE_EVERY == 4 and np.flatnonzero(out["source_classes"] >= 0).tolist() == SAMPLED
    assert np.flatnonzero(~np.isnan(out["source_estimated_correct"])).tolist() == SAMPLED
    np.testing.assert_array_equal(out["source_classes"][SAMPLED], expected["classes"][SAMPLED])
    np.testing.assert_array_equal(
        out["source_estimated_correct"][SAMPLED], expected["estimated_correct"][SAMPLED]
    )
    assert set(expected["estimated_correct"][SAMPLED]) == {0.0, 1.0}, "the threshold must split them"
    assert (out["classes"][SAMPLED] != expected["classes"][SAMPLED]).any(), "steady must serve others"
    assert seen == [1, 1, 1]


def test_batches_sample_the_same_windows(
    bundle_dir: Path, stream: np.ndarray, monkeypatch: pytest.MonkeyPatch
):
    one = run(Engine(OrtModel(load_bundle(bundle_dir)), "steady"), stream, 1)
    e = Engine(OrtModel(load_bundle(bundle_dir)), "steady")
    seen = source_calls(e, monkeypatch)
    five = run(e, stream, 5)
    np.testing.assert_array_equal(five["source_classes"], one["source_classes"])
    np.testing.assert_array_equal(five["source_estimated_correct"], one["source_estimated_correct"])
    assert seen == [2, 1]  # only the sampled rows (0, 4; 8), no pass for the last batch (10, 11)


def test_source_every_zero_runs_no_source_pass(
    bundle_dir: Path, stream: np.ndarray, monkeypatch: pytest.MonkeyPatch
):
    e = Engine(OrtModel(load_bundle(bundle_dir)), "steady", source_every=0)
    seen = source_calls(e, monkeypatch)
    out = run(e, stream, 1)
    assert (out["source_classes"] == -1).all() and np.isnan(out["source_estimated_correct"]).all()
    assert seen == []
    with pytest.raises(ValueError, match="source_every"):
        Engine(OrtModel(load_bundle(bundle_dir)), "steady", source_every=-1)


def test_the_source_pass_changes_nothing_the_policy_serves_or_learns(bundle_dir: Path, stream: np.ndarray):
    """The source model runs on the shared model with its own parameters and statistics, however
    far the policy moved from them (here by large steps), and the policy's are back before its
    next window."""
    sampled = Engine(OrtModel(load_bundle(bundle_dir)), "steady", AGGRESSIVE_STEADY, fallback=None)
    plain = Engine(OrtModel(load_bundle(bundle_dir)), "steady", AGGRESSIVE_STEADY, source_every=0)
    source = run(Engine(OrtModel(load_bundle(bundle_dir)), "source"), stream, 1)
    with_sample, without = run(sampled, stream, 1), run(plain, stream, 1)
    np.testing.assert_array_equal(with_sample["probs"], without["probs"])
    assert states_equal(sampled.snapshot()[0], plain.snapshot()[0])
    np.testing.assert_array_equal(with_sample["source_classes"][SAMPLED], source["classes"][SAMPLED])
    assert (with_sample["classes"][SAMPLED] != source["classes"][SAMPLED]).any(), "steady must have moved"


def test_config_sets_source_every_and_names_a_negative_one(tmp_path: Path):
    default = load_config(write(tmp_path, BASE), check_files=False)
    assert default.model.estimates.source_every == SOURCE_EVERY
    cfg = load_config(write(tmp_path, BASE + "[model.estimates]\nsource_every = 16\n"), check_files=False)
    assert cfg.model.estimates.source_every == 16 and _settings(cfg).source_every == 16
    message = problems(write(tmp_path, BASE + "[model.estimates]\nsource_every = -1\n"), check_files=False)
    assert "model.estimates.source_every: must be at least 0, got -1" in message


def test_replay_estimates_the_source_model_without_a_fallback(bundle_dir: Path, synthetic_log_path: Path):
    def replay(*flags: str) -> dict:
        args = ("replay", "--artifacts", str(bundle_dir), "--log", str(synthetic_log_path), "--json", *flags)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.splitlines()[-1])

    assert 0.0 <= replay()["source_estimated_accuracy"] <= 1.0
    assert replay("--source-every", "0")["source_estimated_accuracy"] is None
