"""The agent's configuration: one TOML file, checked completely before the agent starts.

`edge-ttt run --config FILE` loads it with `load_config`. The file's tables are the sections of
what they configure (the transport's `[mqtt]`, the stream stages', the sinks'); this module adds
the agent's own (`[agent]`, `[model]`, `[drift]`, `[logging]`), composes them and checks what only
the whole can tell. The keys are documented in docs/configuration.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_ttt.adapt.engine import SOURCE_EVERY, AutoInputs, AutoRuns
from edge_ttt.adapt.fallback import FallbackOptions
from edge_ttt.adapt.fallback_setup import AutoFallback
from edge_ttt.adapt.input_alignment import InputOptions
from edge_ttt.adapt.label_runs import RunOptions, ServeMode
from edge_ttt.adapt.policies import DEFAULT_POLICY, POLICY_TYPES, misfit
from edge_ttt.agent.checkpoints import StateSection
from edge_ttt.agent.policy_options import check_option_values, policy_options
from edge_ttt.agent.publisher import PredictionsSection
from edge_ttt.agent.status import StatusSection
from edge_ttt.config_file import (
    ConfigError,
    ConfigPath,
    Section,
    WritableDir,
    read_toml,
    section_at,
    validate_file,
)
from edge_ttt.drift.acks import ACK_LEVEL
from edge_ttt.manifest import Manifest
from edge_ttt.stream.mqtt_settings import MqttSection
from edge_ttt.stream.settings import QueueSection, WindowingSection
from edge_ttt.stream.topics import DeviceTopic, levels, may_overlap, subscription

__all__ = [
    "AgentConfig",
    "AgentSection",
    "DriftSection",
    "EstimatesSection",
    "FallbackSection",
    "LoggingSection",
    "ModelSection",
    "load_config",
]

_NAME = re.compile(r"[A-Za-z0-9._-]+")


class AgentSection(Section):
    id: str = Field(description="this agent's id, in the MQTT client id and the status topic")

    @field_validator("id")
    @classmethod
    def _id_chars(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} may contain only letters, digits, '-', '_' and '.', because it becomes part of "
                "MQTT topics and the client id; rename the agent"
            )
        return value


class FallbackSection(Section):
    """`[model.fallback]`: serve the source model while the adapted one is estimated worse
    (`edge_ttt.adapt.fallback`); the other keys are `FallbackOptions`' fields."""

    enabled: bool | Literal["auto"] = "auto"  # auto: ahead of the default policy (`AutoFallback`)
    horizon: int = Field(FallbackOptions.horizon, ge=1, description="windows compared")
    margin: float = Field(FallbackOptions.margin, ge=0.0, lt=1.0, description="to serve source, 0-1")
    recover: float = Field(FallbackOptions.recover, ge=0.0, lt=1.0, description="to serve the policy again")
    min_windows: int = Field(FallbackOptions.min_windows, ge=1, description="before the first switch")
    classes: float = Field(FallbackOptions.classes, ge=0.0, le=1.0, description="classes to switch to source")

    @model_validator(mode="after")
    def _fits(self) -> FallbackSection:
        self._options()  # checks how the fields relate
        return self

    def _options(self) -> FallbackOptions:
        return FallbackOptions(self.horizon, self.margin, self.recover, self.min_windows, self.classes)

    def options(self) -> FallbackOptions | AutoFallback | None:
        """What the engine takes: None when disabled."""
        if self.enabled == "auto":
            return AutoFallback(self._options())
        return self._options() if self.enabled else None


class EstimatesSection(Section):
    """`[model.estimates]`: the label-free accuracy estimates (`edge_ttt.adapt.estimates`); with
    the fallback off, how often the source model runs for its own (docs/adaptation.md)."""

    source_every: int = Field(
        SOURCE_EVERY, ge=0, description="the source model on every n-th window the policy serves; 0: never"
    )


class InputSection(Section):
    """`[model.input]`: input alignment ahead of the policy (`edge_ttt.adapt.input_alignment`);
    the other keys are `InputOptions`' fields."""

    enabled: bool | Literal["auto"] = "auto"  # auto: where it wins (`AutoInputs`, docs/adaptation.md)
    momentum: float = Field(InputOptions.momentum, gt=0.0, le=1.0, description="weight of one window")
    warmup_windows: float = Field(InputOptions.warmup_windows, ge=0.0)
    reliable_quantile: float = Field(InputOptions.reliable_quantile, gt=0.0, le=1.0)
    prior_momentum: float = Field(InputOptions.prior_momentum, ge=0.0, lt=1.0)
    dead_band: float = Field(
        InputOptions.dead_band, ge=0.0, description="x the spread between source devices"
    )
    offset_floor: float = Field(InputOptions.offset_floor, ge=0.0, description="source stds")
    mounting: bool = InputOptions.mounting
    learn_every: int = Field(InputOptions.learn_every, ge=1, description="windows learnt in one block")
    denoise: bool = InputOptions.denoise

    def options(self) -> InputOptions | AutoInputs | None:
        """What the engine takes: None when disabled, `AutoInputs` for auto."""
        if self.enabled is False:
            return None
        options = InputOptions(**self.model_dump(exclude={"enabled"}))
        return AutoInputs(options) if self.enabled == "auto" else options


