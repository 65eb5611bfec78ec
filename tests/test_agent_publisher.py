"""The prediction publisher's message shapes: one object per window with `batch` 1, however many
windows one frame completes; `{"predictions": [...]}` of exactly `batch` windows otherwise."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edge_ttt.adapt.predictions import Predictions
from edge_ttt.agent.publisher import PredictionPublisher, PredictionsSection

CLASSES = ["a", "b", "c"]


def predictions(n: int) -> Predictions:
    probs = np.tile(np.array([[0.7, 0.2, 0.1]], np.float32), (n, 1))
    return Predictions(
        classes=np.zeros(n, np.int64),
        probs=probs,
        entropy=np.full(n, 0.8, np.float32),
        valid=np.ones(n, bool),
        estimated_correct=np.ones(n, np.float32),
        source_estimated_correct=np.full(n, np.nan, np.float32),
        on_source=np.zeros(n, bool),
        source_classes=np.full(n, -1, np.int64),
    )


def publisher(batch: int) -> tuple[PredictionPublisher, list[dict]]:
    sent: list[dict] = []
    pub = PredictionPublisher(
        PredictionsSection(batch=batch),
        lambda device: f"edge-ttt/{device}/pred",
        lambda topic, payload, qos: sent.append(json.loads(payload)),
        CLASSES,
        "f" * 64,
    )
    return pub, sent


def test_a_frame_that_completes_several_windows_gives_one_message_per_window_with_batch_1():
    """Before, the five windows of one large frame went out as one `{"predictions": [...]}`."""
    pub, sent = publisher(1)
    latencies = pub.publish("d", "0", "steady", np.arange(5) * 10, predictions(5), time.monotonic())
    assert len(sent) == 5 and all("predictions" not in m and m["class"] == "a" for m in sent)
    assert [m["t_end_ns"] for m in sent] == [0, 10, 20, 30, 40]
    assert len(latencies) == 5 and pub.published == pub.windows == 5 and len(pub.latency_ms) == 5


def test_batches_hold_exactly_batch_windows_and_keep_the_rest_for_the_next():
    pub, sent = publisher(2)
    assert len(pub.publish("d", "0", "steady", np.arange(5), predictions(5), time.monotonic())) == 4
    assert [len(m["predictions"]) for m in sent] == [2, 2] and pub.published == 4
    pub.publish("d", "0", "steady", np.array([5]), predictions(1), time.monotonic())
    assert [len(m["predictions"]) for m in sent] == [2, 2, 2]
    assert [p["t_end_ns"] for m in sent for p in m["predictions"]] == [0, 1, 2, 3, 4, 5]


def test_a_window_with_non_finite_outputs_is_published_as_json_with_nulls():
    """A float32 sample of 3e38 (finite, so a valid frame) made the model's probabilities NaN, and
    the agent published `"confidence": NaN, "entropy": NaN`, which is not JSON: JavaScript's
    `JSON.parse` and Go's `encoding/json` refuse the whole message."""
    sent: list[bytes] = []
    pub = PredictionPublisher(
        PredictionsSection(batch=1),
        lambda device: f"edge-ttt/{device}/pred",
        lambda topic, payload, qos: sent.append(payload),
        CLASSES,
        "f" * 64,
    )
    pred = predictions(2)
    pred.probs[0] = np.nan
    pred.entropy[0] = np.nan
    pred.entropy[1] = np.inf
    pub.publish("d", "0", "steady", np.arange(2), pred, time.monotonic())
    strict = [json.loads(m, parse_constant=lambda name: pytest.fail(f"{name} is not JSON")) for m in sent]
    assert [(m["confidence"], m["entropy"]) for m in strict] == [(None, None), (0.7, None)]
