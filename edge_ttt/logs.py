"""Structured logs: one JSON object per line on devices, readable lines in a terminal; a warning
that a flood of bad input cannot turn into a flood of lines; values quoted in messages, bounded."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}`; fields passed as `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message key=value ...`: the same fields as the JSON lines, for a terminal,
    since they say why (the error, the file, the device)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return line
        pairs = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        head, sep, trace = line.partition("\n")  # a traceback stays below the line
        return f"{head} {pairs}{sep}{trace}"


def _text(value: object) -> str:
    """A field's value as one token: quoted when it holds spaces, like logfmt.

    >>> _text("No space left"), _text(3), _text("a.npz")
    ('"No space left"', '3', 'a.npz')
    """
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c == '"' for c in text) else text


def configure(level: str = "info", json_lines: bool | None = None) -> None:
    """Log to stderr; JSON unless stderr is a terminal (override with `json_lines`)."""
    use_json = not sys.stderr.isatty() if json_lines is None else json_lines
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())


class RateLimitedLog:
    """At most one warning per `interval` s per kind; the rest are left to the caller's counters,
    so that a flood of bad input stays cheap and the log stays readable."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}

    def warning(
        self,
        kind: str,
        message: str,
        *args: Any,
        fields: dict[str, Any] | None = None,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log unless `kind` was logged less than `interval` s ago; whether it was logged.

        `fields` go to the JSON line (with `kind`); without them the record carries no extra.
        `exc_info`: an exception whose traceback the line carries."""
        now = time.monotonic()
        if now - self._last.get(kind, -float("inf")) < self.interval:
            return False
        self._last[kind] = now
        extra = None if fields is None else {"fields": {"kind": kind, **fields}}
        self.logger.warning(message, *args, extra=extra, exc_info=exc_info)
        return True


def show(value: object, limit: int = 60, *, toml: bool = False) -> str:
    """A value for an error message, shortened to `limit` characters: messages quote what a user or
    a device sent. `toml`: spelt as TOML would (true, [1, 2]) rather than as Python's repr."""
    text = repr(value)
    if toml and not isinstance(value, str):
        text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
