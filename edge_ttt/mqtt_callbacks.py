"""Guards for paho-mqtt callbacks, shared by every MQTT client of the project (the agent's
transport and its drift shipper): paho re-raises a callback's exception out of its network loop,
which ends the loop thread while the process lives on. Knows no domain; paho and logging only."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

log = logging.getLogger(__name__)
MAX_TOPIC_BYTES = 65535  # MQTT's topic length field; paho raises ValueError on a longer topic


def _topic_of(args: tuple[Any, ...]) -> str | None:
    """The topic of the message among a callback's arguments (None: none, or not UTF-8)."""
    for arg in args:
        if isinstance(arg, paho.MQTTMessage):
            try:
                return arg.topic[:200]
            except UnicodeDecodeError:
                return repr(arg._topic[:200])
    return None


class CallbackGuard:
    """Wraps paho callbacks so that none can end paho's network loop: paho re-raises a callback's
    exception out of its loop, which ends the loop thread while the status still says online (one
    poison message, redelivered by the persistent session, would do it at every start). An
    unexpected exception is counted and logged once per callback and exception type, with the
    message's topic; the loop goes on."""

    def __init__(self) -> None:
        self.errors = 0
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str, callback: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any) -> Any:
            try:
                return callback(*args)
            except Exception as exc:
                self.failed(name, args, exc)
                return None

        guarded.__name__ = name  # paho names the callback in its own log line
        return guarded

    def failed(self, name: str, args: tuple[Any, ...], exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            key = (name, type(exc).__name__)
            if key in self._logged:
                return
            self._logged.add(key)
        fields = {"callback": name, "topic": _topic_of(args), "error": repr(exc)[:500], "errors": self.errors}
        log.error("MQTT callback failed; the message is dropped", extra={"fields": fields}, exc_info=exc)
