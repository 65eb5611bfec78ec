"""Predictions out: one JSON message per window, or per `batch` windows of a device, and the
latency from a frame's arrival to the publish of each prediction it completed."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from pydantic import Field

from edge_ttt.adapt.engine import Predictions
from edge_ttt.config_file import Section
from edge_ttt.stream.topics import DeviceTopic

LATENCY_SAMPLES = 4096  # recent latencies kept for the status percentiles

Publish = Callable[[str, bytes, int], None]  # (topic, payload, qos)


def _number(x: object) -> float | None:
    """`x` rounded to 5 decimals, or None (JSON null) when it is not finite: `NaN` and `Infinity`
    are not JSON, and strict parsers (JavaScript's `JSON.parse`, Go's `encoding/json`) refuse the
    whole message. A window whose input the model cannot take (an extreme but finite sample) gives
    NaN probabilities.

    >>> _number(0.123456789), _number(float("nan")), _number(float("-inf"))
    (0.12346, None, None)
    """
    value = float(x)  # type: ignore[arg-type]
    return round(value, 5) if math.isfinite(value) else None


class PredictionsSection(Section):
    topic: DeviceTopic = Field("{prefix}/{device}/pred", validate_default=True)
    qos: int = Field(1, ge=0, le=1)
    batch: int = Field(1, ge=1, description="predictions per message")


class PredictionPublisher:
    """Holds each device's predictions until its batch is full, then publishes them in one message."""

    def __init__(
        self,
        cfg: PredictionsSection,
        topic: Callable[[str], str],
        publish: Publish,
        classes: list[str],
        model_sha256: str,
    ) -> None:
        self.cfg = cfg
        self.topic = topic
        self._publish = publish
        self.classes = classes
        self.model_sha256 = model_sha256
        self.windows = 0  # predictions made
        self.published = 0  # predictions published
        self.latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._pending: dict[str, list[dict]] = {}

    def publish(
        self, device: str, stream: str, policy: str, t_end_ns: np.ndarray, pred: Predictions, arrived: float
    ) -> list[float]:
        """Publish (or hold for a batch); the latency in ms of each window published, if any. With
        `batch` 1 every window is a message of its own, however many one frame completed."""
        pending = self._pending.setdefault(device, [])
        for i in range(len(pred)):
            pending.append(
                {
                    "stream": stream,
                    "t_end_ns": int(t_end_ns[i]),
                    "class": self.classes[int(pred.classes[i])],
                    "class_index": int(pred.classes[i]),
                    "confidence": _number(pred.probs[i].max()),
                    "entropy": _number(pred.entropy[i]),
                    "valid": bool(pred.valid[i]),
                }
            )
        self.windows += len(pred)
        batch, latencies = self.cfg.batch, []
        body = {"device": device, "policy": policy, "model": self.model_sha256}
        while len(pending) >= batch:  # a frame can complete several windows: one message per batch
            part, pending = pending[:batch], pending[batch:]
            payload = body | (part[0] if batch == 1 else {"predictions": part})
            self._publish(self.topic(device), json.dumps(payload, allow_nan=False).encode(), self.cfg.qos)
            self.published += len(part)
            latency = 1000 * (time.monotonic() - arrived)
            self.latency_ms.extend([latency] * len(part))  # per window, as the percentiles say
            latencies += [latency] * len(part)
        self._pending[device] = pending
        return latencies

    def percentiles(self) -> dict[str, float | None]:
        """p50 and p99 of the recent latencies in ms (None before the first publish)."""
        lat = np.asarray(self.latency_ms)
        return {
            "p50": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
        }
