"""One fit check for a stream against the model: the agent's frames and replay's logs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edge_ttt.agent.pipeline import check_frame
from edge_ttt.manifest import RATE_TOLERANCE, check_fits, sample_period_ns
from edge_ttt.replay import ReplayError, check_compatible
from edge_ttt.stream.codec import Frame, FrameError

CHANNELS = ["ax", "ay", "az"]
PERIOD = sample_period_ns(50.0)


def test_channels_by_name_and_order_or_by_number():
    assert check_fits(CHANNELS, 50.0, channels=CHANNELS, period_ns=PERIOD) is None
    assert check_fits(CHANNELS, 50.0, channels=["ay", "ax", "az"], period_ns=PERIOD) == "channels"
    assert check_fits(CHANNELS, 50.0, channels=3, period_ns=PERIOD) is None
    assert check_fits(CHANNELS, 50.0, channels=2, period_ns=PERIOD) == "channels"


def test_rate_within_the_tolerance_of_the_model_period():
    edge = RATE_TOLERANCE * PERIOD
    assert check_fits(CHANNELS, 50.0, channels=3, period_ns=PERIOD + edge) is None
    assert check_fits(CHANNELS, 50.0, channels=3, period_ns=PERIOD - edge) is None
    assert check_fits(CHANNELS, 50.0, channels=3, period_ns=PERIOD + edge + 1) == "rate"
    assert check_fits(CHANNELS, 50.0, channels=3, period_ns=PERIOD // 2) == "rate"
    # a frame states whole nanoseconds: a high rate's rounded period still fits
    assert check_fits(CHANNELS, 30_000.0, channels=3, period_ns=sample_period_ns(30_000.0)) is None


def test_replay_refuses_with_its_messages_and_the_fix():
    def log(channels=CHANNELS, rate=50.0):
        return SimpleNamespace(channels=channels, sample_rate_hz=rate, label=None, class_names=None)

    check_compatible(log(), CHANNELS, 50.0, "log")
    check_compatible(log(rate=50.2), CHANNELS, 50.0, "log")  # a clock's error
    with pytest.raises(ReplayError, match=r"^log: channels \['az'\] do not match the model's") as info:
        check_compatible(log(["az"]), CHANNELS, 50.0, "log")
    assert str(info.value).endswith(
        "Fix: the log lacks ax, ay: record them, or train a model on the log's channels"
    )
    with pytest.raises(ReplayError) as info:
        check_compatible(log(["x", "y", "z"]), CHANNELS, 50.0, "log")
    assert str(info.value).endswith(  # as many channels under other names: rename them, in order
        "Fix: if they are the model's in its order (x is ax, ...), rename them: `edge-ttt datasets import "
        "log --out FIXED.parquet --time t_ns --time-unit ns --device-column "
        "device_id --channels x=ax,y=ay,z=az`"
    )
    with pytest.raises(
        ReplayError, match=r"^log: sample rate 100.0 Hz, the model expects 50.0 Hz. Fix: resample"
    ):
        check_compatible(log(rate=100.0), CHANNELS, 50.0, "log")


def test_the_agent_refuses_with_its_reasons_and_messages():
    manifest = SimpleNamespace(model=SimpleNamespace(channels=CHANNELS, sample_rate_hz=50.0))
    values = np.zeros((4, 3), np.float32)
    check_frame(manifest, Frame(0, 0, 0, PERIOD, values), "0")
    cases = [
        (Frame(0, 0, 0, PERIOD, values[:, :2]), "0", "channels", "frame has 2 channels, the model takes 3"),
        (Frame(0, 0, 0, PERIOD // 2, values), "0", "rate", f"sample period {PERIOD // 2} ns, the model's is"),
        (Frame(1, 0, 0, PERIOD, values), "0", "stream", "topic names stream 0, the frame's stream_id is 1"),
    ]
    for frame, stream, reason, message in cases:
        with pytest.raises(FrameError, match=message) as info:
            check_frame(manifest, frame, stream)
        assert info.value.reason == reason
