"""Replay a recorded log into MQTT: frames of each device at their sample times, scaled by a speed.

A frame holds up to `samples_per_frame` consecutive samples spaced exactly one nominal period
apart; any other step (a gap, a late sample) starts a new frame, so every sample keeps its exact
time and a gap in the log shows as a gap between frame times. Sequence numbers run 0, 1, 2, ...
per device. A frame is due when its last sample was taken: (t_last - first time in the log) / speed.
"""

from __future__ import annotations

import numpy as np

from edge_ttt.recordlog import RecordedLog
from edge_ttt.stream.codec import Frame, encode
from firmware_sim.devices import Link
from firmware_sim.scenarios import Scenario

__all__ = ["device_frames", "replay_schedule"]


def device_frames(t_ns: np.ndarray, period_ns: int, samples_per_frame: int) -> list[tuple[int, int]]:
    """(start, stop) rows of each frame of one device's time-sorted samples."""
    breaks = np.flatnonzero(np.diff(t_ns) != period_ns) + 1
    bounds = []
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(t_ns)], strict=True):
        cuts = range(int(start), int(stop), samples_per_frame)
        bounds += [(a, min(a + samples_per_frame, int(stop))) for a in cuts]
    return bounds


def replay_schedule(
    log: RecordedLog,
    links: dict[str, Link],
    topic: str,
    speed: float | None,
    samples_per_frame: int,
    scenario: Scenario,
    seed: int = 0,
) -> list[tuple[float, Link, str, bytes]]:
    """(due_s, link, topic, payload) for every frame of the log in due order; speed None: all due at 0.

    `topic` is a format string with `{device}`; drift is applied per device in time order.
    """
    if not len(log):
        return []
    origin = int(log.t_ns.min())
    period = log.period_ns
    due_frames = []
    for index, device in enumerate(log.devices()):
        rows = np.flatnonzero(log.device_id == device)
        rows = rows[np.argsort(log.t_ns[rows], kind="stable")]
        t_ns, values = log.t_ns[rows], log.values[rows]
        drift = scenario.for_device(index, device, log.channels, seed)
        for seq, (a, b) in enumerate(device_frames(t_ns, period, samples_per_frame)):
            t_s = (t_ns[a:b] - t_ns[0]) / 1e9
            frame = Frame(
                0,
                seq,
                int(t_ns[a]),
                drift.period_ns(period, float(t_s[0])),
                drift.apply(values[a:b], t_s).astype(np.float32),
            )
            due = 0.0 if speed is None else (int(t_ns[b - 1]) - origin) / 1e9 / speed
            due_frames.append((due, device, frame))
    due_frames.sort(key=lambda item: item[0])  # stable: a device's frames stay in seq order
    return [(due, links[d], topic.format(device=d), encode(frame)) for due, d, frame in due_frames]
