"""The numpy optimizers step exactly as torch.optim does (the reference Tent and SAR use torch's)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ttt.adapt.flat import Layout
from edge_ttt.adapt.optim import SGD, Adam

torch = pytest.importorskip("torch")


def run_both(ours, theirs_factory, steps: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    start = rng.standard_normal(7)
    p = torch.nn.Parameter(torch.tensor(start))
    theirs = theirs_factory([p])
    params = start.copy()
    for _ in range(steps):
        g = rng.standard_normal(7)
        params = ours.step(params, g)
        p.grad = torch.tensor(g)
        theirs.step()
    return params, p.detach().numpy()


def test_adam_matches_torch():
    ours, theirs = run_both(Adam(lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.9, 0.999)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_sgd_with_momentum_matches_torch():
    ours, theirs = run_both(SGD(lr=1e-2, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: Adam(lr=1e-2), lambda: SGD(lr=1e-2, momentum=0.9)])
def test_state_round_trip_continues_identically(make):
    rng = np.random.default_rng(1)
    layout = Layout(["w", "b"], [(2,), (1,)])
    a, params = make(), rng.standard_normal(3)
    for _ in range(3):
        params = a.step(params, rng.standard_normal(3))
    b = make()
    b.load_state(a.state(layout), layout)
    g = rng.standard_normal(3)
    np.testing.assert_array_equal(a.step(params, g), b.step(params, g))
