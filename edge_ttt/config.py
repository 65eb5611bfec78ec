"""The agent's configuration: one TOML file, checked completely before the agent starts.

`edge-ttt run --config FILE` loads it with `load_config`. Every problem in the file is reported in
one error, one line each, naming the key by its dotted path and saying how to fix it: the reader
is at a device's console, and fixing one typo per restart is slow. The keys are documented in
docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from edge_ttt.adapt.policies import DEFAULT_POLICY, POLICY_TYPES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "AgentConfig",
    "AgentSection",
    "ConfigError",
    "DriftSection",
    "LoggingSection",
    "ModelSection",
    "MqttSection",
    "PredictionsSection",
    "QueueSection",
    "StateSection",
    "StatusSection",
    "TlsSection",
    "WindowingSection",
    "load_config",
    "policy_options",
]


class ConfigError(ValueError):
    """The configuration is unreadable or invalid; the message names the file, the keys and the fix."""


def _context(info: ValidationInfo) -> dict[str, Any]:
    """`load_config` passes base_dir (the config file's directory) and check_files."""
    return info.context or {}


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """Relative to the config file, so that a config means the same from any working directory."""
    base = _context(info).get("base_dir")
    return path if base is None or path.is_absolute() else (base / path).resolve()


def _require_file(path: Path, info: ValidationInfo) -> None:
    if _context(info).get("check_files", True) and not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ValueError(f"file {path} {what}; correct the path or install the file there")


# The models are strict (TOML has real types); paths are the one place a string is converted.
ConfigPath = Annotated[Path, Strict(False), AfterValidator(_resolve)]

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WILDCARDS = ("{device}", "{stream}")


def _levels(pattern: str, **values: str) -> list[str]:
    """Topic levels of a pattern with the given placeholders filled in; the others stay '{name}'."""
    filled = {f"{{{name}}}": value for name, value in values.items()}
    return [level for part in pattern.split("/") for level in filled.get(part, part).split("/")]


def _check_pattern(pattern: str, required: tuple[str, ...]) -> str:
    """Placeholders are whole levels (so '+' can stand in for them), each used once."""
    allowed = [f"{{{name}}}" for name in ("prefix", *required)]
    levels = pattern.split("/")
    if "" in levels:
        raise ValueError(f"{pattern!r} has an empty level; remove the leading, trailing or doubled '/'")
    for level in levels:
        if "+" in level or "#" in level:
            raise ValueError(f"{pattern!r} contains a wildcard ('+' or '#'); write placeholders instead")
        if ("{" in level or "}" in level) and level not in allowed:
            raise ValueError(
                f"{pattern!r}: level {level!r} is not a placeholder; placeholders fill a whole level "
                f"and are {', '.join(allowed)}"
            )
    for name in allowed:
        if levels.count(name) > 1:
            raise ValueError(f"{pattern!r} uses {name} twice; use it once")
    missing = [name for name in allowed[1:] if name not in levels]
    if missing:
        raise ValueError(f"{pattern!r} lacks {' and '.join(missing)}; add it as a level of its own")
    return pattern


def _topic_pattern(*required: str) -> Any:
    """A topic-pattern field type whose placeholders must include `required`."""
    return Annotated[str, AfterValidator(lambda value: _check_pattern(value, required))]


DeviceTopic = _topic_pattern("device")
AgentTopic = _topic_pattern("agent")
SensorTopic = _topic_pattern("device", "stream")


def _may_overlap(a: list[str], b: list[str]) -> bool:
    """Whether one topic can fit both level lists ('{...}' levels fit any one level)."""
    return len(a) == len(b) and all(
        x == y or x.startswith("{") or y.startswith("{") for x, y in zip(a, b, strict=True)
    )


class _Section(BaseModel):
    # strict: a TOML "1883" for a port or "yes" for a flag is a mistake, not a value to coerce
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class AgentSection(_Section):
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


class TlsSection(_Section):
    enabled: bool = False
    ca_file: ConfigPath | None = Field(None, description="CA certificates; None: the system's")
    cert_file: ConfigPath | None = Field(None, description="client certificate, with key_file")
    key_file: ConfigPath | None = Field(None, validate_default=True)
    insecure: bool = Field(False, description="skip the broker hostname check; for tests only")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _exists(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("enabled"):
            _require_file(path, info)
        return path

    @field_validator("key_file")
    @classmethod
    def _with_cert(cls, key_file: Path | None, info: ValidationInfo) -> Path | None:
        if "cert_file" not in info.data:  # cert_file itself is invalid and reported
            return key_file
        if key_file is None and info.data["cert_file"] is not None:
            raise ValueError("missing: mqtt.tls.cert_file is set and needs its private key; set key_file too")
        if key_file is not None and info.data["cert_file"] is None:
            raise ValueError("set without mqtt.tls.cert_file; set both (client certificate) or neither")
        return key_file


class MqttSection(_Section):
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(
        None, min_length=1, description="None in the file: edge-ttt-<agent.id>, filled in on load"
    )
    protocol: Literal["v5", "v311"] = "v5"
    keepalive_s: int = Field(30, ge=1, le=65535)
    session_expiry_s: int = Field(3600, ge=0, le=0xFFFFFFFF, description="MQTT v5 only")
    qos: int = Field(1, ge=0, le=1)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0, validate_default=True)
    prefix: str = "edge-ttt"
    sensor_topic: SensorTopic = "{prefix}/{device}/dt/{stream}"
    username: str | None = None
    password_env: str | None = Field(None, description="name of the environment variable with the password")
    password_file: ConfigPath | None = Field(None, description="file whose content is the password")
    tls: TlsSection = Field(default_factory=TlsSection)

    @field_validator("reconnect_max_s")
    @classmethod
    def _backoff(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("reconnect_min_s")
        if low is not None and value < low:
            raise ValueError(
                f"must be at least mqtt.reconnect_min_s ({low}), got {value}; "
                "raise it or lower reconnect_min_s"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if "" in value.split("/") or any(c in value for c in "+#{}"):
            raise ValueError(
                f"{value!r} must be one or more topic levels without '+', '#', braces, or a leading, "
                "trailing or doubled '/'"
            )
        return value

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        # The value is not echoed: a common mistake is to write the password itself here.
        if name is not None and not _ENV_NAME.fullmatch(name):
            raise ValueError(
                "must be the name of an environment variable (letters, digits and '_', not starting with "
                "a digit) that holds the password, never the password itself"
            )
        return name

    @field_validator("password_file")
    @classmethod
    def _one_password_source(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None:
            if info.data.get("password_env") is not None:
                raise ValueError("set mqtt.password_env or mqtt.password_file, not both; remove one")
            _require_file(path, info)
        return path

    def password(self) -> str | None:
        """The broker password, read now: at connect time, so it is never held in the config."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if not value:
                raise ConfigError(
                    f"mqtt.password_env: environment variable {self.password_env} is not set or empty; "
                    "set it in the agent's environment"
                )
            return value
        if self.password_file is not None:
            try:
                value = self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise ConfigError(
                    f"mqtt.password_file: cannot read {self.password_file} ({reason}); "
                    "check the path and that the agent's user may read it"
                ) from None
            if not value:
                raise ConfigError(
                    f"mqtt.password_file: {self.password_file} is empty; write the password there"
                )
            return value
        return None

    def subscription(self) -> str:
        """The filter that receives every device's streams: sensor_topic with '+' for both."""
        return "/".join("+" if level in _WILDCARDS else level for level in self._sensor_levels())

    def parse_topic(self, topic: str) -> tuple[str, str] | None:
        """(device, stream) of a topic that fits sensor_topic, else None."""
        parts = topic.split("/")
        levels = self._sensor_levels()
        if len(parts) != len(levels):
            return None
        found = {}
        for level, part in zip(levels, parts, strict=True):
            if level in _WILDCARDS and part:
                found[level] = part
            elif level != part:
                return None
        return found["{device}"], found["{stream}"]

    def _sensor_levels(self) -> list[str]:
        return _levels(self.sensor_topic, prefix=self.prefix)


@cache
def policy_options(policy: str) -> type[BaseModel]:
    """The options a policy takes, as a strict model, so that a misspelt option fails on load:
    the fields of its `Options`, and `episodic` for every gradient policy."""
    options = POLICY_TYPES[policy].Options
    hints = get_type_hints(options)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(options)}
    if POLICY_TYPES[policy].loss is not None:  # gradient policies: see `Engine`
        fields["episodic"] = (bool, False)
    return create_model(f"{policy}_options", __config__=_Section.model_config, **fields)


class ModelSection(_Section):
    artifacts: ConfigPath = Field(
        description="artifact bundle directory, verified later by the bundle loader"
    )
    policy: str = DEFAULT_POLICY
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(1, ge=1)
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the policy")

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
        return options


class QueueSection(_Section):
    max_frames: int = Field(10_000, ge=1)
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    max_frame_bytes: int = Field(65_536, ge=1)


class WindowingSection(_Section):
    reorder_frames: int = Field(4, ge=0, description="how late an out-of-order frame may be, in frames")


class PredictionsSection(_Section):
    topic: DeviceTopic = Field("{prefix}/{device}/pred", validate_default=True)
    qos: int = Field(1, ge=0, le=1)
    batch: int = Field(1, ge=1, description="predictions per message")


class StatusSection(_Section):
    topic: AgentTopic = Field("{prefix}/agents/{agent}/status", validate_default=True)
    interval_s: float = Field(10.0, gt=0)


class StateSection(_Section):
    dir: ConfigPath = Field(Path("state"), validate_default=True)
    checkpoint_interval_s: float = Field(300.0, gt=0)


class DriftSection(_Section):
    topic: DeviceTopic = Field("{prefix}/{device}/drift", validate_default=True)
    interval_s: float = Field(300.0, gt=0, description="a summary per stream at least this often")
    interval_windows: int | None = Field(None, ge=1, description="or after this many windows")
    spool_dir: ConfigPath = Field(Path("drift-spool"), validate_default=True)
    spool_max_bytes: int = Field(64 * 2**20, ge=1, description="oldest summaries go first beyond this")
    chunk_bytes: int = Field(64_000, ge=1024, description="larger summaries travel in several messages")


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_lines: bool = Field(True, alias="json")  # `json` would shadow BaseModel.json


class AgentConfig(_Section):
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
        published = _levels(section.topic, prefix=mqtt.prefix, agent=agent.id)
        if _may_overlap(published, mqtt._sensor_levels()):
            raise ValueError(
                f"topic {section.topic!r} can match mqtt.sensor_topic {mqtt.sensor_topic!r}, so the agent "
                f"would read its own messages as sensor frames; change {info.field_name}.topic"
            )
        return section

    def prediction_topic(self, device: str) -> str:
        return self.predictions.topic.format(prefix=self.mqtt.prefix, device=device)

    def status_topic(self) -> str:
        return self.status.topic.format(prefix=self.mqtt.prefix, agent=self.agent.id)

    def drift_topic(self, device: str) -> str:
        return self.drift.topic.format(prefix=self.mqtt.prefix, device=device)


def read_toml(path: Path) -> dict[str, Any]:
    """The file's tables, or a ConfigError that says what is wrong with the file itself."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror}); check the path") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}; fix the syntax there") from None


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> AgentConfig:
    """Read and validate an agent configuration.

    `check_files=False` skips the existence checks of TLS and password files, to check a config
    on a machine other than the device it is written for. The artifact bundle is never checked
    here; the bundle loader verifies it.
    """
    path = Path(path)
    raw = read_toml(path)
    context = {"base_dir": path.parent.resolve(), "check_files": check_files}
    try:
        return AgentConfig.model_validate(raw, context=context)
    except ValidationError as exc:
        problems = [f"{path}: {line}" for line in _problems(exc, raw)]
    # Raised outside the except block so that the ValidationError, which holds the raw input
    # values (a misplaced password among them), is not chained to it.
    raise ConfigError("\n".join(problems))


# ---------------------------------------------------------------------------------------------
# Error messages

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a table",
    "model_type": "a table",
    "path_type": "a path (a string)",
}
_BOUNDS = {"gt": "greater than {}", "ge": "at least {}", "lt": "less than {}", "le": "at most {}"}
_PASSWORD = (
    "a password is never written in the configuration; name an environment variable that holds it "
    "with mqtt.password_env, or a file with mqtt.password_file"
)


def _problems(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """One 'dotted.key: what is wrong and how to fix it' per error."""
    return [f"{'.'.join(map(str, e['loc']))}: {_explain(e, raw)}" for e in exc.errors(include_url=False)]


def _explain(error: ErrorDetails, raw: dict[str, Any]) -> str:
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx", {})
    got = f"got {_show(error.get('input'))}"
    if kind == "extra_forbidden":  # the value is not shown: it may be a password
        return _PASSWORD if loc == ("mqtt", "password") else _unknown_key(loc, raw)
    if kind == "missing":
        return "required, but missing; add it"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be {ctx['expected']}, {got}"
    if kind == "string_too_short":
        return f"must not be empty, {got}"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, {got}"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"must be {_bounds(loc, raw)}, {got}"
    return f"{error['msg']}, {got}"


def _section_model(section: tuple[Any, ...], raw: dict[str, Any]) -> type[BaseModel]:
    """The model of the table at `section`: its fields are the keys allowed there."""
    if section == ("model", "options"):  # options are only validated once the policy is valid
        return policy_options(raw["model"].get("policy", DEFAULT_POLICY))
    model: type[BaseModel] = AgentConfig
    for name in section:
        model = model.model_fields[name].annotation
    return model


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _unknown_key(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    allowed = list(_keys(_section_model(loc[:-1], raw)))
    guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    where = ".".join(loc[:-1]) or "the top level"
    return f"unknown key; {hint}allowed in {where}: {', '.join(allowed) or 'none'}"


def _bounds(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    field = _keys(_section_model(loc[:-1], raw))[loc[-1]]
    bounds = {k: getattr(m, k) for m in field.metadata for k in _BOUNDS if hasattr(m, k)}
    if "ge" in bounds and "le" in bounds:
        return f"between {bounds['ge']} and {bounds['le']}"
    return " and ".join(_BOUNDS[k].format(v) for k, v in bounds.items())


def _show(value: Any) -> str:
    """A value as TOML would spell it, shortened."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
