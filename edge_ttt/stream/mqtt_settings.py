"""The MQTT connection's settings: broker, session, credentials, TLS and the sensor topic.

The `[mqtt]` table of the agent's config and of the monitor's; the transport (`stream/mqtt.py`)
and the fleet collector connect with them. Secrets are never held: `password()` reads them at
connect time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from edge_ttt.config_file import ConfigError, ConfigPath, Section, require_file
from edge_ttt.stream import topics
from edge_ttt.stream.topics import SensorTopic

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TlsSection(Section):
    enabled: bool = False
    ca_file: ConfigPath | None = Field(None, description="CA certificates; None: the system's")
    cert_file: ConfigPath | None = Field(None, description="client certificate, with key_file")
    key_file: ConfigPath | None = Field(None, validate_default=True)
    insecure: bool = Field(False, description="skip the broker hostname check; for tests only")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _exists(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and info.data.get("enabled"):
            require_file(path, info)
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


class MqttSection(Section):
    host: str = Field("127.0.0.1", min_length=1, max_length=253)  # a DNS name's longest
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(  # MQTT strings are at most 65,535 bytes: a longer id killed paho's thread
        None,
        min_length=1,
        max_length=8192,
        description="None in the file: edge-ttt-<agent.id>, filled in on load",
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
            require_file(path, info)
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
        return topics.subscription(self.sensor_levels())

    def parse_topic(self, topic: str) -> tuple[str, str] | None:
        """(device, stream) of a topic that fits sensor_topic, else None."""
        return topics.parse_topic(self.sensor_levels(), topic)

    def sensor_levels(self) -> list[str]:
        """sensor_topic's levels with the prefix filled in."""
        return topics.levels(self.sensor_topic, prefix=self.prefix)
