"""The label-run detector: when a stream counts as one activity for a while, and when not."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ttt.adapt.label_runs import LabelRuns, RunOptions

CLASSES = 7


def windows_to_enter(classes: int, horizon: float, enter: float) -> int:
    """From a uniform histogram, fed one class a window at a time: the first window after which
    the effective number of classes is below `enter` (worked out in closed form)."""
    for k in range(1, 10_000):
        rest = (1.0 - 1.0 / horizon) ** k / classes  # each other class's share
        top = 1.0 - (classes - 1) * rest
        if 1.0 / (top**2 + (classes - 1) * rest**2) < enter:
            return k
    raise AssertionError("never")


def test_a_stream_of_one_class_enters_a_run_when_expected():
    runs = LabelRuns(RunOptions(), CLASSES)
    changed = [runs.update(np.array([3])) for _ in range(400)]
    expected = windows_to_enter(CLASSES, RunOptions.horizon, RunOptions.enter)
    assert changed.index(True) + 1 == expected and sum(changed) == 1
    assert runs.in_run and runs.effective_classes() < 1.5


def test_batches_count_as_their_windows():
    one, batched = LabelRuns(RunOptions(), CLASSES), LabelRuns(RunOptions(), CLASSES)
    for _ in range(8):
        for _ in range(4):
            one.update(np.array([1]))
        batched.update(np.full(4, 1))
    np.testing.assert_allclose(one.share, batched.share)


def test_seven_classes_in_runs_of_25_never_enter():
    runs = LabelRuns(RunOptions(), CLASSES)
    stream = np.repeat(np.tile(np.arange(CLASSES), 10), 25)
    assert not any(runs.update(stream[i : i + 1]) for i in range(len(stream)))
    assert runs.effective_classes() > 3.0


def test_hysteresis_leaves_only_above_leave():
    runs = LabelRuns(RunOptions(), CLASSES)
    for _ in range(200):
        runs.update(np.array([0]))
    mixed = np.tile(np.arange(CLASSES), 40)
    trace = []
    for c in mixed:
        runs.update(np.array([c]))
        trace.append((runs.effective_classes(), runs.in_run))
    left = next(i for i, (_, on) in enumerate(trace) if not on)
    # between enter and leave the run holds; it ends at the first window above leave
    assert any(3.0 < n <= 4.0 and on for n, on in trace[:left])
    assert trace[left][0] > 4.0 and all(n <= 4.0 for n, _ in trace[:left])


def test_no_classes_change_nothing():
    runs = LabelRuns(RunOptions(), CLASSES)
    before = runs.share.copy()
    assert runs.update(np.array([], np.int64)) is False
    np.testing.assert_array_equal(runs.share, before)


def test_state_round_trip_and_reset():
    runs = LabelRuns(RunOptions(), CLASSES)
    for _ in range(100):
        runs.update(np.array([2]))
    other = LabelRuns(RunOptions(), CLASSES)
    other.load_state(runs.state())
    assert other.in_run and np.array_equal(other.share, runs.share)
    assert other.update(np.array([2])) == runs.update(np.array([2]))
    other.reset()
    assert not other.in_run and other.effective_classes() == pytest.approx(CLASSES)
    with pytest.raises(ValueError, match="share"):
        LabelRuns(RunOptions(), 3).load_state(runs.state())


@pytest.mark.parametrize(
    ("field", "value"),
    [("horizon", 0.5), ("enter", 0.0), ("leave", 2.0), ("offset_floor", -0.1), ("horizon", float("nan"))],
)
def test_bad_options_are_refused_by_name(field: str, value: float):
    with pytest.raises(ValueError, match=field):
        RunOptions(**{field: value})
