"""When to serve the source model instead of the adapted one: a comparison of their label-free
accuracy estimates (`edge_ttt.adapt.estimates`) over the last windows, with a margin both ways.

Pure numpy. The adapted model keeps adapting while the source model serves (neither reset nor
frozen): its estimate must be able to recover for it to serve again, and a state that is only
temporarily worse (one activity for minutes) is worth keeping. A collapsed state is the policy's
own collapse detector's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.estimates import RollingMean


@dataclass(frozen=True)
class FallbackOptions:
    """`horizon` windows are compared; the served model changes when the other one's estimate is
    ahead by more than `margin` (a share of windows), and not before `min_windows` windows."""

    horizon: int = 256
    margin: float = 0.02
    min_windows: int = 32

    def __post_init__(self) -> None:
        if self.horizon < 1 or not 1 <= self.min_windows <= self.horizon:
            raise ValueError(
                f"fallback needs 1 <= min_windows ({self.min_windows}) <= horizon ({self.horizon})"
            )
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"fallback margin must be in [0, 1), got {self.margin}")


class Fallback:
    """Decides, window batch by batch, whether the source model serves.

    >>> f = Fallback(FallbackOptions(horizon=4, margin=0.1, min_windows=2))
    >>> f.update(adapted=[0.0, 0.0], source=[1.0, 1.0])  # adapted estimated worse: switch
    True
    >>> f.on_source
    True
    >>> f.update(adapted=[1.0, 1.0, 1.0, 1.0], source=[0.0, 0.0, 0.0, 0.0])  # and back
    True
    >>> f.on_source
    False
    """

    def __init__(self, options: FallbackOptions | None = None) -> None:
        self.options = options or FallbackOptions()
        self.reset()

    def reset(self) -> None:
        self.on_source = False
        self.adapted = RollingMean(self.options.horizon)
        self.source = RollingMean(self.options.horizon)

    def update(self, adapted, source) -> bool:
        """Both models' per-window estimates (`likely_right`) for the same windows; True when
        the served model changed."""
        self.adapted.update(adapted)
        self.source.update(source)
        if len(self.adapted) < self.options.min_windows:
            return False
        gap = self.adapted.get() - self.source.get()
        margin = self.options.margin
        switch = gap < -margin if not self.on_source else gap > margin
        if switch:
            self.on_source = not self.on_source
        return switch

    def state(self) -> dict[str, np.ndarray]:
        return {
            "on_source": np.asarray(self.on_source),
            "adapted": self.adapted.state(),
            "source": self.source.state(),
        }

    def load_state(self, flat: dict[str, np.ndarray]) -> None:
        self.on_source = bool(flat["on_source"])
        self.adapted.load_state(flat["adapted"])
        self.source.load_state(flat["source"])


DEFAULT_FALLBACK = FallbackOptions()
