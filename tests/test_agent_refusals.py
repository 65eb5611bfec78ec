"""What the agent refuses without a broker: malformed and misfit frames (counted), a bad config or bundle."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_ttt.agent import Agent, Message
from edge_ttt.agent.config import load_config
from edge_ttt.stream.codec import Frame, encode
from tests.agent_harness import PERIOD_NS, T0, frames, write_config
from tests.conftest import CHANNELS


@pytest.fixture
def offline_agent(tmp_path, bundle_dir) -> Agent:
    """An agent whose worker is driven by hand (no broker needed for `handle`)."""
    return Agent(load_config(write_config(tmp_path, bundle_dir, 1)))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300))
def test_malformed_payloads_never_stop_the_worker_and_are_counted(offline_agent: Agent, payload: bytes):
    before = offline_agent.counters.frames + sum(offline_agent.counters.rejected.values())
    offline_agent.handle(Message("edge-ttt/fuzz/dt/0", payload, time.monotonic()))
    after = offline_agent.counters.frames + sum(offline_agent.counters.rejected.values())
    assert after == before + 1  # every payload is either a frame or a counted rejection


def test_frames_that_do_not_fit_the_model_are_rejected_by_reason(offline_agent: Agent):
    good = frames(1)[0]
    cases = {
        "channels": Frame(0, 1, T0, PERIOD_NS, np.zeros((10, 3), np.float32)),
        "rate": Frame(0, 2, T0, PERIOD_NS // 2, np.zeros((10, len(CHANNELS)), np.float32)),
        "stream": Frame(7, 3, T0, PERIOD_NS, np.zeros((10, len(CHANNELS)), np.float32)),
    }
    for frame in cases.values():
        offline_agent.handle(Message("edge-ttt/dev/dt/0", encode(frame), time.monotonic()))
    offline_agent.handle(Message("not/a/sensor/topic/at/all", encode(good), time.monotonic()))
    assert dict(offline_agent.counters.rejected) == dict.fromkeys(cases, 1)
    assert offline_agent.counters.unknown_topic == 1 and offline_agent.counters.frames == 0


def test_a_stream_that_fails_on_a_frame_loses_that_frame_and_no_other_device_stops(
    offline_agent: Agent, monkeypatch, caplog
):
    """A fault of the agent's own on one stream (any exception in its pipeline) is counted and
    logged with its traceback; the worker goes on, and so do the other devices' streams."""
    from edge_ttt.agent.pipeline import Pipeline

    feed = Pipeline.feed

    def failing(self, frame, arrived):
        if self.device == "dev-bad":
            raise RuntimeError("boom")
        return feed(self, frame, arrived)

    monkeypatch.setattr(Pipeline, "feed", failing)
    for frame in frames(12):
        offline_agent.handle(Message("edge-ttt/dev-bad/dt/0", encode(frame), time.monotonic()))
        offline_agent.handle(Message("edge-ttt/dev-ok/dt/0", encode(frame), time.monotonic()))
    assert offline_agent.counters.stream_errors == 12 and offline_agent.counters.frames == 24
    assert offline_agent.status()["counters"]["stream_errors"] == 12
    assert offline_agent.status()["counters"]["windows"] == 8  # dev-ok's 300 samples
    logged = [r for r in caplog.records if r.getMessage() == "frame lost: its stream failed"]
    assert len(logged) == 1 and logged[0].exc_info[1].args == ("boom",)  # once per 10 s


def test_run_refuses_a_bad_config_or_bundle_before_starting_anything(tmp_path, bundle_dir):
    import shutil
    import subprocess
    import sys

    def run(config: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "edge_ttt.cli", "run", "--config", str(config)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])

    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nid = "x"\n[mqtt]\nprot = 1\n[model]\nartifacts = "a"\n')
    result = run(bad)
    assert result.returncode == 2 and "mqtt.prot" in result.stderr
    art = tmp_path / "art"
    shutil.copytree(bundle_dir, art)
    (art / "checkpoint").write_bytes(b"tampered")
    result = run(write_config(tmp_path, art, 1))
    assert result.returncode == 2 and "checkpoint" in result.stderr and "SHA-256" in result.stderr
    assert not (tmp_path / "state").exists()  # nothing half-started
    result = run(write_config(tmp_path, tmp_path / "no-such-bundle", 1))
    assert result.returncode == 2 and "no-such-bundle does not exist" in result.stderr
    wrong = write_config(tmp_path, bundle_dir, 1)
    wrong.write_text(wrong.read_text().replace("[model]\n", '[model]\npolicy = "ttt"\n'))
    result = run(wrong)  # a policy the bundle cannot run: refused at start, not at every device's first frame
    assert result.returncode == 2 and "model.policy: 'ttt' cannot run on" in result.stderr
    assert "auxiliary loss" in result.stderr and not (tmp_path / "state").exists()
