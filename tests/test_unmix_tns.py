"""UnMix-TNS: the components' arithmetic (`edge_ttt.adapt.unmix`) on hand-computed cases, and the
policy (`unmix-tns`) on exported bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_ttt.adapt.counters import Counters
from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.policies import POLICY_TYPES
from edge_ttt.adapt.policies.unmix_tns import UnmixTns
from edge_ttt.adapt.unmix import Components, batch_momentum
from edge_ttt.artifacts import load_bundle
from tests.conftest import exported_bundle
from tests.model_factory import windows
from tests.test_engine import states_equal


def two() -> Components:
    """Two components of one channel: (0, 1) and (2, 3)."""
    return Components(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]]))


def test_the_mixture_moves_each_component_by_its_assignment_then_mixes_them_equally():
    # components moved towards (4, 5): means 0.75*0 + 0.25*4 = 1, 0.25*2 + 0.75*4 = 3.5;
    # vars 0.75*1 + 0.25*5 = 2, 0.25*3 + 0.75*5 = 4.5. Mixture: mean 2.25,
    # var (2 + 4.5)/2 + ((1 - 2.25)^2 + (3.5 - 2.25)^2)/2 = 3.25 + 1.5625
    mean, var = two().mixture(np.array([0.25, 0.75]), np.array([4.0]), np.array([5.0]))
    np.testing.assert_allclose(mean, [2.25])
    np.testing.assert_allclose(var, [4.8125])


def test_the_pooled_statistics_are_the_equal_mixture_of_the_components():
    mean, var = two().pooled()
    np.testing.assert_allclose(mean, [1.0])
    np.testing.assert_allclose(var, [2.0 + 1.0])  # mean of the vars + spread of the means


def test_the_assignment_is_a_softmax_of_cosine_similarity_over_the_temperature():
    c = Components(np.array([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]]), np.ones((3, 2)))
    x = np.array([2.0, 0.5])
    cos = np.array([2.0, 0.5, -2.0]) / np.linalg.norm(x)
    expected = np.exp(cos / 0.07) / np.exp(cos / 0.07).sum()
    p = c.assign(x, 0.07)
    np.testing.assert_allclose(p, expected)
    assert p.argmax() == 0 and p[0] > 0.99
    np.testing.assert_allclose(c.assign(10 * x, 0.07), p)  # a direction, not a distance
    assert c.assign(x, 10.0)[0] < 0.4  # a high temperature spreads it


def test_components_move_towards_the_instance_statistics_by_their_mean_assignment():
    c = two()
    p = np.array([[1.0, 0.0], [0.5, 0.5]])  # two windows
    c.update(p, np.array([[4.0], [8.0]]), np.array([[5.0], [9.0]]), momentum=0.1)
    # component 0: 0 + 0.1 * (1*(4-0) + 0.5*(8-0))/2 = 0.4; var 1 + 0.1 * (1*4 + 0.5*8)/2 = 1.4
    # component 1: 2 + 0.1 * (0 + 0.5*(8-2))/2 = 2.15; var 3 + 0.1 * (0 + 0.5*6)/2 = 3.15
    np.testing.assert_allclose(c.means, [[0.4], [2.15]])
    np.testing.assert_allclose(c.vars, [[1.4], [3.15]])


def test_the_momentum_forgets_at_the_same_rate_per_window_whatever_the_batch():
    assert batch_momentum(0.1, 64, 64) == pytest.approx(0.1)
    one = batch_momentum(0.1, 1, 64)
    assert one == pytest.approx(1 - 0.9 ** (1 / 64)) and (1 - one) ** 16 == pytest.approx(
        1 - batch_momentum(0.1, 16, 64)
    )


def test_the_components_start_scattered_around_source_with_its_statistics_in_expectation():
    mean, var = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    c = Components.from_source(mean, var, 4000, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(c.vars, np.tile(0.5 * var, (4000, 1)))
    pooled_mean, pooled_var = c.pooled()
    assert np.all(np.abs(pooled_mean - mean) < 4 * np.sqrt(0.5 * var / 4000))  # 4 standard errors
    np.testing.assert_allclose(pooled_var, var, rtol=0.05)
    one = Components.from_source(mean, var, 1, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(one.means, [mean])
    np.testing.assert_array_equal(one.vars, [var])


@pytest.fixture(scope="module")
def model(bundle_dir: Path) -> OrtModel:
    return OrtModel(load_bundle(bundle_dir))


def policy(model: OrtModel, **options) -> UnmixTns:
    return UnmixTns(model, Counters(), UnmixTns.Options(**options))


def test_it_is_registered_under_its_hyphenated_name():
    assert POLICY_TYPES["unmix-tns"] is UnmixTns


def test_one_component_normalizes_every_layer_by_the_window_s_own_moments(model: OrtModel):
    """K = 1 assigns everything to the one component: the mixture is the window's own moments,
    as a batch of one in training mode."""
    x = windows(1, seed=3)
    out = policy(model, components=1).predict(x)
    own = model.forward(x, model.source_stats(), mix=1.0)
    np.testing.assert_allclose(out.logits, own.logits, rtol=1e-4, atol=1e-5)


def test_update_moves_the_components_and_predict_leaves_them(model: OrtModel):
    p = policy(model)
    start = p.state()
    assert set(start) == {
        f"{layer.name}/{k}" for layer in model.manifest.batch_norms for k in ("means", "vars")
    }
    p.predict(windows(3, seed=1) * 2 + 1)
    assert states_equal(p.state(), start) and p.counters.adapt_steps == 0
    p.update(windows(3, seed=1) * 2 + 1)
    assert not states_equal(p.state(), start) and p.counters.adapt_steps == 1


def test_a_batch_mixes_per_window_with_the_components_of_the_batch_start(model: OrtModel):
    p = policy(model)
    x = windows(3, seed=2)
    alone = np.concatenate([p.predict(x[i : i + 1]).logits for i in range(3)])
    together = p.predict(x)
    np.testing.assert_array_equal(together.logits, alone)
    np.testing.assert_array_equal(p.update(x).logits, alone)


def test_the_update_follows_the_rule_with_the_batch_s_momentum(model: OrtModel):
    """The components after one update are those the rule gives for the assignments and
    instance moments the windows saw."""
    p = policy(model)
    x = windows(2, seed=4) * 1.5
    before = {k: Components(c.means.copy(), c.vars.copy()) for k, c in p.components.items()}
    _, seen = p._mixed(x)
    p.update(x)
    m = batch_momentum(0.1, 2, 64)
    for name, c in before.items():
        c.update(*(np.stack([s[name][i] for s in seen]) for i in range(3)), m)
        np.testing.assert_array_equal(p.components[name].means, c.means)
        np.testing.assert_array_equal(p.components[name].vars, c.vars)


def test_the_state_restores_bit_for_bit(model: OrtModel):
    a, b = policy(model, seed=1), policy(model, seed=1)
    for seed in range(3):
        a.update(windows(1, seed=seed) * 1.5)
    b.load_state(a.state())
    assert states_equal(a.state(), b.state())
    for seed in range(3, 6):
        x = windows(2, seed=seed)
        np.testing.assert_array_equal(a.update(x).logits, b.update(x).logits)
    assert states_equal(a.state(), b.state())


def test_the_seed_decides_the_start_and_reset_returns_to_it(model: OrtModel):
    a, b = policy(model, seed=1), policy(model, seed=2)
    assert not states_equal(a.state(), b.state())
    start = a.state()
    a.update(windows(2))
    a.reset()
    assert states_equal(a.state(), start)


def test_options_are_checked():
    for bad in ({"components": 0}, {"temperature": 0.0}, {"spread": 1.0}, {"momentum": 0.0}):
        with pytest.raises(ValueError):
            UnmixTns.Options(**bad)


def test_without_batch_norms_it_is_source(tmp_path_factory):
    gn = OrtModel(load_bundle(exported_bundle(tmp_path_factory, "cnn-gn", "unmix")))
    assert not gn.manifest.batch_norms
    p, source = policy(gn), POLICY_TYPES["source"](gn, Counters())
    x = windows(4, seed=7) * 2
    np.testing.assert_array_equal(p.update(x).logits, source.predict(x).logits)
    assert p.state() == {} and p.counters.adapt_steps == 0
