"""The demo's outcome per device, and the table it prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
from rich import box
from rich.console import Console
from rich.table import Table

from edge_ttt.adapt.policies import DEFAULT_POLICY
from edge_ttt_demo.fleet import Fleet

BASELINE = "source"
POLICIES = (DEFAULT_POLICY, BASELINE)  # one live agent each


@dataclass
class DeviceResult:
    device: str
    scenario: str
    windows: int
    accuracy: dict[str, float | None]
    predicted: dict[str, int]  # labeled windows each policy's agent predicted
    estimated: dict[str, float | None]  # label-free, as the fleet report shows them (see `_estimates`)
    resets: int | None  # resets + rollbacks of the default policy, from the fleet dataset


@dataclass
class DemoResult:
    devices: list[DeviceResult]
    report: Path | None
    interrupted: bool
    broker: str
    agent_exit_codes: dict[str, int | None] = field(default_factory=dict)


def _resets(location: Path) -> dict[str, int]:
    from edge_ttt.monitor import dataset

    if not dataset.exists(str(location)):
        return {}
    table = dataset.read(str(location), ["device", "resets", "rollbacks"]).to_pydict()
    out: dict[str, int] = {}
    for device, resets, rollbacks in zip(table["device"], table["resets"], table["rollbacks"], strict=True):
        out[device] = out.get(device, 0) + int(resets or 0) + int(rollbacks or 0)
    return out


def _estimates(location: Path) -> dict[str, dict[str, float | None]]:
    """Per device, the estimates the fleet report shows (`edge_ttt.monitor.estimates`), from the
    default policy's drift summaries: its served predictions', and the source model's from the
    windows it ran on beside the policy. None without a dataset."""
    from edge_ttt.monitor import dataset
    from edge_ttt.monitor.config import AlertsSection
    from edge_ttt.monitor.estimates import fleet_estimates
    from edge_ttt.monitor.intervals import Intervals

    if not dataset.exists(str(location)):
        return {}
    table = dataset.read(str(location))
    table = table.filter(pc.equal(table.column("policy"), DEFAULT_POLICY))
    if table.num_rows == 0:
        return {}
    rules = AlertsSection()
    intervals = Intervals.of(table, rules)
    return {
        device: {DEFAULT_POLICY: e.served, BASELINE: e.source}
        for device, e in zip(
            intervals.devices, fleet_estimates(intervals, rules.estimate_windows), strict=True
        )
    }


def device_results(fleet: Fleet, dataset: Path) -> list[DeviceResult]:
    """Accuracy per policy from the scoreboard; the label-free estimates, resets and rollbacks from
    the fleet dataset."""
    resets = _resets(dataset)
    board = fleet.board
    estimates = _estimates(dataset)
    return [
        DeviceResult(
            device=device,
            scenario=fleet.scenario_names[i],
            windows=sum(1 for d, _ in board.labels if d == device),
            accuracy={p: board.accuracy(p, device)[0] for p in POLICIES},
            predicted={p: board.accuracy(p, device)[1] for p in POLICIES},
            estimated=estimates.get(device, dict.fromkeys(POLICIES)),
            resets=resets.get(device),
        )
        for i, device in enumerate(fleet.log.devices())
    ]


def print_results(result: DemoResult, console: Console) -> None:
    """The per-device table: accuracy of source vs the default policy, each with its label-free
    estimate beside it, resets, the report's path."""
    table = Table(
        title=f"{BASELINE} vs {DEFAULT_POLICY}, live over MQTT",
        caption="est.: estimated without labels, as the fleet report shows them (docs/monitoring.md)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in (
        "device",
        "scenario",
        "windows",
        f"{BASELINE} %",
        "est.",
        f"{DEFAULT_POLICY} %",
        "est.",
        "change",
        "resets",
    ):
        text = column in ("device", "scenario")
        table.add_column(column, justify="left" if text else "right", no_wrap=text)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    for row in result.devices:
        base, adapted = row.accuracy[BASELINE], row.accuracy[DEFAULT_POLICY]
        change = "-" if base is None or adapted is None else f"{100 * (adapted - base):+.1f}"
        table.add_row(
            row.device,
            row.scenario,
            str(row.windows),
            pct(base),
            pct(row.estimated[BASELINE]),
            pct(adapted),
            pct(row.estimated[DEFAULT_POLICY]),
            change,
            "-" if row.resets is None else str(row.resets),
        )
    console.print(table)
    if result.interrupted:
        console.print("interrupted: the table holds what was predicted until then")
    console.print(
        f"fleet report: {result.report}" if result.report else "fleet report: none (no drift summary arrived)"
    )
