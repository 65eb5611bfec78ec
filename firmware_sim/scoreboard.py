"""Score an agent's published predictions against the labels of the log that was replayed.

The agent cuts windows with the same `Windower` as `windows_from_log`, so a prediction and its
label meet on (device, t_end_ns). QoS 1 may deliver a message twice: a window counts once per
policy. Thread-safe, because paho's network thread adds while the caller reads.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict

import numpy as np

from edge_ttt.recordlog import RecordedLog
from edge_ttt.stream.window import windows_from_log


def window_labels(log: RecordedLog, length: int, hop: int) -> dict[tuple[str, int], int]:
    """(device, t_end_ns) -> label index of every labeled window the agent will cut from `log`."""
    windows, devices = windows_from_log(log, length, hop)
    return {
        (str(d), int(t)): int(y)
        for d, t, y in zip(devices, windows.t_end_ns, windows.label, strict=True)
        if y >= 0
    }


class Scoreboard:
    """Predictions per (policy, device) as they arrive; accuracy over the labeled windows."""

    def __init__(self, labels: dict[tuple[str, int], int]) -> None:
        self.labels = labels
        self.malformed = 0
        self._seen: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
        self._lock = threading.Lock()

    def add(self, payload: bytes) -> None:
        """One predictions message (single or batched, docs/agent.md); a malformed one is counted."""
        try:
            body = json.loads(payload)
            device, policy = str(body["device"]), str(body["policy"])
            rows = body.get("predictions", [body])
            pairs = [(int(r["t_end_ns"]), int(r["class_index"])) for r in rows]
        except (ValueError, TypeError, KeyError, AttributeError):
            with self._lock:
                self.malformed += 1
            return
        with self._lock:
            self._seen[(policy, device)].update(pairs)

    def received(self, policy: str) -> int:
        """Distinct windows predicted by `policy` so far, over all devices."""
        with self._lock:
            return sum(len(v) for (p, _), v in self._seen.items() if p == policy)

    def predictions(self, policy: str) -> tuple[np.ndarray, np.ndarray]:
        """(class index, device) of every window `policy` predicted, labeled or not: what a
        label-free estimate may look at."""
        with self._lock:
            rows = [(c, d) for (p, d), seen in self._seen.items() if p == policy for c in seen.values()]
        classes = np.array([c for c, _ in rows], np.int64)
        return classes, np.array([d for _, d in rows], dtype=object)

    def accuracy(self, policy: str, device: str) -> tuple[float | None, int]:
        """Share of labeled windows predicted right, and how many labeled windows were predicted."""
        with self._lock:
            seen = dict(self._seen.get((policy, device), {}))
        hits = [pred == self.labels[(device, t)] for t, pred in seen.items() if (device, t) in self.labels]
        return (float(np.mean(hits)) if hits else None), len(hits)
