"""The collector's and the monitor's configuration (configs/monitor.toml), in the agent config's
style: strict TOML types, unknown keys refused, every problem reported at once with its key path."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from edge_ttt.config_file import Section, read_toml, section_at, validate_file
from edge_ttt.stream.mqtt_settings import MqttSection

_GROUP = re.compile(r"[A-Za-z0-9._-]+")


class CollectorSection(Section):
    dataset: str = Field(
        min_length=1, description="local directory (relative to this file) or URI, e.g. s3://"
    )
    client_id: str = Field(
        "edge-ttt-collector", min_length=1, max_length=8192, description="stable: the session is persistent"
    )
    share_group: str | None = Field(None, description="MQTT v5 shared subscription group; None: no sharing")
    flush_summaries: int = Field(100, ge=1, description="write a file after this many new summaries")
    flush_s: float = Field(
        5.0, gt=0, description="or after this many seconds; agents wait this long for their acknowledgement"
    )
    log_every_s: float = Field(60.0, gt=0, description="at most one rejected-payload warning per period")

    @field_validator("share_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and not _GROUP.fullmatch(value):
            raise ValueError(f"{value!r} may contain only letters, digits, '-', '_' and '.' (a topic level)")
        return value


class AlertsSection(Section):
    psi_threshold: float = Field(
        0.25, gt=0, description="channel PSI of an interval counted as drift, at least (see psi_false_alarm)"
    )
    psi_false_alarm: float = Field(
        0.001,
        gt=0,
        lt=1,
        description="share of in-distribution intervals allowed above the sample-size-aware PSI limit",
    )
    psi_intervals: int = Field(3, ge=1, description="consecutive latest intervals above it to alert")
    psi_min_windows: int = Field(
        8, ge=1, description="intervals with fewer windows are left out of the psi rule (too few to judge)"
    )
    reset_rate: float = Field(0.05, gt=0, description="(resets + rollbacks) per window over the window")
    reset_intervals: int = Field(6, ge=1, description="latest intervals the reset rate is taken over")
    entropy_rise: float = Field(0.6, gt=0, description="nats the mean entropy rose over the window")
    entropy_intervals: int = Field(4, ge=2, description="latest intervals, each mean entropy above the last")
    silent_s: float = Field(900.0, gt=0, description="no summary for this long: device silent")
    clock_skew_s: float = Field(
        3600.0, gt=0, description="latest summary dated further than this from its arrival: clock off"
    )
    max_late_s: float = Field(
        2_592_000.0,
        gt=0,
        description="summaries dated longer than this before they arrived are not drawn on time plots",
    )
    accuracy_loss: float = Field(
        0.15, gt=0, le=1, description="estimated accuracy below the reference by more: device losing accuracy"
    )
    estimate_windows: int = Field(
        600, ge=1, description="the latest intervals holding this many windows give a device's estimates"
    )
    accuracy_min_windows: int = Field(
        100, ge=1, description="windows the estimates need before the accuracy rule judges a device"
    )
    noise_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="white noise past the training data's, as a share of a channel's variance: noisy sensor",
    )

    @model_validator(mode="after")
    def _consistent(self) -> AlertsSection:
        """Keys that bound each other: accepted apart, together they silenced a rule for good."""
        problems = []
        if self.accuracy_min_windows > self.estimate_windows:
            problems.append(
                f"accuracy_min_windows ({self.accuracy_min_windows}) is above estimate_windows "
                f"({self.estimate_windows}), the windows the estimates span, so the accuracy rule could "
                "never fire; make accuracy_min_windows at most estimate_windows"
            )
        if self.max_late_s < self.clock_skew_s:
            problems.append(
                f"max_late_s ({self.max_late_s:g}) is below clock_skew_s ({self.clock_skew_s:g}), so the "
                "plots would leave out late summaries that no clock alert explains; make max_late_s at "
                "least clock_skew_s"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RulesConfig(Section):
    """The monitor TOML as `monitor alerts` and `monitor report` read it: [alerts] is theirs, the
    collector's tables may be there (checked, not required)."""

    mqtt: MqttSection = Field(default_factory=MqttSection)
    collector: CollectorSection | None = None
    alerts: AlertsSection = Field(default_factory=AlertsSection)


class MonitorConfig(RulesConfig):
    collector: CollectorSection  # the collector's: it writes there

    def topic_filter(self) -> str:
        """`<prefix>/+/drift`, or `$share/<group>/<prefix>/+/drift` when collectors share the load."""
        topic = f"{self.mqtt.prefix}/+/drift"
        group = self.collector.share_group
        return topic if group is None else f"$share/{group}/{topic}"


def resolve_location(location: str, base: Path) -> str:
    """A URI stays as it is; a local path is taken relative to the config file's directory."""
    if "://" in location:
        return location
    path = Path(location).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_monitor_config(path: str | os.PathLike[str]) -> MonitorConfig:
    path = Path(path)
    # base_dir: the mqtt section's TLS and password file paths are relative to this file
    context = {"base_dir": path.parent.resolve(), "check_files": True}
    cfg = validate_file(MonitorConfig, read_toml(path), path, context)
    dataset = resolve_location(cfg.collector.dataset, path.parent.resolve())
    return cfg.model_copy(update={"collector": cfg.collector.model_copy(update={"dataset": dataset})})


def load_alert_rules(path: str | os.PathLike[str]) -> AlertsSection:
    """The [alerts] rules of a monitor TOML; one with [alerts] only (or nothing: the defaults) is
    enough, the broker's files are not checked (the monitor commands do not connect)."""
    path = Path(path)
    context = {"base_dir": path.parent.resolve(), "check_files": False}
    return validate_file(
        RulesConfig, read_toml(path), path, context, lambda table: section_at(MonitorConfig, table)
    ).alerts
