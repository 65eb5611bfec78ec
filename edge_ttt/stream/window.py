"""Streaming per-device windowing: the one code path shared by training, replay and the live agent.

Rules (see docs/log-format.md, "Windowing"): a run is a stretch of samples whose consecutive
time steps are in (0, 2 * period]; any other step ends the run, discards its buffered samples
and counts one gap. Within a run, windows start at run offsets 0, hop, 2*hop, ... and are
emitted as soon as their last sample arrives, so chunking never changes the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_ttt.recordlog import RecordedLog

__all__ = ["WindowBatch", "Windower", "windows_from_log"]

# A step of up to this many periods (one dropped sample) still continues a run.
MAX_STEP_PERIODS = 2


@dataclass(frozen=True, eq=False)
class WindowBatch:
    """Windows in the layout the models take; `eq=False` because fields are arrays."""

    x: np.ndarray  # float32 [n, C, L]
    t_end_ns: np.ndarray  # int64 [n], time of each window's last sample
    label: np.ndarray  # int32 [n], label of each window's last sample, -1 when unknown

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @staticmethod
    def empty(channels: int, length: int) -> WindowBatch:
        return WindowBatch(
            x=np.zeros((0, channels, length), dtype=np.float32),
            t_end_ns=np.zeros(0, dtype=np.int64),
            label=np.zeros(0, dtype=np.int32),
        )

    @staticmethod
    def concat(
        batches: Sequence[WindowBatch], *, channels: int | None = None, length: int | None = None
    ) -> WindowBatch:
        """Concatenate batches of equal window shape.

        `channels`/`length` are needed only for an empty sequence (there is no batch to take the
        shape from); when given with batches they are checked, which catches shape mix-ups early.
        """
        if not batches:
            if channels is None or length is None:
                raise ValueError("concat of no batches needs channels= and length= to shape the result")
            return WindowBatch.empty(channels, length)
        shapes = {b.x.shape[1:] for b in batches}
        if len(shapes) != 1:
            raise ValueError(f"cannot concat batches with different window shapes {sorted(shapes)}")
        (shape,) = shapes
        if (channels is not None and channels != shape[0]) or (length is not None and length != shape[1]):
            raise ValueError(f"batches have window shape {shape}, expected ({channels}, {length})")
        return WindowBatch(
            x=np.concatenate([b.x for b in batches]),
            t_end_ns=np.concatenate([b.t_end_ns for b in batches]),
            label=np.concatenate([b.label for b in batches]),
        )


class Windower:
    """Cuts one device's sample stream into windows of `length` samples every `hop` samples.

    Only the samples a future window can still use are buffered (fewer than `length`), so memory
    stays bounded however long the stream runs.
    """

    def __init__(self, length: int, hop: int, period_ns: int, channels: int) -> None:
        for name, value in (
            ("length", length),
            ("hop", hop),
            ("period_ns", period_ns),
            ("channels", channels),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.length = int(length)
        self.hop = int(hop)
        self.period_ns = int(period_ns)
        self.channels = int(channels)
        self.gaps = 0
        self.reset()

    def reset(self) -> None:
        """End the current run without counting a gap (the caller knows why the stream broke)."""
        self._last_t: int | None = None
        self._run_len = 0  # samples seen in the current run, including ones no longer buffered
        self._buf_t = np.zeros(0, dtype=np.int64)
        self._buf_x = np.zeros((0, self.channels), dtype=np.float32)
        self._buf_label = np.zeros(0, dtype=np.int32)

    def push(self, t_ns: np.ndarray, values: np.ndarray, label: np.ndarray | None = None) -> WindowBatch:
        """Feed consecutive samples ([n] times, [n, C] values, optional [n] labels); get finished windows."""
        t_ns = np.asarray(t_ns)
        values = np.asarray(values)
        if t_ns.ndim != 1 or not np.issubdtype(t_ns.dtype, np.integer):
            raise ValueError(f"t_ns must be a 1-D integer array, got {t_ns.dtype} with shape {t_ns.shape}")
        n = t_ns.shape[0]
        if values.shape != (n, self.channels):
            raise ValueError(f"values must have shape ({n}, {self.channels}), got {values.shape}")
        if label is None:
            label = np.full(n, -1, dtype=np.int32)
        else:
            label = np.asarray(label)
            if label.shape != (n,) or not np.issubdtype(label.dtype, np.integer):
                raise ValueError(f"label must be a 1-D integer array of shape ({n},), got {label.shape}")
        if n == 0:
            return WindowBatch.empty(self.channels, self.length)
        t_ns = t_ns.astype(np.int64, copy=False)

        # A new run starts at every sample whose step from its predecessor leaves (0, 2 periods].
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = t_ns[:-1]
        prev[0] = t_ns[0] if self._last_t is None else self._last_t
        step = t_ns - prev
        starts_run = (step <= 0) | (step > MAX_STEP_PERIODS * self.period_ns)
        if self._last_t is None:
            starts_run[0] = True  # the very first sample opens a run; that is no gap
        self.gaps += int(np.count_nonzero(starts_run)) - (1 if self._last_t is None else 0)

        # Work on buffer + chunk; the buffer continues the current run.
        nbuf = self._buf_t.shape[0]
        all_t = np.concatenate([self._buf_t, t_ns])
        all_x = np.concatenate([self._buf_x, values.astype(np.float32, copy=False)])
        all_label = np.concatenate([self._buf_label, label.astype(np.int32, copy=False)])
        starts_all = np.concatenate([np.zeros(nbuf, dtype=bool), starts_run])

        idx = np.arange(all_t.shape[0])
        run_start = np.maximum.accumulate(np.where(starts_all, idx, 0))
        offset = idx - run_start
        # Samples before the first new run continue the current run, whose buffer begins at
        # run offset `_run_len - nbuf` (0 when no run is open).
        continuing = np.cumsum(starts_all) == 0
        offset[continuing] += self._run_len - nbuf

        last = self.length - 1
        # Only new samples can end a window; buffered ones already had their turn.
        new_offset = offset[nbuf:]
        ends = nbuf + np.flatnonzero((new_offset >= last) & ((new_offset - last) % self.hop == 0))
        gather = ends[:, None] - last + np.arange(self.length)
        batch = WindowBatch(
            x=np.ascontiguousarray(all_x[gather].transpose(0, 2, 1)),
            t_end_ns=all_t[ends],
            label=all_label[ends],
        )

        # Keep only the last run's samples from its next unemitted window start onwards.
        self._last_t = int(all_t[-1])
        self._run_len = int(offset[-1]) + 1
        emitted = (self._run_len - self.length) // self.hop + 1 if self._run_len >= self.length else 0
        keep = max(self._run_len - emitted * self.hop, 0)
        self._buf_t = all_t[all_t.shape[0] - keep :].copy()
        self._buf_x = all_x[all_x.shape[0] - keep :].copy()
        self._buf_label = all_label[all_label.shape[0] - keep :].copy()
        return batch


def windows_from_log(log: RecordedLog, length: int, hop: int) -> tuple[WindowBatch, np.ndarray]:
    """All windows of all devices in live-stream order (t_end_ns, device_id), plus their device ids.

    Each device's samples go through its own `Windower`, so training sees exactly the windows
    the live agent would cut.
    """
    channels = len(log.channels)
    if not len(log.t_ns):
        return WindowBatch.empty(channels, length), np.zeros(0, dtype=object)
    label = log.label if log.label is not None else np.full(len(log.t_ns), -1, dtype=np.int32)
    uniques, codes = np.unique(log.device_id, return_inverse=True)
    order = np.lexsort((log.t_ns, codes))  # read_log already sorts; hand-built logs may not be
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    batches: list[WindowBatch] = []
    batch_codes: list[np.ndarray] = []
    for code in range(len(uniques)):
        rows = order[bounds[code] : bounds[code + 1]]
        batch = Windower(length, hop, log.period_ns, channels).push(
            log.t_ns[rows], log.values[rows], label[rows]
        )
        batches.append(batch)
        batch_codes.append(np.full(len(batch), code, dtype=np.intp))
    merged = WindowBatch.concat(batches)
    window_codes = np.concatenate(batch_codes)
    # Device codes follow sorted id order, so this sorts by (t_end_ns, device_id).
    order = np.lexsort((window_codes, merged.t_end_ns))
    ordered = WindowBatch(x=merged.x[order], t_end_ns=merged.t_end_ns[order], label=merged.label[order])
    return ordered, uniques[window_codes[order]].astype(object)
