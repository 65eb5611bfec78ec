"""Record frames from MQTT back into the recorded-log format, e.g. to capture a replay or a fleet.

The device id comes from the topic `<prefix>/<device>/dt/<stream>`; QoS 1 redeliveries are
dropped by (device, stream, seq, first sample's time): a device that restarts its sequence
numbers (a reboot, a second run of the simulator) sends new frames, kept. Frames carry no channel
names, so they are given; the sample rate is that of the most common frame period. Values are
kept as the float32 the frames carried, so replay followed by record reproduces a log's samples
bit for bit. A frame that does not fit the log (another number of channels, a period more than
`RATE_TOLERANCE` off the log's: another rate, not a clock's jitter) is left out and counted per
device (`misfits`): one odd device must not cost the recording of the others.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_ttt.recordlog import RecordedLog
from edge_ttt.stream.codec import Frame, FrameError, decode

__all__ = ["Recorder"]

RATE_TOLERANCE = 0.25  # a frame period this far off the log's is another sample rate


class Recorder:
    """Subscribes to `<prefix>/+/dt/<stream>` and keeps each distinct frame until `log()` is asked for."""

    def __init__(self, host: str, port: int, prefix: str = "edge-ttt", stream: int = 0, qos: int = 1) -> None:
        self.prefix = prefix
        self.topic = f"{prefix}/+/dt/{stream}"
        self.qos = qos
        self.frames: dict[tuple[str, int, int, int], Frame] = {}  # (device, stream, seq, t0_ns)
        self.duplicates = 0
        self.rejected = 0
        self.misfits: Counter[tuple[str, str]] = (
            Counter()
        )  # (device, why) -> frames left out, at the last log()
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"firmware-sim-record-{id(self)}")
        self.client.on_connect = lambda client, *_: client.subscribe(self.topic, qos=qos)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_disconnect = lambda *_: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 2.0)
        self.host, self.port = host, port

    def start(self) -> None:
        self.client.connect_async(self.host, self.port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        device = msg.topic[len(self.prefix) + 1 :].split("/")[0]
        try:
            frame = decode(msg.payload)
        except FrameError:
            with self._lock:
                self.rejected += 1
            return
        key = (device, frame.stream_id, frame.seq, frame.t0_ns)
        with self._lock:
            if key in self.frames:
                self.duplicates += 1
            else:
                self.frames[key] = frame

    def count(self) -> int:
        with self._lock:
            return len(self.frames)

    def seqs(self) -> dict[str, list[int]]:
        """Received sequence numbers per device, sorted."""
        with self._lock:
            keys = sorted(self.frames)
        out: dict[str, list[int]] = {}
        for device, _, seq, _ in keys:
            out.setdefault(device, []).append(seq)
        return out

    def log(self, channels: tuple[str, ...]) -> RecordedLog:
        """The samples received so far, one row per sample; a repeated (device, time) keeps the first."""
        with self._lock:
            items = sorted(self.frames.items(), key=lambda item: item[0])
        if not items:
            raise ValueError(f"no frames were received on {self.topic}")
        fitting = [item for item in items if item[1].n_channels == len(channels)]
        if not fitting:
            widths = sorted({frame.n_channels for _, frame in items})
            raise ValueError(
                f"no frame has {len(channels)} channels (frames have {widths}); give --channels their names"
            )
        period = Counter(f.period_ns for _, f in fitting).most_common(1)[0][0]
        self.misfits = Counter()
        kept = []
        for item in items:
            (device, *_), frame = item
            if frame.n_channels != len(channels):
                self.misfits[device, f"{frame.n_channels} channels, not {len(channels)}"] += 1
            elif abs(frame.period_ns - period) > RATE_TOLERANCE * period:
                self.misfits[device, f"{1e9 / frame.period_ns:g} Hz, not the log's {1e9 / period:g} Hz"] += 1
            else:
                kept.append(item)
        items = kept
        ids = np.concatenate([np.full(f.n_samples, device, dtype=object) for (device, *_), f in items])
        t_ns = np.concatenate([f.times() for _, f in items])
        values = np.concatenate([f.values for _, f in items])
        order = np.lexsort((t_ns, ids.astype(str)))
        ids, t_ns, values = ids[order], t_ns[order], values[order]
        first = np.r_[True, (ids[1:] != ids[:-1]) | (t_ns[1:] != t_ns[:-1])]
        return RecordedLog(
            device_id=ids[first],
            t_ns=t_ns[first],
            values=values[first],
            label=None,
            channels=channels,
            sample_rate_hz=1e9 / period,
            class_names=None,
        )
