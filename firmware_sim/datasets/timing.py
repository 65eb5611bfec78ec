"""How regular a recording's sample times are: the sample rate when none is given, and what the
windower will make of the timing (it assumes evenly spaced samples and cuts runs at gaps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IRREGULAR = 0.1  # jitter, or a median period off the nominal one, above this share of the period


@dataclass(frozen=True)
class Timing:
    """Sample steps within each device, measured against the nominal period `1e9 / rate_hz`."""

    rate_hz: float
    rate_inferred: bool
    median_period_ns: float  # of all steps within a device
    jitter_ns: float  # standard deviation of the steps the windower keeps (at most 2 periods)
    gaps: int  # steps over 2 nominal periods: each ends a run, no window spans one

    @property
    def irregular(self) -> bool:
        period = 1e9 / self.rate_hz
        off = abs(self.median_period_ns - period) / period
        return self.jitter_ns / period > IRREGULAR or off > IRREGULAR

    def line(self) -> str:
        """One line for people; `irregular:` leads it when windows would not be what they seem."""
        period_ms = 1e3 / self.rate_hz
        source = "inferred from the median period" if self.rate_inferred else "given"
        text = (
            f"sample rate {self.rate_hz:g} Hz ({source}); timing: median period "
            f"{self.median_period_ns / 1e6:.3f} ms, jitter {self.jitter_ns / 1e6:.3f} ms, "
            f"{self.gaps} gap(s) over 2 periods ({2 * period_ms:g} ms) that end a run"
        )
        if self.irregular:
            return (
                f"irregular timing: {text}; windows treat samples as evenly spaced, so resample "
                "the recording to a fixed rate first if windows must span equal times"
            )
        return text


def steps_within_devices(t_ns: np.ndarray, device_codes: np.ndarray) -> np.ndarray:
    """Time steps between consecutive samples of each device; rows sorted by (device, time)."""
    same = device_codes[1:] == device_codes[:-1]
    return np.diff(t_ns)[same]


def measure(steps_ns: np.ndarray, rate_hz: float | None) -> Timing | None:
    """The timing of `steps_ns` (all positive); the rate is inferred from their median when
    `rate_hz` is None. None when there is no step to infer a rate from."""
    if not steps_ns.size:
        if rate_hz is None:
            return None
        return Timing(rate_hz, False, float("nan"), 0.0, 0)
    median = float(np.median(steps_ns))
    rate = 1e9 / median if rate_hz is None else rate_hz
    kept = steps_ns[steps_ns <= 2 * (1e9 / rate)]
    jitter = float(np.std(kept)) if kept.size else 0.0
    return Timing(rate, rate_hz is None, median, jitter, int(steps_ns.size - kept.size))
