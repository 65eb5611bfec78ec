"""Per device, what the operator ranks and reads: estimated accuracy lost, drift and its
explanation, adaptation health; and the fleet's summary counts. Values only: the report renders them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_ttt.monitor.alerts import Alert, noisy_channels, said_noise
from edge_ttt.monitor.clocks import STAMP
from edge_ttt.monitor.config import AlertsSection
from edge_ttt.monitor.estimates import Estimates, fleet_estimates
from edge_ttt.monitor.intervals import Intervals, psi_limit, sane

COUNTS = (
    "windows",
    "resets",
    "rollbacks",
    "skipped_unreliable",
    "skipped_no_drift",
    "fallbacks",
    "windows_on_source",
)
EXPLAINING_CHANNELS = 3  # at most this many channels over their limit named next to a device in the ranking


@dataclass(frozen=True)
class DeviceHealth:
    device: str
    score: float  # max channel PSI of the judged interval (`judged`)
    last_seen: str
    intervals: int
    windows: int
    resets: int
    rollbacks: int
    no_drift_share: float  # windows without a gradient step because the input looked like source
    unreliable_share: float  # ... because the prediction was too uncertain to learn from
    entropy_trend: float  # nats per interval, least-squares slope of the mean entropy
    estimated_accuracy: float | None  # label-free, served predictions, latest intervals
    source_estimated_accuracy: float | None  # the same for the source model
    reference_accuracy: float | None  # what the device is compared with (see `health`)
    fallbacks: int
    windows_on_source: int
    worst_channels: tuple[tuple[str, str], ...]  # (channel, PSI) over the limit in the judged interval
    drifting_since: str | None  # start of the current run of drifted intervals; None: latest not drifted
    mounting: str | None = None  # latest summary's orientation or wiring found ("sensors exchanged", ...)
    on_bundle: bool = False  # `reference_accuracy` is the --bundle's (its model is the device's)
    noise: str | None = None  # latest summary's channels with white noise over the alert's share, in words
    judged: int = 1  # the interval `score` and `worst_channels` come from, counted back (1: the latest)

    @property
    def accuracy_lost(self) -> float | None:
        """The ranking score: reference minus the lower of the two estimates, so a device whose
        drift costs the source model ranks by that cost even where adaptation makes up for it
        (a reset or a fallback hands it back to that model)."""
        known = [e for e in (self.estimated_accuracy, self.source_estimated_accuracy) if e is not None]
        if self.reference_accuracy is None or not known:
            return None
        return self.reference_accuracy - min(known)

    @property
    def gain(self) -> float | None:
        """Served minus source estimate on the same windows: what adaptation bought."""
        if self.estimated_accuracy is None or self.source_estimated_accuracy is None:
            return None
        return self.estimated_accuracy - self.source_estimated_accuracy


def psi_values(row: dict) -> np.ndarray:
    """A summary row's PSI per channel; NaN where null, or where no PSI can be (`sane`)."""
    return sane(np.array([np.nan if v is None else v for v in row["psi"] or []], np.float64))


def drift_scores(row: dict) -> np.ndarray:
    """Per channel of a summary row, how drifted it is: its PSI over the calibrated limit the summary
    carries (above 1: beyond what in-distribution devices reach), the PSI itself where there is no
    limit; NaN without data. A new wearer's 3.0 on one axis can be less drift than 1.5 on another."""
    psi = psi_values(row)
    limits = row.get("psi_limit") or []
    limit = np.array([np.nan if v is None else v for v in limits], np.float64)
    if len(limit) != len(psi):
        return psi
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(limit) & (limit > 0), psi / limit, psi)


def _worst_channels(row: dict, bins: int, rules: AlertsSection) -> tuple[tuple[str, str], ...]:
    """(channel, PSI as text) of a summary row's channels beyond their drift limit (the larger of
    the sampling limit at its size, with the row's most bins, and the summary's own), the furthest
    first; none when no channel is: "ax 0.01" named a healthy device's noise as its explanation."""
    psi = psi_values(row)
    windows = float(np.nan_to_num(sane(np.array([row["windows"] or 0], np.float64)))[0])
    limit = np.full(len(psi), float(psi_limit(bins, windows, rules)))
    own = np.array([np.nan if v is None else v for v in row.get("psi_limit") or []], np.float64)
    if len(own) == len(psi):
        limit = np.fmax(limit, own)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = psi / limit
    over = [
        (r, name, value)
        for name, value, r in zip(row["channels"] or [], psi, ratio, strict=False)
        if r > 1  # NaN is not
    ]
    worst = sorted(over, key=lambda rnv: -rnv[0])[:EXPLAINING_CHANNELS]
    return tuple((str(name), f"{value:.2f}") for _, name, value in worst)


def drifting_since(intervals: Intervals, i: int, min_windows: int = 1) -> str | None:
    """The start of the first interval of the run of drifted intervals that reaches the latest one,
    judged as the psi rule judges: intervals of fewer than `min_windows` windows neither start nor
    break a run."""
    scores, sized = intervals.scores(i), intervals.sized(i, min_windows)
    drifted = intervals.drift_ratio[scores][sized] > 1
    if not sized.size or not drifted[-1]:
        return None
    calm = np.flatnonzero(~drifted)
    first = sized[calm[-1] + 1] if calm.size else sized[0]
    return intervals.table.column("interval_start")[scores.start + int(first)].as_py().strftime(STAMP)


