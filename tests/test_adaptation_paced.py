"""The paced stream's clock (benchmarks/adaptation/paced.py) on injected timings: which batches
are adapted on, which only predicted, and what that costs the core."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.adaptation.paced import pace, replay_paced


def fixed(process_s: float, predict_s: float, log: list[tuple[int, int, bool]]):
    """A step that takes `process_s` to adapt and `predict_s` to predict, logging each batch."""

    def step(windows: slice, adapt: bool) -> float:
        log.append((windows.start, windows.stop, adapt))
        return process_s if adapt else predict_s

    return step


def adapted_windows(log: list[tuple[int, int, bool]]) -> list[int]:
    return [i for start, stop, adapt in log if adapt for i in range(start, stop)]


def test_a_step_faster_than_the_hop_misses_nothing():
    log: list = []
    paced = pace(10, 1, 1.0, fixed(0.5, 0.1, log))
    assert adapted_windows(log) == list(range(10))
    assert paced.missed == 0 and paced.predict_s == [] and paced.process_s == [0.5] * 10
    assert paced.lag_s == pytest.approx(0.5)


def test_a_step_as_long_as_the_hop_misses_nothing():
    log: list = []
    assert pace(10, 1, 1.0, fixed(1.0, 0.1, log)).missed == 0


def test_a_slow_step_misses_exactly_the_windows_that_arrive_meanwhile():
    """A 2.5 s step on a 1 s hop: windows 1 and 2 arrive while window 0 is adapted on, and are
    predicted (0.1 s each) after it; window 3 finds the core idle again."""
    log: list = []
    paced = pace(10, 1, 1.0, fixed(2.5, 0.1, log))
    assert adapted_windows(log) == [0, 3, 6, 9]
    assert paced.missed == 6 and len(paced.predict_s) == 6 and len(paced.process_s) == 4
    assert [start for start, _, _ in log] == list(range(10))  # every window answered, in order
    assert paced.lag_s == pytest.approx(2.5)  # window 9 adapted on at its arrival


def test_predictions_take_the_core_too():
    """With 0.6 s predictions the core is still busy at window 3 (2.5 + 0.6 + 0.6 > 3): it misses
    what a free prediction would have let it adapt on."""
    log: list = []
    paced = pace(10, 1, 1.0, fixed(2.5, 0.6, log))
    # 0 adapted until 2.5; 1, 2, 3, 4 predicted until 4.9; 5 adapted until 7.5; 6..9 predicted.
    assert adapted_windows(log) == [0, 5]
    assert paced.missed == 8
    assert paced.lag_s == pytest.approx(7.5 + 4 * 0.6 - 9.0)


def test_a_stream_faster_than_inference_falls_ever_further_behind():
    lags = [pace(n, 1, 1.0, fixed(3.0, 1.5, [])).lag_s for n in (10, 20, 40)]
    assert lags[0] < lags[1] < lags[2]


def test_a_batch_is_ready_when_its_last_window_arrives():
    """Batches of 4 on a 1 s hop are ready at 3, 7 and 9 s (the last one short)."""
    log: list = []
    paced = pace(10, 4, 1.0, fixed(5.0, 0.1, log))
    # [0, 4) adapted from 3 to 8; [4, 8) ready at 7, predicted 8 to 8.1; [8, 10) ready at 9: adapted.
    assert log == [(0, 4, True), (4, 8, False), (8, 10, True)]
    assert paced.missed == 4 and paced.lag_s == pytest.approx(5.0)
    log.clear()
    paced = pace(10, 4, 1.0, fixed(2.5, 0.1, log))
    # [0, 4) done at 5.5, [4, 8) adapted from 7 to 9.5: the short last batch, ready at 9, is missed.
    assert log == [(0, 4, True), (4, 8, True), (8, 10, False)] and paced.missed == 2
    assert pace(10, 4, 1.0, fixed(1.9, 0.1, [])).missed == 0


def test_summary_in_milliseconds_with_medians_per_call_kind():
    paced = pace(10, 1, 1.0, fixed(2.5, 0.1, []))
    assert paced.summary(50.0, 1.0) == {
        "rate_hz": 50.0,
        "hop_ms": 1000.0,
        "missed": 6,
        "ms_per_process": pytest.approx(2500.0),
        "ms_per_predict": pytest.approx(100.0),
        "lag_ms": pytest.approx(2500.0),
    }
    assert pace(3, 1, 1.0, fixed(0.5, 0.1, [])).summary(50.0, 1.0)["ms_per_predict"] is None


def test_bad_hops_and_batch_sizes_are_refused():
    for hop, batch in ((0.0, 1), (-1.0, 1), (1.0, 0)):
        with pytest.raises(ValueError):
            pace(4, batch, hop, fixed(0.1, 0.1, []))


class FakeEngine:
    """Classes from the windows' first value; the source model's class is its negative."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def _out(self, kind: str, x: np.ndarray) -> SimpleNamespace:
        self.calls.append((kind, len(x)))
        classes = x[:, 0, 0].astype(np.int64)
        return SimpleNamespace(classes=classes, source_classes=-classes)

    def process(self, x: np.ndarray) -> SimpleNamespace:
        return self._out("process", x)

    def predict(self, x: np.ndarray) -> SimpleNamespace:
        return self._out("predict", x)


def test_replay_times_each_call_and_fills_in_every_window():
    """A clock that moves 2 s per call, on a 1 s hop: window 0 adapted, 1 predicted, 2 adapted..."""
    ticks = iter(np.arange(0.0, 100.0, 1.0))  # two readings per call: 1 s apart
    x = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 2, 3), np.float32)
    served, source = np.full(6, -9, np.int64), np.full(6, -9, np.int64)
    engine = FakeEngine()
    paced = replay_paced(engine, x, 2, 1.0, served, source, clock=lambda: float(next(ticks)))
    assert served.tolist() == [0, 1, 2, 3, 4, 5] and source.tolist() == [0, -1, -2, -3, -4, -5]
    # batches ready at 1, 3, 5 s; each call takes 1 s: always idle again in time
    assert engine.calls == [("process", 2)] * 3 and paced.missed == 0
    ticks = iter(np.arange(0.0, 100.0, 3.0))  # 3 s per call: busy until 4, then 7; ready at 3 and 5
    engine = FakeEngine()
    paced = replay_paced(engine, x, 2, 1.0, served, source, clock=lambda: float(next(ticks)))
    assert engine.calls == [("process", 2), ("predict", 2), ("predict", 2)] and paced.missed == 4
    assert paced.process_s == [3.0] and paced.predict_s == [3.0, 3.0]
