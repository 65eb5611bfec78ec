"""The v1 file's schema metadata: written from a log, and parsed back with every value checked."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from edge_ttt.recordlog.checks import (
    CONVERT_FIX,
    KEY_CHANNELS,
    KEY_CLASS_NAMES,
    KEY_LOG_FORMAT,
    KEY_SAMPLE_RATE_HZ,
    LOG_FORMAT_VERSION,
    SUPPORTED_VERSIONS,
    check_metadata,
    contract_error,
)
from edge_ttt.recordlog.recorded import RecordedLog


def encode_metadata(log: RecordedLog) -> dict[bytes, bytes]:
    """The schema metadata of `log`'s file (check it with check_metadata first)."""
    metadata = {
        KEY_LOG_FORMAT: str(LOG_FORMAT_VERSION),
        KEY_CHANNELS: json.dumps(list(log.channels)),
        KEY_SAMPLE_RATE_HZ: repr(log.sample_rate_hz),
    }
    if log.class_names is not None:
        metadata[KEY_CLASS_NAMES] = json.dumps(list(log.class_names))
    return {k.encode(): v.encode() for k, v in metadata.items()}


def parse_metadata(
    path: Path, metadata: Mapping[bytes, bytes] | None
) -> tuple[tuple[str, ...], float, tuple[str, ...] | None]:
    """Channels, sample rate and class names from a file's schema metadata, each checked."""
    meta = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (metadata or {}).items()}

    def required(key: str, fix: str) -> str:
        if key not in meta:
            raise contract_error(path, f"metadata key '{key}' is missing", fix)
        return meta[key]

    version = required(KEY_LOG_FORMAT, f"{CONVERT_FIX}; every log edge-ttt writes has this key")
    if version.strip() not in {str(v) for v in SUPPORTED_VERSIONS}:
        raise contract_error(
            path,
            f"metadata key '{KEY_LOG_FORMAT}' is {version!r}, an unsupported log format version",
            f"this reader supports version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}; convert the file or "
            "upgrade edge-ttt",
        )

    def json_strings(key: str, raw: str) -> tuple[str, ...]:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise contract_error(
                path,
                f"metadata key '{key}' is not valid JSON ({exc})",
                'store a JSON list, e.g. ["ax", "ay"]',
            ) from exc
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise contract_error(
                path,
                f"metadata key '{key}' is {raw!r}, not a JSON list of strings",
                "store a list of strings",
            )
        return tuple(parsed)

    channels = json_strings(KEY_CHANNELS, required(KEY_CHANNELS, "add the JSON list of channel column names"))
    raw_rate = required(KEY_SAMPLE_RATE_HZ, 'add the nominal sample rate as a decimal string, e.g. "50.0"')
    try:
        rate = float(raw_rate)
    except ValueError:
        raise contract_error(
            path,
            f"metadata key '{KEY_SAMPLE_RATE_HZ}' is {raw_rate!r}, not a number",
            'use a decimal string, e.g. "50.0"',
        ) from None
    class_names = json_strings(KEY_CLASS_NAMES, meta[KEY_CLASS_NAMES]) if KEY_CLASS_NAMES in meta else None
    check_metadata(path, channels, rate, class_names)
    return channels, rate, class_names
