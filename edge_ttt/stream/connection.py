"""The MQTT connection as the agent reports it: `online` only while connected, else `connecting`
(not connected since the start) or `disconnected` (lost), with the last reason and since when.

paho retries on its own thread and says little: a refused TCP connect or a failed TLS handshake
reaches only `on_connect_fail`, without the exception, and a broker's CONNACK refusal comes as a
failed `on_connect` followed by an `on_disconnect` that paho words "Protocol error" (MQTT v5) or
"Unspecified error". `ConnectionState` turns each failed attempt into one reason, logs it
(rate-limited per kind, so a broker that stays away gives a line every 10 s, not one per retry)
and keeps what the status and the health check read.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from edge_ttt.logs import RateLimitedLog

log = logging.getLogger(__name__)

ONLINE, CONNECTING, DISCONNECTED = "online", "connecting", "disconnected"
AUTH_REASONS = frozenset({0x86, 0x87, 0x8C})  # bad user name or password, not authorized, bad auth method
TAKEN_OVER = 0x8E  # MQTT v5 "Session taken over": another client connected with this client id
# Brokers close the older of two connections with one client id, and some (mosquitto 2.0) say
# nothing: two agents with one id then take the session from each other every reconnect. A run
# of connections that each end this soon after they began is that pattern.
SHORT_S = 5.0
SHORT_RUN = 3
# What a plain client on a TLS port, or a TLS client on a plain one, sees: said, since neither
# side can tell it in its own words.
PORT_HINT = (
    " (a TLS port reached without TLS, or a plain one with it? Fix: check mqtt.tls.enabled and mqtt.port)"
)


@dataclass(frozen=True)
class Snapshot:
    state: str
    since_unix: float  # when this state began (wall clock: a health probe in another process reads it)
    reason: str | None  # why not online: the last failure; None while online
    failures: int  # failed attempts since the last connection (or the start)

    def as_dict(self) -> dict[str, Any]:
        return {"since_unix": self.since_unix, "reason": self.reason, "failures": self.failures}


def describe(exc: BaseException | None, broker: str) -> tuple[str, str]:
    """(kind, reason) of the exception of a failed connect attempt; the kind keys the rate limit."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", f"TLS verification of {broker} failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake with {broker} failed: {getattr(exc, 'reason', None) or exc}{PORT_HINT}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", f"connection refused by {broker}: no broker listening there"
    if isinstance(exc, socket.gaierror):
        return "dns", f"cannot resolve the broker's host in {broker}: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return "timeout", f"no answer from {broker} (timed out)"
    if isinstance(exc, OSError):  # a reset: a plain port hung up on a TLS hello, for one
        hint = PORT_HINT if isinstance(exc, ConnectionResetError) else ""
        return "network", f"cannot reach {broker}: {exc.strerror or exc}{hint}"
    return "unknown", f"cannot connect to {broker} (paho gave no reason)"


def refusal(broker: str, reason_code: Any) -> str:
    """A CONNACK refusal in words."""
    return f"the broker at {broker} refused the connection: {reason_code}"


def lost_reason(reason_code: Any, from_broker: bool) -> str:
    """paho's disconnect reason in words: its "Unspecified error" for a socket that closed hides
    what happened, so say it."""
    if from_broker:
        return f"the broker closed the connection: {reason_code}"
    text = str(reason_code)
    if text == "Keep alive timeout":
        return "no answer from the broker within the keepalive"
    if text in ("Unspecified error", "Success"):
        return "connection lost (the broker closed the socket or went away)"
    return f"connection lost: {text}"


