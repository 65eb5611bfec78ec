"""An MQTT broker inside this process (amqtt), for the demo on a machine without mosquitto.

amqtt speaks MQTT 3.1.1 only: clients must connect with v3.1.1 (persistent sessions through
clean_session=False and a stable client id) and must not rely on `$share/...` subscriptions,
which it grants but never serves. It runs its asyncio loop on a daemon thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from firmware_sim.broker import free_port

# amqtt logs every connection and packet at INFO; the demo's own progress is what a user wants.
_NOISY_LOGGERS = ("amqtt", "transitions")


class EmbeddedBroker:
    """amqtt on 127.0.0.1:<free port>, started and stopped from synchronous code."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt", daemon=True)
        self._broker = None

    def start(self, timeout_s: float = 10.0) -> None:
        try:
            from amqtt.broker import Broker
        except ModuleNotFoundError:
            raise RuntimeError(
                "no MQTT broker: install mosquitto (apt-get install -y mosquitto), or amqtt for the "
                "embedded one (pip install 'edge-ttt[demo]'), or pass --broker HOST:PORT"
            ) from None
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._thread.start()

        async def start() -> None:
            self._broker = Broker(config, loop=self._loop)
            await self._broker.start()

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout_s)
            self._broker = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