class RunsSection(Section):
    """`[model.runs]`: the label-run switch (`edge_ttt.adapt.label_runs`): in a long run of one
    activity the source model serves the aligned windows (alone or blended with the policy) and
    the policy stands still; on by default ahead of the default policy (`AutoRuns`)."""

    enabled: bool | Literal["auto"] = "auto"  # auto: where it wins (`AutoRuns`, docs/adaptation.md)
    horizon: float = Field(RunOptions.horizon, ge=1.0, description="windows of the predicted-class mix")
    enter: float = Field(RunOptions.enter, ge=1.0, description="effective classes below which a run starts")
    leave: float = Field(RunOptions.leave, ge=1.0, description="effective classes above which it ends")
    offset_floor: float = Field(RunOptions.offset_floor, ge=0.0, description="source stds, in a run")
    serve: ServeMode = Field(
        RunOptions.serve, description="in a run: the source model, or its mean with the policy held still"
    )
    instance_offsets: float = Field(
        RunOptions.instance_offsets,
        ge=0.0,
        description="in a run, the first norm follows each window (0: off)",
    )

    @model_validator(mode="after")
    def _fits(self) -> RunsSection:
        self._build()  # checks how the fields relate
        return self

    def _build(self) -> RunOptions:
        return RunOptions(
            self.horizon, self.enter, self.leave, self.offset_floor, self.serve, self.instance_offsets
        )

    def options(self) -> RunOptions | AutoRuns | None:
        """What the engine takes: None when disabled, `AutoRuns` for auto."""
        if self.enabled is False:
            return None
        return AutoRuns(self._build()) if self.enabled == "auto" else self._build()


class ModelSection(Section):
    artifacts: ConfigPath = Field(
        description="artifact bundle directory, verified later by the bundle loader"
    )
    policy: str = DEFAULT_POLICY
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(1, ge=1, le=1024)  # ONNX Runtime's intra-op threads: a huge one was a TypeError
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the policy")
    fallback: FallbackSection = Field(default_factory=FallbackSection)
    estimates: EstimatesSection = Field(default_factory=EstimatesSection)
    input: InputSection = Field(default_factory=InputSection)
    runs: RunsSection = Field(default_factory=RunsSection)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICY_TYPES:
            raise ValueError(f"unknown policy {value!r}; choose one of {', '.join(POLICY_TYPES)}")
        return value

    @field_validator("options")
    @classmethod
    def _policy_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "policy" in info.data:
            # A ValidationError raised here keeps its locations: model.options.<key>.
            policy_options(info.data["policy"]).model_validate(options)
            check_option_values(info.data["policy"], options)  # on load rather than at start
        return options

    def check_fits(self, manifest: Manifest) -> None:
        """Refuse a policy that cannot run on the bundle, before anything starts: the engines are
        built per device, at its first frame, where a mismatch would fail every stream instead."""
        reason = misfit(POLICY_TYPES[self.policy], manifest)
        if reason is not None:
            raise ConfigError(f"model.policy: {self.policy!r} cannot run on {self.artifacts}: {reason}")

    @field_validator("estimates")
    @classmethod
    def _source_for_fallback(cls, estimates: EstimatesSection, info: ValidationInfo) -> EstimatesSection:
        fallback = info.data.get("fallback")
        if fallback is not None and fallback.enabled is True and estimates.source_every == 0:
            raise ValueError(
                "source_every = 0 never runs the source model, and model.fallback.enabled = true "
                "compares with it; set source_every to 1 or more, or the fallback off"
            )
        return estimates

    @field_validator("runs")
    @classmethod
    def _runs_keep_state(cls, runs: RunsSection, info: ValidationInfo) -> RunsSection:
        if runs.enabled is True and (info.data.get("options") or {}).get("episodic"):
            raise ValueError(
                "label runs need a policy that keeps its state, and model.options.episodic = true "
                "forgets every batch; set one of them to false"
            )
        return runs


class DriftSection(Section):
    topic: DeviceTopic = Field("{prefix}/{device}/drift", validate_default=True)
    interval_s: float = Field(300.0, gt=0, description="a summary per stream at least this often")
    interval_windows: int | None = Field(None, ge=1, description="or after this many windows")
    spool_dir: WritableDir = Field(Path("drift-spool"), validate_default=True)
    spool_max_bytes: int = Field(64 * 2**20, ge=1, description="oldest summaries go first beyond this")
    chunk_bytes: int = Field(64_000, ge=1024, description="larger summaries travel in several messages")
    ack_timeout_s: float = Field(60.0, gt=0, description="send again what the collector has not acknowledged")
    max_inflight: int = Field(32, ge=1, description="summaries sent and awaiting their acknowledgement")
    stop_timeout_s: float = Field(7.0, ge=0, description="a whole clean stop takes at most this long")


