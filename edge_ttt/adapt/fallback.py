"""When to serve the source model instead of the adapted one: a comparison of their label-free
accuracy estimates over the last windows (`RollingEstimate`: the class-mix bound of each model's
predicted classes times their steadiness), with a margin to switch and a smaller one to return.

Pure numpy. A switch to source waits until the source model's predictions over the horizon hold
most of the classes (`classes`): the bound needs a span of several activities, and during one long
activity it would read as harm what is only the stream's narrow mix. It looks at the source
model's classes, not the adapted one's, so a collapsed adapted model does not shut it. The return
to the adapted model (the default) waits for nothing but the estimates: a source model that
narrowed its classes after the switch (confused by the shift it was called for) would otherwise
keep serving while the adapted model is estimated far ahead. The
adapted model keeps adapting while the source model serves (neither reset nor frozen): its
estimate must be able to recover for it to serve again, and a state that is only temporarily
worse is worth keeping. A collapsed state is the policy's own collapse detector's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_ttt.adapt.rolling_estimate import RollingEstimate
from edge_ttt.class_mix import effective_classes


@dataclass(frozen=True)
class FallbackOptions:
    """Over the last `horizon` windows, the source model serves once the adapted model's estimate
    is more than `margin` below its own, and the adapted model again once it is less than
    `recover` below; nothing switches before the adapted model ran on `min_windows` windows, nor
    does the source model start serving while its classes hold fewer than `classes` x the prior's
    effective classes."""

    horizon: int = 512
    margin: float = 0.10
    recover: float = 0.02
    min_windows: int = 32
    classes: float = 0.7

    def __post_init__(self) -> None:
        if self.horizon < 1 or not 1 <= self.min_windows <= self.horizon:
            raise ValueError(
                f"fallback needs 1 <= min_windows ({self.min_windows}) <= horizon ({self.horizon})"
            )
        if not 0.0 <= self.recover <= self.margin < 1.0:
            raise ValueError(f"fallback needs 0 <= recover ({self.recover}) <= margin ({self.margin}) < 1")
        if not 0.0 <= self.classes <= 1.0:
            raise ValueError(f"fallback classes must be in [0, 1], got {self.classes}")


class Fallback:
    """Decides, window batch by batch, whether the source model serves.

    >>> prior = np.full(2, 0.5)
    >>> f = Fallback(FallbackOptions(horizon=8, margin=0.2, recover=0.1, min_windows=4), prior, None)
    >>> f.update(adapted=[0, 0, 0, 0], source=[0, 1, 0, 1])  # adapted stuck on one class: switch
    True
    >>> f.on_source
    True
    >>> f.update(adapted=[0, 1, 0, 1, 0, 1, 0, 1], source=[0, 1, 0, 1, 0, 1, 0, 1])  # and back
    True
    >>> f.on_source
    False
    """

    def __init__(self, options: FallbackOptions, prior: np.ndarray, stay: Sequence[float] | None) -> None:
        self.options = options
        self.needed = options.classes * effective_classes(np.asarray(prior, np.float64))
        self.adapted = RollingEstimate(prior, stay, options.horizon)
        self.source = RollingEstimate(prior, stay, options.horizon)
        self.on_source = False

    def reset(self) -> None:
        self.on_source = False
        self.adapted.reset()
        self.source.reset()

    def update(self, adapted, source) -> bool:
        """Both models' classes on the same windows (the source's -1 where it did not run); True
        when the served model changed. The two are compared when the source model's estimate moved
        (it runs on a sample of the windows while the adapted model serves): a switch waits at most
        until its next window, and the comparison costs a quarter at the default sample."""
        self.adapted.update(adapted)
        seen = self.source.seen
        self.source.update(source)
        if self.source.seen == seen or self.adapted.ran() < self.options.min_windows:
            return False
        if not self.on_source and self.source.effective_classes() < self.needed:
            return False  # the class gate holds back a switch to source, never the return
        gap = self.adapted.get() - self.source.get()
        switch = gap < -self.options.margin if not self.on_source else gap > -self.options.recover
        if switch:
            self.on_source = not self.on_source
        return switch

    def describe(self, policy: str) -> str:
        """Both estimates, for the log line of a switch."""
        a, s, n = self.adapted.get(), self.source.get(), self.adapted.ran()
        return f"estimated accuracy {policy} {a:.3f}, source {s:.3f} over the last {n} windows"

    def state(self) -> dict[str, np.ndarray]:
        flat = {"on_source": np.asarray(self.on_source)}
        for name, rolling in (("adapted", self.adapted), ("source", self.source)):
            flat.update({f"{name}_{k}": v for k, v in rolling.state().items()})
        return flat

    def load_state(self, flat: dict[str, np.ndarray]) -> None:
        """A state saved by the earlier rule (rolling entropy shares, before 2026-12-06) holds no
        classes: the comparison starts afresh."""
        if "adapted_windows" not in flat:
            self.reset()
            return
        self.on_source = bool(flat["on_source"])
        for name, rolling in (("adapted", self.adapted), ("source", self.source)):
            rolling.load_state({k: flat[f"{name}_{k}"] for k in ("windows", "last")})


DEFAULT_FALLBACK = FallbackOptions()
