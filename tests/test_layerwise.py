"""Layer-by-layer statistics from a window's own moments (`edge_ttt.adapt.layerwise`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.layerwise import forward_layerwise
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.artifacts import load_bundle
from tests.model_factory import windows


@pytest.fixture(scope="module")
def model(bundle_dir: Path) -> OrtModel:
    return OrtModel(load_bundle(bundle_dir))


def test_the_window_s_own_moments_everywhere_is_the_batch_of_one_in_training_mode(model: OrtModel):
    x = windows(1, seed=4)
    out, chosen = forward_layerwise(model, x, model.source_stats(), lambda name, m: m)
    batch = model.forward(x, model.source_stats(), mix=1.0)  # every norm: the batch's own moments
    np.testing.assert_allclose(out.logits, batch.logits, rtol=1e-4, atol=1e-5)
    for name, (mean, var) in batch.moments.items():
        np.testing.assert_allclose(chosen[name][0], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(chosen[name][1], var, rtol=1e-4, atol=1e-5)


def test_layers_are_chosen_in_graph_order_from_their_final_inputs(model: OrtModel):
    x = windows(1, seed=5)
    seen: list[tuple[str, np.ndarray]] = []

    def shrink(name: str, moments):  # halfway between the window and source: not a fixed point
        seen.append((name, moments[0].copy()))
        mean, var = model.source_stats()[name]
        return (moments[0] + mean) / 2, (moments[1] + var) / 2

    out, _ = forward_layerwise(model, x, model.source_stats(), shrink)
    assert [name for name, _ in seen] == [layer.name for layer in model.manifest.batch_norms]
    for name, mean in seen:  # what each choice saw is that layer's input in the final pass
        np.testing.assert_allclose(out.moments[name][0], mean, rtol=1e-5, atol=1e-6)
    source = model.forward(x, model.source_stats())
    assert not np.allclose(out.logits, source.logits)


def test_the_starting_statistics_do_not_change_the_result(model: OrtModel):
    x = windows(1, seed=6)
    choose = lambda name, m: (m[0] * 0.5, m[1] + 1.0)  # noqa: E731
    far = {k: (m + 3.0, v * 4.0) for k, (m, v) in model.source_stats().items()}
    a, _ = forward_layerwise(model, x, model.source_stats(), choose)
    b, _ = forward_layerwise(model, x, far, choose)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)


def test_one_window_at_a_time(model: OrtModel):
    with pytest.raises(ValueError, match="one window at a time"):
        forward_layerwise(model, windows(2), model.source_stats(), lambda name, m: m)