def judged(intervals: Intervals, i: int, rules: AlertsSection) -> int:
    """Device i's interval the psi rule and `drifting_since` judge, counted back from its latest (1:
    the latest): the latest of `psi_min_windows` windows or more, else the latest. A last summary of
    3 windows, sent as an agent stops, showed no drifted channel beside 'drifting since' and a psi
    alert."""
    at, sized = intervals.scores(i), intervals.sized(i, rules.psi_min_windows)
    return at.stop - at.start - int(sized[-1]) if sized.size else 1


def health(
    intervals: Intervals,
    rules: AlertsSection | None = None,
    reference_accuracy: float | None = None,
    estimates: list[Estimates] | None = None,
    reference_model: str | None = None,
) -> list[DeviceHealth]:
    """Devices ranked by estimated accuracy lost, worst first, then by drift score; devices without an
    estimate last. Estimates are over the latest intervals holding `estimate_windows` windows
    (`edge_ttt.monitor.estimates`). The reference is the bundle's validation accuracy when given,
    for the devices whose latest summary names `reference_model` (every device when None), else the
    one the summaries carry (since version 4; before, no loss is known)."""
    rules = rules or AlertsSection()
    fleet = fleet_estimates(intervals, rules.estimate_windows) if estimates is None else estimates
    col = {name: np.nan_to_num(intervals.array(name)) for name in COUNTS}
    out = []
    for i, device in enumerate(intervals.devices):
        at = intervals.scores(i)
        windows = int(col["windows"][at].sum())
        no_drift, unreliable = col["skipped_no_drift"][at].sum(), col["skipped_unreliable"][at].sum()
        entropy = intervals.mean_entropy[at]
        ok = ~np.isnan(entropy)
        trend = float(np.polyfit(np.flatnonzero(ok), entropy[ok], 1)[0]) if ok.sum() >= 2 else math.nan
        estimates = fleet[i]
        (last,) = intervals.rows(i, last=1)
        back = judged(intervals, i, rules)
        seen = intervals.rows(i, last=back)[0]
        bundle = reference_accuracy is not None and reference_model in (None, last["model_sha256"])
        reference = reference_accuracy if bundle else estimates.reference
        out.append(
            DeviceHealth(
                device,
                float(intervals.max_psi[at][-back]),
                last["interval_end"].strftime(STAMP),
                at.stop - at.start,
                windows,
                int(col["resets"][at].sum()),
                int(col["rollbacks"][at].sum()),
                no_drift / windows if windows else math.nan,
                unreliable / windows if windows else math.nan,
                trend,
                estimates.served,
                estimates.source,
                reference,
                int(col["fallbacks"][at].sum()),
                int(col["windows_on_source"][at].sum()),
                _worst_channels(seen, int(intervals.bins[at][-back]), rules),
                drifting_since(intervals, i, rules.psi_min_windows),
                last.get("mounting"),
                bundle,
                said_noise(noisy_channels(last.get("noise_share"), last.get("channels"), rules.noise_share))
                or None,
                back,
            )
        )

    def rank(h: DeviceHealth) -> tuple:
        lost, score = h.accuracy_lost, h.score
        return (
            lost is None,
            -(lost or 0.0),
            math.isnan(score),
            -(0.0 if math.isnan(score) else score),
            h.device,
        )

    return sorted(out, key=rank)


@dataclass(frozen=True)
class FleetSummary:
    devices: int
    silent: int  # a silent alert holds: nothing received for longer than silent_s
    clock_off: int  # a clock alert holds
    drifting: int  # a psi alert holds
    losing: int  # served predictions estimated to lose more than the rule's accuracy_loss
    rescued: int  # the source model estimated to lose more than that, the served predictions not
    helped: int  # served estimate above the source estimate
    compared: int  # devices with both estimates
    reference: str  # where the reference accuracy comes from, in words


def fleet_summary(
    ranked: list[DeviceHealth], alerts: list[Alert], rules: AlertsSection, bundle_devices: int | None = None
) -> FleetSummary:
    """`bundle_devices`: how many devices are compared with the bundle's accuracy (None: no bundle)."""
    gains = [h.gain for h in ranked if h.gain is not None]
    limit = rules.accuracy_loss

    def lost(h: DeviceHealth, estimate: float | None) -> bool:
        return None not in (h.reference_accuracy, estimate) and h.reference_accuracy - estimate > limit

    return FleetSummary(
        devices=len(ranked),
        silent=len({a.device for a in alerts if a.rule == "silent"}),
        clock_off=len({a.device for a in alerts if a.rule == "clock"}),
        drifting=len({a.device for a in alerts if a.rule == "psi"}),
        losing=sum(1 for h in ranked if lost(h, h.estimated_accuracy)),
        rescued=sum(
            1
            for h in ranked
            if lost(h, h.source_estimated_accuracy)
            and h.estimated_accuracy is not None
            and not lost(h, h.estimated_accuracy)
        ),
        helped=sum(1 for g in gains if g > 0),
        compared=len(gains),
        reference=_reference_words(bundle_devices, len(ranked)),
    )


def _reference_words(bundle_devices: int | None, devices: int) -> str:
    carried = "the source model's validation accuracy, as the summaries carry it"
    if bundle_devices is None:
        return f"{carried} (summaries before version 4 do not: pass --bundle)"
    if bundle_devices == devices:
        return "the bundle's validation accuracy"
    return (
        f"the bundle's validation accuracy for the {bundle_devices} devices running its model; for the "
        f"other {devices - bundle_devices}, {carried}"
    )
