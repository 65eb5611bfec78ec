"""Drift scenarios: composable faults applied to a device's stream as it is generated, chunk by chunk.

A scenario is a list of steps applied in order; each step is a fault kind with named parameters
and an optional `start_s` (seconds after the device's first sample) from which it acts. Steps keep
their state between chunks (a ramp's clock, a burst in progress, the last value a dropout holds)
and draw random numbers in sample order, so the result never depends on how the stream is cut.
A scenario is a built-in name (`BUILTINS`) or a TOML file (docs/simulator.md). Rotation and the
dropout burst model reuse `firmware_sim.corruptions`, so the simulator and the offline corruption
benchmark mean the same thing by them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_ttt.config_file import TOMLDecodeError, parse_toml
from firmware_sim.corruptions import DROPOUT_MEAN_BURST, rotation_matrix, triads

__all__ = ["BUILTINS", "KINDS", "Bursts", "DeviceDrift", "Scenario", "ScenarioError", "Step", "load_scenario"]


class ScenarioError(ValueError):
    """A scenario that cannot be built; the message names the file, step and key."""


# Parameters of each step kind with their defaults (also the built-in scenario of the same name).
# `channels = None` means every channel. Units are the signal's own (m/s^2, rad/s for the IMU).
KINDS: dict[str, dict[str, Any]] = {
    "gain": {"factor": 1.5, "channels": None},
    "bias-ramp": {"offset": 1.0, "ramp_s": 60.0, "channels": None},
    "noise": {"std": 0.5, "channels": None},
    "rotation": {"degrees": 30.0, "axis": [1.0, 0.0, 0.0]},
    "clipping": {"limit": 12.0, "channels": None},
    "dropout": {"rate": 0.2},
    "jitter": {"max": 0.005},  # within the agent's rate tolerance (1 %): a clock's jitter, not another rate
    "dead-channel": {"channel": "wy", "value": 0.0},
    "nan-bursts": {"rate": 0.01, "burst": 3.0, "channels": None},
}
STEP_KEYS = ("kind", "start_s")


@dataclass(frozen=True)
class Step:
    kind: str
    params: dict[str, Any]
    start_s: float = 0.0


@dataclass(frozen=True)
class Scenario:
    """Device number i of a fleet gets `variants[i % len(variants)]` (one variant but for `mixed`)."""

    name: str
    variants: tuple[tuple[Step, ...], ...]
    description: str = ""

    def for_device(self, index: int, device: str, channels: tuple[str, ...], seed: int = 0) -> DeviceDrift:
        steps = self.variants[index % len(self.variants)]
        return DeviceDrift(steps, channels, [seed, zlib.crc32(device.encode())])


def _step(kind: str, start_s: float = 0.0, **params: Any) -> Step:
    return Step(kind, {**KINDS[kind], **params}, start_s)


_SINGLE = {kind: (_step(kind),) for kind in KINDS}
BUILTINS: dict[str, Scenario] = {
    "clean": Scenario("clean", ((),), "no fault"),
    **{kind: Scenario(kind, (steps,), f"{kind} with its defaults") for kind, steps in _SINGLE.items()},
    "abrupt": Scenario(
        "abrupt",
        ((_step("rotation", 20.0, degrees=45.0), _step("gain", 20.0, factor=1.3)),),
        "at 20 s the sensor is knocked in its mount: rotated 45 degrees and 1.3x gain from then on",
    ),
    "mixed": Scenario(
        "mixed",
        ((), *_SINGLE.values()),
        "a fleet: device i gets clean, gain, bias-ramp, ... (KINDS order), cycling",
    ),
}


# ---------------------------------------------------------------------------------------------
# Parsing


def _check_value(where: str, key: str, value: Any, default: Any) -> Any:
    def bad(expected: str) -> ScenarioError:
        return ScenarioError(f"{where}: key '{key}' must be {expected}, got {value!r}")

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if key == "channels":
        if value is not None and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
            raise bad("a list of channel names")
        return None if value is None else tuple(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if isinstance(default, list):
        if not (isinstance(value, list) and len(value) == 3 and all(map(number, value))):
            raise bad("a list of 3 numbers")
        if not any(value):
            raise bad("a non-zero vector")
        return [float(v) for v in value]
    if not number(value):
        raise bad("a finite number")
    return float(value)


_RANGES: dict[tuple[str, str], tuple[Callable[[float], bool], str]] = {
    ("bias-ramp", "ramp_s"): (lambda x: x >= 0, ">= 0"),
    ("noise", "std"): (lambda x: x >= 0, ">= 0"),
    ("clipping", "limit"): (lambda x: x > 0, "> 0"),
    ("dropout", "rate"): (lambda x: 0 < x <= 1 / (1 + 1 / DROPOUT_MEAN_BURST), "in (0, 0.83]"),
    ("jitter", "max"): (lambda x: 0 <= x < 0.5, "in [0, 0.5)"),
    ("nan-bursts", "rate"): (lambda x: 0 < x < 1, "in (0, 1)"),
    ("nan-bursts", "burst"): (lambda x: x >= 1, ">= 1"),
}


def parse_step(where: str, table: Any) -> Step:
    """One `[[step]]` table; unknown keys and bad values raise ScenarioError naming the key."""
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: a step must be a table with a 'kind' key")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ScenarioError(f"{where}: key 'kind' is {kind!r}; choose one of {', '.join(KINDS)}")
    defaults = KINDS[kind]
    unknown = sorted(set(table) - set(defaults) - set(STEP_KEYS))
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key '{unknown[0]}' for kind {kind!r}; its keys are "
            f"{', '.join([*STEP_KEYS, *defaults])}"
        )
    params = dict(defaults)
    for key in set(table) & set(defaults):
        params[key] = _check_value(where, key, table[key], defaults[key])
        rule = _RANGES.get((kind, key))
        if rule and not rule[0](params[key]):
            raise ScenarioError(f"{where}: key '{key}' is {params[key]!r}, must be {rule[1]}")
    start_s = _check_value(where, "start_s", table.get("start_s", 0.0), 0.0)
    if start_s < 0:
        raise ScenarioError(f"{where}: key 'start_s' is {start_s!r}, must be >= 0")
    return Step(kind, params, start_s)


def load_scenario(spec: str) -> Scenario:
    """A built-in name, or the path of a TOML file: optional `description`, then `[[step]]` tables."""
    if spec in BUILTINS:
        return BUILTINS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ScenarioError(f"unknown scenario {spec!r}: not a built-in ({', '.join(BUILTINS)}) nor a file")
    try:
        doc = parse_toml(path.read_text())
    except (TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - {"description", "step"})
    if unknown:
        raise ScenarioError(f"{path}: unknown key '{unknown[0]}'; a scenario file has description, [[step]]")
    steps = doc.get("step", [])
    if not isinstance(steps, list):
        raise ScenarioError(f"{path}: key 'step' must be an array of tables ([[step]])")
    parsed = tuple(parse_step(f"{path}: step {i + 1}", table) for i, table in enumerate(steps))
    return Scenario(path.stem, (parsed,), str(doc.get("description", "")))


# ---------------------------------------------------------------------------------------------
# Effects: one per step of one device, stateful across chunks


class Bursts:
    """Streaming burst mask: alternating hit and miss runs of geometric length, drawn in sample order.

    Hit runs have mean `burst` and miss runs `burst * (1 - rate) / rate`, so the expected hit share
    is `rate`; the stream starts with a miss run, as `corruptions.dropout_mask` does.
    """

    def __init__(self, rate: float, burst: float, rng: np.random.Generator) -> None:
        self.burst = burst
        self.gap = burst * (1.0 - rate) / rate
        if self.gap < 1.0:
            raise ScenarioError(f"rate {rate} leaves gaps between bursts shorter than one sample")
        self.rng = rng
        self.hit = False
        self.left = int(rng.geometric(1.0 / self.gap))

    def mask(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        pos = 0
        while pos < n:
            take = min(self.left, n - pos)
            out[pos : pos + take] = self.hit
            pos += take
            self.left -= take
            if self.left == 0:
                self.hit = not self.hit
                self.left = int(self.rng.geometric(1.0 / (self.burst if self.hit else self.gap)))
        return out


class DeviceDrift:
    """A scenario's steps bound to one device: `apply` each chunk of samples, `period_ns` each frame."""

    def __init__(self, steps: tuple[Step, ...], channels: tuple[str, ...], key: list[int]) -> None:
        self.channels = channels
        self.steps = steps
        self._state: list[dict[str, Any]] = []
        for i, step in enumerate(steps):
            rng = np.random.default_rng([*key, i])
            state: dict[str, Any] = {"rng": rng, "cols": self._columns(step)}
            if step.kind == "rotation":
                if not triads(channels):
                    raise ScenarioError(f"rotation needs x/y/z channel triads; channels are {channels}")
                state["matrix"] = rotation_matrix(np.array(step.params["axis"]), step.params["degrees"])
            elif step.kind == "dropout":
                state["bursts"] = Bursts(step.params["rate"], DROPOUT_MEAN_BURST, rng)
                state["last"] = None
            elif step.kind == "nan-bursts":
                state["bursts"] = Bursts(step.params["rate"], step.params["burst"], rng)
            self._state.append(state)

    def _columns(self, step: Step) -> np.ndarray:
        names = step.params.get("channels") or (
            (step.params["channel"],) if "channel" in step.params else self.channels
        )
        missing = [c for c in names if c not in self.channels]
        if missing:
            raise ScenarioError(f"step {step.kind!r} names channel(s) {missing}; there are {self.channels}")
        return np.array([self.channels.index(c) for c in names], dtype=np.intp)

    def apply(self, values: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """Faulty copy of a chunk [n, C]; `t_s` is each sample's time in seconds since the stream began."""
        out = np.array(values, dtype=np.float64)
        for step, state in zip(self.steps, self._state, strict=True):
            active = t_s >= step.start_s
            cols, p = state["cols"], step.params
            sub = np.ix_(active, cols)
            if step.kind == "gain":
                out[sub] *= p["factor"]
            elif step.kind == "bias-ramp":
                since = t_s - step.start_s
                level = np.clip(since / p["ramp_s"], 0, 1) if p["ramp_s"] > 0 else np.ones_like(since)
                out[sub] += (p["offset"] * level[active])[:, None]
            elif step.kind == "noise":
                draws = state["rng"].standard_normal((len(out), len(cols)))  # drawn for every sample
                out[sub] += p["std"] * draws[active]
            elif step.kind == "rotation":
                for group in triads(self.channels):
                    out[np.ix_(active, group)] = out[np.ix_(active, group)] @ state["matrix"].T
            elif step.kind == "clipping":
                out[sub] = np.clip(out[sub], -p["limit"], p["limit"])
            elif step.kind == "dropout":
                out = self._hold(out, state, state["bursts"].mask(len(out)) & active)
            elif step.kind == "dead-channel":
                out[sub] = p["value"]
            elif step.kind == "nan-bursts":
                hit = state["bursts"].mask(len(out)) & active
                out[np.ix_(hit, cols)] = np.nan
        return out

    @staticmethod
    def _hold(out: np.ndarray, state: dict[str, Any], missed: np.ndarray) -> np.ndarray:
        """A missed read repeats the last value read, also across chunk boundaries."""
        if state["last"] is None:
            missed[:1] = False  # nothing read yet to hold
        rows = np.vstack([out[:0] if state["last"] is None else state["last"][None], out])
        shift = 0 if state["last"] is None else 1
        index = np.where(missed, 0, np.arange(len(out)) + shift)
        held = rows[np.maximum.accumulate(index)]
        state["last"] = held[-1].copy()
        return held

    def period_ns(self, nominal_ns: int, t_s: float) -> int:
        """A frame's sample period: nominal, or jittered (one draw per frame) by active jitter steps."""
        period = float(nominal_ns)
        for step, state in zip(self.steps, self._state, strict=True):
            if step.kind == "jitter":
                u = state["rng"].uniform(-step.params["max"], step.params["max"])
                if t_s >= step.start_s:
                    period *= 1.0 + u
        return max(1, round(period))
