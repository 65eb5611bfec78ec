"""`[model.fallback]`: on by default ahead of the default policy, its options checked on load with
the key named, and what the engine gets from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_ttt.adapt.engine import Engine
from edge_ttt.adapt.fallback import DEFAULT_FALLBACK, FallbackOptions
from edge_ttt.adapt.fallback_setup import AutoFallback
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.agent.config import load_config
from edge_ttt.agent.loop import _settings
from edge_ttt.artifacts import load_bundle
from tests.agent_config_factory import BASE, problems, write


def fallback_of(tmp_path: Path, text: str):
    return _settings(load_config(write(tmp_path, BASE + text), check_files=False)).fallback


def test_by_default_it_is_auto_with_the_default_options(tmp_path: Path):
    assert fallback_of(tmp_path, "") == AutoFallback(DEFAULT_FALLBACK)
    assert fallback_of(tmp_path, "[model.fallback]\nenabled = false\n") is None
    tuned = fallback_of(tmp_path, "[model.fallback]\nenabled = true\nmargin = 0.1\nrecover = 0.05\n")
    assert tuned == FallbackOptions(margin=0.1, recover=0.05)
    auto = fallback_of(tmp_path, "[model.fallback]\nhorizon = 256\n")
    assert auto == AutoFallback(FallbackOptions(horizon=256))


def test_auto_resolves_for_the_default_policy_only(bundle_dir: Path):
    model = OrtModel(load_bundle(bundle_dir))
    auto = AutoFallback(FallbackOptions(horizon=64))
    assert Engine(model, "steady", fallback=auto).fallback.options.horizon == 64
    assert Engine(model, "norm", fallback=auto).fallback is None
    assert Engine(model, "norm", fallback=FallbackOptions()).fallback is not None  # asked for: any policy


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model.fallback]\nmargin = 0.01\n", "recover (0.02) <= margin (0.01)"),
        ("[model.fallback]\nclasses = 2\n", "model.fallback.classes"),
        ("[model.fallback]\nhorizon = 16\nmin_windows = 32\n", "min_windows (32) <= horizon (16)"),
        (
            "[model.fallback]\nenabled = true\n[model.estimates]\nsource_every = 0\n",
            "source_every = 0 never runs the source model, and model.fallback.enabled = true",
        ),
    ],
)
def test_options_that_do_not_fit_are_named_on_load(tmp_path: Path, text: str, message: str):
    assert message in problems(write(tmp_path, BASE + text), check_files=False)


def test_auto_with_no_source_pass_has_no_fallback(tmp_path: Path, bundle_dir: Path):
    settings = _settings(
        load_config(write(tmp_path, BASE + "[model.estimates]\nsource_every = 0\n"), check_files=False)
    )
    engine = Engine(OrtModel(load_bundle(bundle_dir)), "steady", fallback=settings.fallback, source_every=0)
    assert engine.fallback is None
