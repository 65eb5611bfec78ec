"""The MQTT edge of the agent: paho-mqtt 2.x, its network loop, reconnects and the status topic.

paho's own thread (`loop_start`) runs the network loop: keepalives, QoS 1 acknowledgements and
reconnects with exponential backoff between `reconnect_min_s` and `reconnect_max_s`; every failed
attempt and its reason goes to `ConnectionState` (`stream/connection.py`). Callbacks run on that
thread and only hand messages on (`on_message`), never model work. Subscriptions are made in
`on_connect`, so every reconnect subscribes again. The session is persistent (stable
client id; MQTT v5 clean_start off with a session expiry, or v3.1.1 clean_session off), so QoS 1
frames published while the agent was away are delivered when it is back. The retained status
topic carries a Last Will of `offline`, replaced by `online` on every connect and by an explicit
`offline` on a clean shutdown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_ttt.config_file import ConfigError
from edge_ttt.logs import RateLimitedLog
from edge_ttt.mqtt_callbacks import CallbackGuard
from edge_ttt.stream.connection import ConnectionState
from edge_ttt.stream.mqtt_settings import MqttSection

log = logging.getLogger(__name__)
PUBLISH_OVERHEAD = 64  # bytes of a PUBLISH packet besides its topic and payload, with room to spare


def status_payload(agent: str, state: str, **fields: Any) -> bytes:
    return json.dumps({"agent": agent, "state": state, **fields}, default=str).encode()


def make_client(cfg: MqttSection, client_id: str, manual_ack: bool = False) -> paho.Client:
    """A paho client for a persistent session: stable id, backoff, credentials and TLS from config.
    Every callback the agent registers is wrapped by a `CallbackGuard`; `suppress_exceptions` is a
    second line for anything that slips past one (paho then drops the exception silently, as no
    paho logger is enabled): a dead network loop is worse than a lost message."""
    v5 = cfg.protocol == "v5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else False,
        manual_ack=manual_ack,
    )
    client.suppress_exceptions = True
    # paho annotates these as int but waits float seconds as given (`Client._reconnect_wait`): rounding
    # up made reconnect_min_s = 0.5 a 1 s delay.
    client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)  # type: ignore[arg-type]
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password())
    if cfg.tls.enabled:
        try:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
                # never OpenSSL's prompt: a service has no terminal (a passphrase key fails below)
                keyfile_password="",
            )
        except (ssl.SSLError, OSError) as exc:  # a file that is no PEM, a key of another certificate
            raise ConfigError(
                f"mqtt.tls: the TLS files cannot be used ({exc.strerror or exc}). Fix: mqtt.tls.ca_file a "
                "PEM CA certificate, mqtt.tls.cert_file and key_file a PEM certificate and its own key, "
                "without a passphrase, readable by this user"
            ) from exc
        client.tls_insecure_set(cfg.tls.insecure)
    return client


def connect_in_background(client: paho.Client, cfg: MqttSection) -> None:
    """connect_async, then the loop: it keeps retrying until the broker answers. With MQTT v5 the
    session outlives a disconnect only with clean_start off and a session expiry."""
    kwargs: dict[str, Any] = {}
    if cfg.protocol == "v5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        kwargs = {"clean_start": False, "properties": props}
    client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, **kwargs)
    client.loop_start()


def _no_delay(_client, _userdata, sock) -> None:
    """Send small packets at once: with Nagle's algorithm a prediction published right after the
    PUBACK of its frame waits for the broker's delayed ACK, about 40 ms on Linux."""
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (unix, websockets)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttTransport:
    def __init__(
        self,
        cfg: MqttSection,
        agent_id: str,
        status_topic: str,
        on_message: Callable[[str, bytes], None],
        also_subscribe: tuple[str, ...] = (),
    ) -> None:
        """`also_subscribe`: filters subscribed at QoS 1 with the sensor topics (their messages go
        to callbacks registered with `client.message_callback_add`, e.g. drift acknowledgements)."""
        self.cfg = cfg
        self.also_subscribe = also_subscribe
        self.agent_id = agent_id
        self.status_topic = status_topic
        self._on_message = on_message
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged the sensor subscription
        self.connects = 0
        self.disconnects = 0
        # The largest packet the broker takes (MQTT v5 CONNACK's Maximum Packet Size; None: it
        # named none). A broker closes the connection on a larger one, and paho sends a queued
        # QoS 1 message again after every reconnect, so one oversize message is a reconnect loop.
        self.max_packet: int | None = None
        self._warn = RateLimitedLog(log)
        client_id = cfg.client_id or f"edge-ttt-{agent_id}"
        self.link = ConnectionState(f"{cfg.host}:{cfg.port}", client_id)  # what the status and health report
        self.client = make_client(cfg, client_id)
        self.client.will_set(status_topic, status_payload(agent_id, "offline"), qos=1, retain=True)
        self.guard = CallbackGuard()  # also the drift shipper's: one count of callback failures
        guard = self.guard
        self.client.on_connect = guard("on_connect", self._connected)
        self.client.on_disconnect = guard("on_disconnect", self._disconnected)
        # paho calls this inside its `except OSError:` around the connect: the exception is there.
        self.client.on_connect_fail = guard(
            "on_connect_fail", lambda *_: self.link.connect_failed(sys.exc_info()[1])
        )
        self.client.on_subscribe = guard("on_subscribe", lambda *_: self.subscribed.set())
        self.client.on_message = guard(
            "on_message", lambda _c, _u, msg: self._on_message(msg.topic, msg.payload)
        )
        self.client.on_socket_open = guard("on_socket_open", _no_delay)
        self.client.on_publish = guard("on_publish", self.link.published)  # the drift shipper chains on it

    def start(self) -> None:
        """Connect in the background: the loop keeps retrying until the broker answers."""
        connect_in_background(self.client, self.cfg)

    def _connected(self, client: paho.Client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self.link.refused(reason_code)
            return
        self.connects += 1
        limit = getattr(_properties, "MaximumPacketSize", None)
        if limit != self.max_packet:
            log.info(
                "the broker takes packets of at most %s bytes", limit, extra={"fields": {"bytes": limit}}
            )
        self.max_packet = limit
        client.subscribe([(self.cfg.subscription(), self.cfg.qos), *((t, 1) for t in self.also_subscribe)])
        client.publish(self.status_topic, status_payload(self.agent_id, "online"), qos=1, retain=True)
        self.connected.set()
        self.link.connected()

    def _disconnected(self, _client, _userdata, flags, reason_code, _properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self.link.stopping:
            return
        if self.link.online:
            self.disconnects += 1
        self.link.closed(reason_code, flags.is_disconnect_packet_from_server)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """Queued by paho while disconnected (QoS 1) and sent on reconnect; a message larger than
        the broker takes is dropped here and logged (rate-limited), not sent into a reconnect loop."""
        limit = self.max_packet
        if limit is not None and len(payload) + len(topic.encode()) + PUBLISH_OVERHEAD > limit:
            fields = {"topic": topic[:200], "bytes": len(payload), "max_packet": limit}
            self._warn.warning("oversize", "message larger than the broker takes, not sent", fields=fields)
            return
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, timeout: float = 5.0, **status: Any) -> None:
        """Say `offline` (retained) and disconnect cleanly, so the Last Will is not sent."""
        self.link.stopping = True
        if self.connected.is_set():
            info = self.client.publish(
                self.status_topic, status_payload(self.agent_id, "offline", **status), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("could not publish the offline status before disconnecting")
        self.client.disconnect()
        self.client.loop_stop()