class LoggingSection(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_lines: bool = Field(True, alias="json")  # `json` would shadow BaseModel.json


class AgentConfig(Section):
    agent: AgentSection
    mqtt: MqttSection
    model: ModelSection
    queue: QueueSection
    windowing: WindowingSection
    predictions: PredictionsSection
    status: StatusSection
    state: StateSection
    drift: DriftSection
    logging: LoggingSection

    @model_validator(mode="before")
    @classmethod
    def _absent_sections_are_empty(cls, data: Any) -> Any:
        """An absent section is an empty table: its defaults get the same checks and path resolution,
        and a missing required key is named (agent.id rather than agent)."""
        if isinstance(data, dict):
            return {**{name: {} for name in cls.model_fields}, **data}
        return data

    @field_validator("mqtt")
    @classmethod
    def _client_id(cls, mqtt: MqttSection, info: ValidationInfo) -> MqttSection:
        """Derived from the agent id, so it is stable across restarts, as a persistent session needs."""
        if mqtt.client_id is None and "agent" in info.data:
            return mqtt.model_copy(update={"client_id": f"edge-ttt-{info.data['agent'].id}"})
        return mqtt

    @field_validator("predictions", "status", "drift")
    @classmethod
    def _not_a_sensor_topic(
        cls, section: PredictionsSection | StatusSection | DriftSection, info: ValidationInfo
    ) -> PredictionsSection | StatusSection | DriftSection:
        """The agent publishes here; if its subscription matched, it would read its own messages."""
        mqtt, agent = info.data.get("mqtt"), info.data.get("agent")
        if mqtt is None or agent is None:
            return section
        published = levels(section.topic, prefix=mqtt.prefix, agent=agent.id)
        if may_overlap(published, mqtt.sensor_levels()):
            raise ValueError(
                f"topic {section.topic!r} can match mqtt.sensor_topic {mqtt.sensor_topic!r}, so the agent "
                f"would read its own messages as sensor frames; change {info.field_name}.topic"
            )
        if isinstance(section, DriftSection) and may_overlap([*published, ACK_LEVEL], mqtt.sensor_levels()):
            raise ValueError(
                f"the acknowledgement topic {section.topic + '/' + ACK_LEVEL!r} can match mqtt.sensor_topic "
                f"{mqtt.sensor_topic!r}, so acknowledgements would be read as frames; change drift.topic"
            )
        return section

    @field_validator("drift")
    @classmethod
    def _own_spool(cls, drift: DriftSection, info: ValidationInfo) -> DriftSection:
        """The spool's files are deleted as the collector acknowledges them and its directory is
        locked: the states' own directory, or the bundle, is not one to share with it (a spool in a
        subdirectory of the states, on one disk, is fine)."""
        state, model = info.data.get("state"), info.data.get("model")
        spool = Path(drift.spool_dir).resolve()
        if state is not None and spool == Path(state.dir).resolve():
            raise ValueError(
                f"drift.spool_dir is state.dir ({state.dir}); give the spool a directory of its own"
            )
        bundle = model and Path(model.artifacts).resolve()
        if bundle is not None and (spool == bundle or bundle in spool.parents):
            raise ValueError(
                f"drift.spool_dir {drift.spool_dir} is inside model.artifacts; give the spool a directory "
                "of its own, outside the bundle"
            )
        return drift

    def prediction_topic(self, device: str) -> str:
        return self.predictions.topic.format(prefix=self.mqtt.prefix, device=device)

    def status_topic(self) -> str:
        return self.status.topic.format(prefix=self.mqtt.prefix, agent=self.agent.id)

    def drift_topic(self, device: str) -> str:
        return self.drift.topic.format(prefix=self.mqtt.prefix, device=device)

    def drift_ack_subscription(self) -> str:
        """Every device's acknowledgement topic: the drift topic, `+` for the device, then `ack`."""
        return subscription([*levels(self.drift.topic, prefix=self.mqtt.prefix), ACK_LEVEL])


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> AgentConfig:
    """Read and validate an agent configuration.

    `check_files=False` skips the existence checks of TLS and password files, to check a config
    on a machine other than the device it is written for. The artifact bundle is never checked
    here; the bundle loader verifies it.
    """
    path = Path(path)
    raw = read_toml(path)
    context = {"base_dir": path.parent.resolve(), "check_files": check_files}

    def section_model(section: tuple[Any, ...]) -> type[BaseModel]:
        if section == ("model", "options"):  # options are only validated once the policy is valid
            return policy_options(raw["model"].get("policy", DEFAULT_POLICY))
        return section_at(AgentConfig, section)

    return validate_file(AgentConfig, raw, path, context, section_model)
