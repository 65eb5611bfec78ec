"""Label runs: tell a stream that mixes activities from one that stays on a few for minutes.

On a stream of one activity the default policy's statistics follow the activity instead of the
shift, and alignment learns to undo a "shift" that is only the class (docs/adaptation.md). The
detector keeps a momentum histogram of the served classes over a horizon of windows and its
effective number of classes, `1 / sum(share**2)`: the stream is in a run while that falls below
`enter`, and leaves it only above `leave` (hysteresis: a run's last minutes, mixed with the next
activity's first, do not flip it back and forth). Pure numpy; the engine acts on `in_run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from edge_ttt.adapt.statistics import ClassBalance
from edge_ttt.class_mix import effective_classes

Arrays = dict[str, np.ndarray]
ServeMode = Literal["source", "blend"]  # who serves in a run: `RunOptions.serve`
SERVE_MODES: tuple[str, ...] = get_args(ServeMode)


@dataclass(frozen=True)
class RunOptions:
    """`horizon`: windows the class histogram spans (a window's weight is 1/horizon);
    `enter`/`leave`: effective numbers of classes below which a run starts and above which it
    ends; `offset_floor`: the input alignment's offset floor in a run, in source stds (the
    alignment's own default, not the wider floor left to a batch-norm policy's statistics);
    `serve`: in a run, `source` serves the source model, `blend` the mean of its probabilities
    and those of the policy held still (what it adapted to before the run, which a shift such as
    noise needs, without what the run's activity would teach it); `instance_offsets`: in a run,
    the first batch norm of the models that serve follows each window's own offset (an alpha, as
    `steady`'s option of that name; 0: off), which the statistics held still do not."""

    horizon: float = 128.0
    enter: float = 3.0
    leave: float = 4.0
    offset_floor: float = 0.4
    serve: ServeMode = "blend"
    instance_offsets: float = 4.0

    def __post_init__(self) -> None:
        if not self.horizon >= 1.0:
            raise ValueError(f"label runs horizon must be >= 1 window, got {self.horizon}")
        if not self.enter >= 1.0:
            raise ValueError(f"label runs enter must be >= 1 class, got {self.enter}")
        if not self.leave >= self.enter:
            raise ValueError(f"label runs leave must be >= enter ({self.enter}), got {self.leave}")
        if not self.offset_floor >= 0.0:
            raise ValueError(f"label runs offset_floor must be >= 0, got {self.offset_floor}")
        if not self.instance_offsets >= 0.0:
            raise ValueError(f"label runs instance_offsets must be >= 0, got {self.instance_offsets}")
        if self.serve not in SERVE_MODES:
            raise ValueError(f"label runs serve must be one of {', '.join(SERVE_MODES)}, got {self.serve!r}")


class LabelRuns:
    """The run detector of one stream, fed the served classes of each batch's valid windows.

    Fed one class, a 6-class stream starts a run after 5 windows and keeps it:

    >>> runs = LabelRuns(RunOptions(horizon=8.0), classes=6)
    >>> [runs.update(np.array([2])) for _ in range(12)].index(True) + 1, runs.in_run
    (5, True)
    """

    def __init__(self, options: RunOptions, classes: int) -> None:
        self.options = options
        self.classes = classes
        self.reset()

    def reset(self) -> None:
        """Back to a uniform histogram, out of a run."""
        self.mix = ClassBalance(self.classes, 1.0 / self.options.horizon)
        self.in_run = False

    @property
    def share(self) -> np.ndarray:
        """The momentum histogram of the served classes (shares summing to 1)."""
        return self.mix.share

    def effective_classes(self) -> float:
        """The effective number of classes of the histogram, 1 (one class) to `classes` (uniform)."""
        return effective_classes(self.mix.share)

    def update(self, classes: np.ndarray) -> bool:
        """Fold in a batch of served classes; True when `in_run` changed (no classes: no change)."""
        classes = np.asarray(classes, np.int64)
        if len(classes) == 0:
            return False
        self.mix.observe(classes)
        n_eff, before = self.effective_classes(), self.in_run
        self.in_run = n_eff < (self.options.leave if before else self.options.enter)
        return self.in_run != before

    def state(self) -> Arrays:
        return {"share": self.mix.share.copy(), "in_run": np.asarray(self.in_run)}

    def load_state(self, flat: Arrays) -> None:
        """Restore what `state` returned; refused for another number of classes."""
        share = np.asarray(flat["share"], np.float64)
        if share.shape != (self.classes,):
            raise ValueError(f"label runs share has shape {list(share.shape)}, expected [{self.classes}]")
        self.mix.share = share.copy()
        self.in_run = bool(flat["in_run"])
