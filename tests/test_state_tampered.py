"""A state file that reads as an archive but holds what no engine saves (edited by hand, written by
a broken tool, bit rot the zip CRC missed) is refused whole, by name, and the stream starts from
source: before, one with NaN parameters was restored and every prediction of its stream was NaN
(published as valid), one with a mounting matrix of another shape was restored and every window of
its stream then raised, on every restart, and one whose counters were not numbers raised past the
agent's restore (its stream failed every frame)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.engine import Engine
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.snapshot import StateError, load_state, save_state
from edge_ttt.agent.checkpoints import restore, stamped, state_path
from edge_ttt.artifacts import load_bundle


def windows(n: int, seed: int, length: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1.5 * rng.standard_normal((n, 6, length)) + 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def adapted(bundle_dir: Path, tmp_path_factory) -> tuple[Path, int]:
    """A state file of an engine (the agent's default setup) that saw a few windows."""
    engine = Engine(OrtModel(load_bundle(bundle_dir)), "steady")
    length = load_bundle(bundle_dir).manifest.model.window
    for seed in range(12):
        engine.process(windows(1, seed, length))
    path = state_path(tmp_path_factory.mktemp("state"), "dev", "0")
    save_state(path, *stamped(engine.snapshot(), "dev", "0"))
    return path, length


def tamper(path: Path, edit) -> Path:
    arrays, meta = load_state(path)
    edit(arrays, meta)
    out = path.with_name("tampered__0.npz")
    save_state(out, arrays, {**meta, "device": "tampered", "stream": "0"})
    return out


def nan_parameters(arrays, meta):
    key = next(k for k in arrays if k.startswith("params/"))
    arrays[key] = np.full_like(arrays[key], np.nan)


def mounting_of_another_shape(arrays, meta):
    arrays["input/mount/mix"] = np.ones((2, 2))


def counters_not_numbers(arrays, meta):
    meta["counters"] = {**meta["counters"], "windows": "abc"}


def policy_part_broken(arrays, meta):  # the input alignment's part loads, then the policy's fails
    arrays["input/offset"] = arrays["input/offset"] + 5.0
    del arrays[next(k for k in arrays if k.startswith("params/"))]


def fallback_class_out_of_range(arrays, meta):  # the fallback's rolling classes: 99 of 7 classes
    arrays["fallback/adapted_windows"] = np.array([[99.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (nan_parameters, r"params/.* holds NaN or infinite values"),
        (fallback_class_out_of_range, "a rolling estimate's classes must be -1 to"),
        (mounting_of_another_shape, r"input/mount/mix has shape \(2, 2\)"),
        (counters_not_numbers, "invalid literal"),
        (policy_part_broken, "does not fit this policy"),
    ],
)
def test_a_tampered_state_is_refused_whole_and_the_stream_runs_from_source(bundle_dir, adapted, edit, says):
    path, length = adapted
    tampered = tamper(path, edit)
    engine = Engine(OrtModel(load_bundle(bundle_dir)), "steady")
    fresh = Engine(OrtModel(load_bundle(bundle_dir)), "steady")
    with pytest.raises(StateError, match=says):
        engine.load_state(tampered)
    assert not restore(engine, tampered.parent, "tampered", "0")  # the agent's path: a warning, from source
    for seed in range(100, 106):  # nothing of the refused state is left: the engine is a fresh one
        x = windows(1, seed, length)
        got, want = engine.process(x), fresh.process(x)
        assert np.isfinite(got.probs).all() and got.valid.all()
        np.testing.assert_array_equal(got.probs, want.probs)
    assert engine.counters == fresh.counters
    assert restore(engine, path.parent, "dev", "0")  # the untouched file still restores


def test_metadata_that_is_no_json_object_is_refused_by_name(tmp_path, adapted):
    path, _ = adapted
    arrays, _ = load_state(path)
    blob = np.frombuffer(json.dumps([1, 2]).encode(), np.uint8)
    np.savez(tmp_path / "list.npz", __meta__=blob, **arrays)
    with pytest.raises(StateError, match=r"list\.npz has format None"):
        load_state(tmp_path / "list.npz")
