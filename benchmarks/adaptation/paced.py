"""Stream-paced scoring: a stream that does not wait for the policy (Alfarra et al., ICML 2024,
"Evaluation of test-time adaptation under computational time constraints").

Windows arrive one hop apart at the sensor's rate; a batch is ready when its last window has
arrived. One core does all the work, on a simulated clock advanced by each call's measured wall
time: a batch that finds the core idle is adapted on (`Engine.process`); one that arrives while
the core is still busy is predicted by the last state without adapting (`Engine.predict`), once
the work before it is done, and that prediction takes the core's time too. Alfarra et al. let
the skipped samples be predicted by the last adapted model at no cost; on a device with one core
inference is not free, so here it is charged, and a stream faster than even inference shows as
a growing lag. docs/adaptation-benchmark.md, "Paced scoring".
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# step(windows, adapt) runs one batch, adapting on it or only predicting, and returns its seconds.
Step = Callable[[slice, bool], float]


@dataclass
class Paced:
    """What a paced replay did: per call kind the measured seconds, the windows only predicted,
    and how far the core was behind the stream when its last window was answered."""

    process_s: list[float] = field(default_factory=list)
    predict_s: list[float] = field(default_factory=list)
    missed: int = 0  # windows predicted by the last state without adapting
    lag_s: float = 0.0  # the last window's answer, after its arrival

    def summary(self, rate_hz: float, hop_s: float) -> dict:
        """The cell's paced fields (JSON): the rate, the hop, missed windows, the median
        milliseconds per call of each kind (None where there was none) and the lag at the end."""
        return {
            "rate_hz": rate_hz,
            "hop_ms": 1000 * hop_s,
            "missed": self.missed,
            "ms_per_process": _median_ms(self.process_s),
            "ms_per_predict": _median_ms(self.predict_s),
            "lag_ms": 1000 * self.lag_s,
        }


def _median_ms(seconds: list[float]) -> float | None:
    return 1000 * statistics.median(seconds) if seconds else None


def pace(windows: int, batch_size: int, hop_s: float, step: Step) -> Paced:
    """Replay `windows` windows, `hop_s` apart (the first at 0), in batches of `batch_size` on
    one core; `step` does each batch's work and says how long it took."""
    if hop_s <= 0 or batch_size < 1:
        raise ValueError(f"need a positive hop and batch size, got {hop_s} s and {batch_size}")
    out = Paced()
    free = 0.0  # when the core has finished the work it has taken on
    for start in range(0, windows, batch_size):
        stop = min(start + batch_size, windows)
        ready = (stop - 1) * hop_s
        adapt = free <= ready
        took = step(slice(start, stop), adapt)
        (out.process_s if adapt else out.predict_s).append(took)
        out.missed += 0 if adapt else stop - start
        free = max(free, ready) + took
        out.lag_s = free - ready
    return out


class Serving(Protocol):
    """The part of `Engine` a paced replay drives."""

    def process(self, x: np.ndarray): ...

    def predict(self, x: np.ndarray): ...


def replay_paced(
    engine: Serving,
    x: np.ndarray,
    batch_size: int,
    hop_s: float,
    served: np.ndarray,
    source: np.ndarray,
    clock: Callable[[], float] = time.perf_counter,
) -> Paced:
    """`pace` through an engine, each call timed by `clock` (the wall clock; tests inject one);
    the served and the source model's classes go into `served` and `source`."""

    def step(windows: slice, adapt: bool) -> float:
        start = clock()
        out = (engine.process if adapt else engine.predict)(x[windows])
        took = clock() - start
        served[windows], source[windows] = out.classes, out.source_classes
        return took

    return pace(len(x), batch_size, hop_s, step)
