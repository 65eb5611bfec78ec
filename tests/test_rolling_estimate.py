"""`RollingEstimate`: the whole-stream estimate of `edge-ttt replay`, window by window over a
horizon, and its state."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_ttt.adapt.estimates import device_estimates
from edge_ttt.adapt.rolling_estimate import RollingEstimate

PRIOR = np.array([0.1, 0.2, 0.3, 0.4])
STAY = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]


def stream(n: int, seed: int, every: int = 1) -> np.ndarray:
    """Activities of random lengths, a model right 80 % of the time, sampled every `every`-th."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 4, n), rng.integers(1, 30, n))[:n]
    classes = np.where(rng.random(n) < 0.8, labels, rng.integers(0, 4, n))
    return np.where(np.arange(n) % every == 0, classes, -1)


@pytest.mark.parametrize("every", [1, 4, 11])
def test_over_a_whole_stream_it_is_the_replay_estimate(every: int):
    classes = stream(600, seed=every, every=every)
    rolling = RollingEstimate(PRIOR, STAY, horizon=600)
    for i in range(0, 600, 7):  # in batches of any size
        rolling.update(classes[i : i + 7])
    n, estimate = device_estimates(classes, np.zeros(600), PRIOR, STAY)[0.0]
    assert rolling.ran() == n and rolling.get() == pytest.approx(estimate)


def test_over_a_horizon_it_is_the_estimate_of_the_last_windows():
    """The bound of the classes in the horizon, times the stays of the pairs whose later window is
    in it (the first may reach back before it), counted here by their definition."""
    classes = stream(500, seed=5, every=3)
    rolling = RollingEstimate(PRIOR, STAY, horizon=120).update(classes)
    ran = np.flatnonzero(classes >= 0)
    kept = expected = 0.0
    for before, after in itertools.pairwise(ran):
        if after >= 500 - 120 and after - before <= len(STAY):
            kept += classes[after] == classes[before]
            expected += STAY[after - before - 1]
    bound = device_estimates(classes[-120:], np.zeros(120), PRIOR)[0.0][1]
    assert rolling.ran() == int((classes[-120:] >= 0).sum())
    assert rolling.get() == pytest.approx(bound * min(1.0, kept / expected))


def test_the_state_round_trips_and_a_fresh_one_is_empty():
    rolling = RollingEstimate(PRIOR, STAY, horizon=50).update(stream(80, seed=2, every=2))
    again = RollingEstimate(PRIOR, STAY, horizon=50)
    assert again.state()["windows"].shape == (0, 3)  # nothing yet: left out of a fresh state's layout
    again.load_state(rolling.state())
    assert again.get() == rolling.get() and again.ran() == rolling.ran()
    more = stream(30, seed=3)
    assert again.update(more).get() == rolling.update(more).get()


def test_a_model_that_ran_on_nothing_has_no_estimate_and_no_classes():
    rolling = RollingEstimate(PRIOR, STAY, horizon=8).update([-1, -1, -1])
    assert rolling.get() is None and rolling.ran() == 0 and rolling.effective_classes() == 0.0
    with pytest.raises(ValueError, match="horizon"):
        RollingEstimate(PRIOR, STAY, horizon=0)


@pytest.mark.parametrize(
    ("part", "value", "message"),
    [
        ("windows", [[7, 0, 0]], "classes must be -1 to 3"),
        ("windows", [[1.0, 0.0, np.nan]], "must hold finite numbers"),
        ("windows", [[1, 2, 1]], "stays must be 0 or 1"),
        ("windows", [[1, 1, 9]], "its gaps 0 to 8"),
        ("last", [9, 0], "classes must be -1 to 3"),
    ],
)
def test_a_state_no_estimate_saved_is_refused(part: str, value, message: str):
    rolling = RollingEstimate(PRIOR, STAY, horizon=8).update([0, 1, 1])
    state = {**rolling.state(), part: np.array(value)}
    with pytest.raises(ValueError, match=message):
        RollingEstimate(PRIOR, STAY, horizon=8).load_state(state)
