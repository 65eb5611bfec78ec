"""The demo's fleet: which target recordings become devices, with which drift scenario each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_ttt.recordlog import RecordedLog
from firmware_sim.scenarios import BUILTINS, KINDS, Scenario, Step
from firmware_sim.scoreboard import Scoreboard, window_labels

# Scenario per simulated device, in order; units are the recordings' own (g, rad/s).
_ACCEL = ["ax", "ay", "az"]
FLEET_SCENARIOS: tuple[tuple[str, tuple[Step, ...]], ...] = (
    ("clean", ()),
    ("rotated 40 deg", (Step("rotation", {**KINDS["rotation"], "degrees": 40.0, "axis": [0, 0, 1]}),)),
    ("accel bias 1 g", (Step("bias-ramp", {**KINDS["bias-ramp"], "offset": 1.0, "channels": _ACCEL}),)),
    ("gain x1.8", (Step("gain", {**KINDS["gain"], "factor": 1.8}),)),
    ("knocked at 20 s", BUILTINS["abrupt"].variants[0]),  # rotated 45 deg and gain x1.3 from then on
    ("noise 0.6", (Step("noise", {**KINDS["noise"], "std": 0.6}),)),
)


def fleet_log(target: RecordedLog, devices: int, minutes: float | None) -> RecordedLog:
    """The first `devices` target recordings, each cut to its first `minutes`."""
    names = target.devices()[:devices]
    keep = np.zeros(len(target.t_ns), bool)
    for name in names:
        rows = target.device_id == name
        if minutes is not None:
            rows &= target.t_ns < target.t_ns[rows].min() + int(minutes * 60e9)
        keep |= rows
    return target.select(keep)


def fleet_scenario(count: int) -> tuple[Scenario, list[str]]:
    """Device i of the fleet gets FLEET_SCENARIOS[i] (cycling); device 0 stays clean."""
    plan = [FLEET_SCENARIOS[i % len(FLEET_SCENARIOS)] for i in range(count)]
    return Scenario("demo", tuple(steps for _, steps in plan)), [name for name, _ in plan]


@dataclass(frozen=True)
class Fleet:
    """What is streamed (the target recordings, each with its scenario) and how it is scored."""

    log: RecordedLog
    scenario: Scenario
    scenario_names: list[str]
    board: Scoreboard


def plan_fleet(bundle: Path, target: RecordedLog, devices: int, minutes: float | None) -> Fleet:
    """The fleet of `devices` target recordings (cut to `minutes`), scored with the bundle's windows."""
    from edge_ttt.artifacts import load_bundle

    manifest = load_bundle(bundle).manifest
    log = fleet_log(target, devices, minutes)
    scenario, names = fleet_scenario(len(log.devices()))
    board = Scoreboard(window_labels(log, manifest.model.window, manifest.model.hop))
    return Fleet(log, scenario, names, board)
