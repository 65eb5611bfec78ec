"""Simulated sensor devices: frames from a signal source through a drift scenario onto MQTT.

Each device behaves like microcontroller firmware: its own MQTT connection that reconnects by
itself, a bounded local buffer for frames produced while the broker is unreachable (the oldest
are dropped and counted when it is full, and the rest are sent, in order, once connected again),
its own clock (optionally offset from the others) and a sequence number that goes up by one per
frame. `pump` paces any stream of frames in real time (or as fast as possible) and counts.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.progress import Progress

from edge_ttt.stream.codec import Frame, encode
from edge_ttt.stream.connection import describe, refusal
from firmware_sim.scenarios import DeviceDrift
from firmware_sim.signals import Source

__all__ = ["Link", "SimDevice", "Summary", "connect", "fleet_schedule", "pump"]

PLAIN_PROGRESS_S = 5.0  # between progress lines where no bar can be drawn


class Link:
    """One device's MQTT connection with a local buffer of at most `buffer_frames` frames."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        qos: int = 1,
        buffer_frames: int = 500,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self.host, self.port, self.qos = host, port, qos
        self.broker = f"{host}:{port}"
        self.buffer: deque[tuple[str, bytes]] = deque()
        self.buffer_frames = buffer_frames
        self.published = 0
        self.dropped = 0
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._last: paho.MQTTMessageInfo | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        self.client.max_inflight_messages_set(100)  # 20 by default: too few for a burst after reconnect
        self.client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        self.client.on_connect = self._connected
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_connect_fail = self._connect_failed
        self.reason: str | None = None  # why the last attempt failed, for a warning that says it

    def _connected(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self.reason = refusal(self.broker, reason_code)
        else:
            self.connected.set()

    def _connect_failed(self, *_) -> None:
        # paho calls this inside its `except OSError:` around the connect: the exception is there.
        self.reason = describe(sys.exc_info()[1], self.broker)[1]

    def open(self) -> None:
        self.client.connect_async(self.host, self.port)
        self.client.loop_start()  # paho's thread connects, and reconnects after a loss

    def send(self, topic: str, payload: bytes) -> None:
        """Publish now, after whatever the buffer holds; or buffer, dropping the oldest when full."""
        with self._lock:
            if self.connected.is_set():
                self._flush()
                self._publish(topic, payload)
            else:
                if len(self.buffer) >= self.buffer_frames:
                    self.buffer.popleft()
                    self.dropped += 1
                self.buffer.append((topic, payload))

    def _flush(self) -> None:
        while self.buffer:
            self._publish(*self.buffer.popleft())

    def _publish(self, topic: str, payload: bytes) -> None:
        self._last = self.client.publish(topic, payload, qos=self.qos)
        self.published += 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is buffered if connected, wait up to `timeout_s` for the last ack, disconnect."""
        with self._lock:
            if self.connected.is_set():
                self._flush()
        if self._last is not None and self.connected.is_set():
            # If the connection goes away meanwhile, what was not acked is lost, as on hardware.
            with contextlib.suppress(RuntimeError, ValueError):
                self._last.wait_for_publish(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()


def connect(links: list[Link], wait_s: float = 10.0) -> list[Link]:
    """Open every link and wait (at most `wait_s` in all) until each is connected; those that are
    not by then, which go on retrying and buffering."""
    for link in links:
        link.open()
    deadline = time.monotonic() + wait_s
    for link in links:
        link.connected.wait(max(0.0, deadline - time.monotonic()))
    return [link for link in links if not link.connected.is_set()]


class SimDevice:
    """Frames of one stream of one device: +1 seq per frame, t0 from the device's own clock."""

    def __init__(
        self,
        device_id: str,
        source: Source,
        drift: DeviceDrift,
        rate_hz: float,
        samples_per_frame: int,
        t0_ns: int,
    ) -> None:
        self.device_id = device_id
        self.source = source
        self.drift = drift
        self.period_ns = round(1e9 / rate_hz)
        self.samples_per_frame = samples_per_frame
        self.t0_ns = t0_ns
        self.seq = 0
        self._next_t_ns = t0_ns

    def next_frame(self) -> Frame:
        since_s = (self._next_t_ns - self.t0_ns) / 1e9
        period = self.drift.period_ns(self.period_ns, since_s)
        n = self.samples_per_frame
        t_s = since_s + np.arange(n) * (period / 1e9)
        values = self.drift.apply(self.source.read(n), t_s)
        frame = Frame(0, self.seq, self._next_t_ns, period, values.astype(np.float32))
        self.seq += 1
        self._next_t_ns += n * period  # the next frame starts where this one's clock left off
        return frame


@dataclass
class Summary:
    frames: int
    published: int
    dropped: int
    buffered: int
    elapsed_s: float

    def line(self) -> str:
        rate = self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"frames produced {self.frames}, published {self.published}, dropped {self.dropped}, "
            f"still buffered {self.buffered}, {self.elapsed_s:.1f} s, {rate:.0f} frames/s"
        )


def fleet_schedule(
    devices: list[SimDevice], links: list[Link], topics: list[str], duration_s: float | None
) -> Iterator[tuple[float, Link, str, bytes]]:
    """Each device's frames when its last sample is taken, devices spread evenly over a frame time."""
    frame_s = devices[0].samples_per_frame * devices[0].period_ns / 1e9
    k = 0
    while True:
        i, tick = k % len(devices), k // len(devices)
        due = (tick + 1 + i / len(devices)) * frame_s
        if duration_s is not None and due > duration_s:
            return
        yield due, links[i], topics[i], encode(devices[i].next_frame())
        k += 1


def pump(
    items: Iterable[tuple[float, Link, str, bytes]],
    links: list[Link],
    paced: bool = True,
    total: int | None = None,
    progress: bool = False,
    every_s: float = PLAIN_PROGRESS_S,
) -> Summary:
    """Send each (due_s, link, topic, payload) at start + due_s (paced) or at once; close the links.

    `progress`: a bar on a terminal; elsewhere (a pipe, a log file), where a bar draws nothing, a
    line every `every_s` seconds, so that a long paced run does not look hung."""
    frames = 0
    start = time.monotonic()
    console = Console(stderr=True)
    lines = progress and not console.is_terminal
    next_line = start + every_s
    with Progress(console=console, disable=not progress or lines, transient=True) as bar:
        task = bar.add_task("publishing", total=total)
        try:
            for due, link, topic, payload in items:
                if paced:
                    delay = start + due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                link.send(topic, payload)
                frames += 1
                if frames % 100 == 0:
                    bar.update(task, completed=frames)
                if lines and time.monotonic() >= next_line:
                    of = "" if total is None else f" of {total} ({100 * frames / max(total, 1):.0f}%)"
                    console.print(
                        f"publishing: {frames} frames{of}, {time.monotonic() - start:.0f} s", highlight=False
                    )
                    next_line = time.monotonic() + every_s
        except KeyboardInterrupt:
            pass  # Ctrl-C ends an open-ended run; the summary still counts it
        finally:
            for link in links:
                link.close()
    return Summary(
        frames=frames,
        published=sum(link.published for link in links),
        dropped=sum(link.dropped for link in links),
        buffered=sum(len(link.buffer) for link in links),
        elapsed_s=time.monotonic() - start,
    )
