"""A model's label-free accuracy estimate over its last windows, updated window by window: the
class-mix bound of its predicted classes times their steadiness (`edge_ttt.steadiness`), as
`device_estimates` computes it over a whole stream. What the fallback compares
(`edge_ttt.adapt.fallback`). Numeric only, no I/O; its counts are Python numbers, since it is
asked on every window and a handful of classes is cheaper that way than through numpy's calls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from edge_ttt.class_mix import class_mix_cap, effective_classes
from edge_ttt.steadiness import StayCounter, stay_factor


class RollingEstimate:
    """Over the last `horizon` windows: the counts of the classes a model predicted and, of the
    pairs of consecutive windows it ran on (at most `len(stay)` apart), those whose class stayed
    against the source model's held-out stay rate at that gap (`stay`, the manifest's
    `reference.stay`; None: the bound alone). A window it did not run on is class -1: it takes a
    place in the horizon and widens the next pair's gap.

    >>> r = RollingEstimate(np.array([0.5, 0.5]), [1.0], horizon=4)
    >>> r.update([0, 0, 1, 1]).get()  # the prior's mix; 2 of the 3 pairs stay
    0.6666666666666666
    >>> r.update([1, 1]).get()  # [1, 1, 1, 1] now: half the mix, 3 of its 4 pairs (one reaches back to a 0)
    0.375
    >>> RollingEstimate(np.array([0.5, 0.5]), None, horizon=4).get() is None
    True
    """

    def __init__(self, prior: np.ndarray, stay: Sequence[float] | None, horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {horizon}")
        # Python numbers, not arrays: the fallback asks on every window, and a handful of classes
        # is cheaper in plain arithmetic than through numpy's calls.
        self.prior = [float(p) for p in prior]
        self.stay = [] if stay is None else [float(s) for s in stay]
        self.horizon = horizon
        self.reset()

    def reset(self) -> None:
        # Per window in the horizon, three small numbers (no object made per window, for agents
        # of many devices): its class (-1: not run), whether its pair with the window before it
        # ran on stayed, and that pair's gap (0: no pair).
        self._classes: deque[int] = deque()
        self._stayed: deque[bool] = deque()
        self._gaps: deque[int] = deque()
        self.counts = [0] * len(self.prior)
        self._ran = 0
        self.seen = 0  # windows it ran on since the reset, for callers that wait for a new one
        self._kept = 0
        self._expected = 0.0
        self._pairs = StayCounter(self.stay)  # which window closes a counted pair, and at what gap

    def update(self, classes) -> RollingEstimate:
        for c in np.asarray(classes, np.int64).ravel().tolist():
            gap, stayed = self._pairs.closes(c)
            self.seen += c >= 0
            self._add(c, stayed, gap)
        return self

    def _add(self, c: int, kept: bool, gap: int) -> None:
        self._classes.append(c)
        self._stayed.append(kept)
        self._gaps.append(gap)
        self._count(c, kept, gap, 1)
        if len(self._classes) > self.horizon:
            self._count(self._classes.popleft(), self._stayed.popleft(), self._gaps.popleft(), -1)

    def _count(self, c: int, kept: bool, gap: int, sign: int) -> None:
        if c >= 0:
            self.counts[c] += sign
            self._ran += sign
        self._kept += sign * kept
        if gap:
            self._expected += sign * self.stay[gap - 1]

    def get(self) -> float | None:
        """The bound times the steadiness; None before the model ran on any window."""
        if not self._ran:
            return None
        return class_mix_cap(self.counts, self.prior) * stay_factor(self._kept, max(self._expected, 0.0))

    def ran(self) -> int:
        """Windows in the horizon that the model ran on."""
        return self._ran

    def effective_classes(self) -> float:
        """The effective number of classes of its predictions in the horizon (0 for none)."""
        return effective_classes([c / self._ran for c in self.counts]) if self._ran else 0.0

    def state(self) -> dict[str, np.ndarray]:
        """`windows` [n, 3]: class, stayed, gap per window in the horizon (none yet: empty);
        `last`: the last class the model ran on and how many windows ago."""
        rows = np.array([self._classes, self._stayed, self._gaps], np.int64).T
        last = np.array([self._pairs.last, self._pairs.gap], np.int64)
        return {"windows": rows.reshape(-1, 3), "last": last}

    def load_state(self, flat: dict[str, np.ndarray]) -> None:
        """ValueError for a state no estimate saved (a class or a gap out of range): the engine
        then refuses the state whole."""
        rows = np.asarray(flat["windows"], np.float64).reshape(-1, 3)
        last, gap = np.asarray(flat["last"], np.float64)
        if not (np.isfinite(rows).all() and np.isfinite([last, gap]).all() and gap >= 0):
            raise ValueError("a rolling estimate's state must hold finite numbers")
        if not np.isin(np.append(rows[:, 0], last), np.arange(-1, len(self.prior))).all():
            raise ValueError(f"a rolling estimate's classes must be -1 to {len(self.prior) - 1}")
        gaps = np.arange(len(self.stay) + 1)
        if not (np.isin(rows[:, 1], (0, 1)).all() and np.isin(rows[:, 2], gaps).all()):
            raise ValueError(f"a rolling estimate's stays must be 0 or 1, its gaps 0 to {len(self.stay)}")
        self.reset()
        for c, kept, pair_gap in rows[-self.horizon :].astype(np.int64).tolist():
            self._add(c, bool(kept), pair_gap)
        self._pairs.resume(int(last), int(gap))
