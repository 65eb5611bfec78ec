"""The adaptation engine: one batch of windows in, predictions out, state updated by a policy.

The same engine serves the agent, `edge-ttt replay` and the demo. This first version carries the
`source` policy (no adaptation); the adaptive policies plug in behind the same `process` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_ttt.adapt.ort_model import OrtModel
from edge_ttt.adapt.softmax import softmax_entropy

POLICIES = ("source",)


@dataclass(frozen=True, eq=False)
class Predictions:
    classes: np.ndarray  # int64 [n]
    probs: np.ndarray  # float32 [n, K]
    entropy: np.ndarray  # float32 [n], nats

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class Counters:
    windows: int = 0
    adapt_steps: int = 0
    skipped_unreliable: int = 0
    rejected_invalid: int = 0
    resets: int = 0
    rollbacks: int = 0


@dataclass
class Engine:
    model: OrtModel
    policy: str = "source"
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        self._stats = self.model.source_stats()

    def process(self, x: np.ndarray) -> Predictions:
        """Predict a batch [n, channels, length] of raw windows."""
        out = self.model.forward(x, self._stats, mix=0.0)
        probs, ent = softmax_entropy(out.logits.astype(np.float64))
        self.counters.windows += len(x)
        return Predictions(probs.argmax(axis=1), probs.astype(np.float32), ent.astype(np.float32))