class ConnectionState:
    """Updated on paho's thread, read by the worker and the status; `changed` is set on every
    change of state, so that the status file says it at once, not an interval later."""

    def __init__(
        self, broker: str, client_id: str | None = None, id_key: str = "agent.id (or mqtt.client_id)"
    ) -> None:
        """`id_key`: the config key that sets the client id, for the fix of a duplicate one."""
        self.broker = broker
        self.client_id = client_id
        self.id_key = id_key
        self.changed = threading.Event()
        self._online_at = 0.0  # time.monotonic() of the last connection
        self._short = 0  # connections in a row that ended within SHORT_S
        self._flap_reason: str | None = None  # why, the last time such a run was said
        self._lock = threading.Lock()
        self._warn = RateLimitedLog(log)
        self._now = Snapshot(CONNECTING, time.time(), None, 0)
        self._refused = False  # a CONNACK refusal was reported; paho's disconnect after it is not news
        self.stopping = False  # the client disconnects on purpose: its disconnect is not a lost connection
        self.publishes_refused = 0  # QoS 1 messages the broker answered with a failure (MQTT v5 PUBACK)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._now

    @property
    def online(self) -> bool:
        return self.snapshot().state == ONLINE

    def connect_failed(self, exc: BaseException | None) -> None:
        """A TCP connect or TLS handshake that failed (`on_connect_fail`)."""
        self._failed(*describe(exc, self.broker))

    def refused(self, reason_code: Any) -> None:
        """The broker answered CONNACK with a failure."""
        kind = "auth" if getattr(reason_code, "value", None) in AUTH_REASONS else "broker"
        self._refused = True
        self._failed(kind, refusal(self.broker, reason_code))

    def published(
        self, _client: Any, _userdata: Any, _mid: int, reason_code: Any, _properties: Any = None
    ) -> None:
        """paho's `on_publish`, for the agent and the collector alike: a failure means the broker
        took the message and dropped it (v5 says so; v3.1.1 cannot), typically an ACL that does not
        let this login publish the topic. Counted and said (rate-limited): before, refused
        predictions and acknowledgements went unnoticed."""
        if not getattr(reason_code, "is_failure", False):
            return
        self.publishes_refused += 1
        self._warn.warning(
            "publish_refused",
            "the broker refused a message: %s. Fix: let this login publish its topics (the broker's ACL)",
            reason_code,
            fields={"broker": self.broker, "reason": str(reason_code), "refused": self.publishes_refused},
        )

    def closed(self, reason_code: Any, from_broker: bool) -> None:
        """`on_disconnect`: a connection lost, the end of a refused attempt, or an attempt that the
        broker closed before accepting it."""
        if self._refused:
            self._refused = False
            return
        if self.stopping:
            return
        if not self.online:
            self._failed(
                "closed", f"{self.broker} closed the connection before accepting it: {reason_code}{PORT_HINT}"
            )
            return
        self._short = self._short + 1 if time.monotonic() - self._online_at < SHORT_S else 0
        kind, reason = "lost", lost_reason(reason_code, from_broker)
        taken = getattr(reason_code, "value", None) == TAKEN_OVER
        if taken or self._short >= SHORT_RUN:
            kind = "taken_over"
            reason += (
                f"; {self._short} connections in a row ended within {SHORT_S:g} s: another client may be"
                f" using client id {self.client_id!r}. Fix: give each its own {self.id_key}"
            )
            if not taken:  # the broker said nothing: it may also be closing on a message it refuses
                reason += (
                    "; or the broker closes the connection on a message it will not take, such as one "
                    "over its packet size limit (with MQTT v3.1.1 it cannot say its limit: lower "
                    "drift.chunk_bytes below it) or one its ACL refuses (mosquitto with "
                    "max_queued_messages 0 does: let this login publish its pred, drift and status "
                    "topics, or set a large limit instead of 0, as configs/mosquitto-fleet.conf does)"
                )
        self._flap_reason = reason if kind == "taken_over" else None
        self._set(Snapshot(DISCONNECTED, time.time(), reason, 0))
        self._warn.warning(kind, "%s; reconnecting", reason, fields=self._fields())

    def flapping(self) -> str | None:
        """Why connections keep ending within `SHORT_S` of their start (another client with this
        id, a message the broker will not take), while they do; None once one lasts. The status
        carries it: between two such drops the agent is online, and `health` said healthy."""
        if self._flap_reason is None:  # set by a takeover or a run of short connections
            return None
        if self.online and time.monotonic() - self._online_at >= SHORT_S:
            return None
        return self._flap_reason

    def connected(self) -> None:
        was = self.snapshot()
        self._online_at = time.monotonic()
        self._set(Snapshot(ONLINE, time.time(), None, 0))
        if self._short >= SHORT_RUN:  # taken over again and again: `closed`'s rate-limited warning says it
            return
        self._warn = RateLimitedLog(log)  # the next outage's first failure is said at once
        fields = {"broker": self.broker, "was": was.state, "after_s": round(time.time() - was.since_unix, 1)}
        # After an outage said at warning level, its end is said at the same level: a log kept at
        # warnings would otherwise end on "cannot connect" although the connection is back.
        level = logging.WARNING if was.failures or was.state == DISCONNECTED else logging.INFO
        log.log(level, "connected", extra={"fields": {**fields, "failed_attempts": was.failures}})

    def _failed(self, kind: str, reason: str) -> None:
        with self._lock:
            was = self._now
            state = DISCONNECTED if was.state == ONLINE else was.state
            since = time.time() if was.state == ONLINE else was.since_unix
            self._now = Snapshot(state, since, reason, was.failures + 1)
        self.changed.set()
        self._warn.warning(kind, "cannot connect: %s; retrying with backoff", reason, fields=self._fields())

    def _set(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._now = snapshot
        self.changed.set()

    def _fields(self) -> dict[str, Any]:
        now = self.snapshot()
        down_s = round(time.time() - now.since_unix, 1)
        return {"broker": self.broker, "state": now.state, "reason": now.reason, "failures": now.failures,
                "down_s": down_s}  # fmt: skip
