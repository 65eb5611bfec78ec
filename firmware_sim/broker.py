"""A private mosquitto on a free loopback port, for tests, benchmarks and local simulation."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

from firmware_sim.children import child_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_address(value: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); ValueError with an example otherwise."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None
    )


class Broker:
    """mosquitto on 127.0.0.1:<port>; `restart` keeps the port (a broker that went down and came back)."""

    def __init__(self, workdir: Path, listener_options: str = "", anonymous: bool = True) -> None:
        """`listener_options`: mosquitto lines for the listener (TLS files, password_file...)."""
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does)")
        self.binary = binary
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.config.write_text(
            # `user`: started as root, mosquitto would switch to its own user and could no longer read
            # the key files of a test's private directory; as anyone else the setting does nothing.
            f"user {getpass.getuser()}\n"
            f"per_listener_settings false\nallow_anonymous {str(anonymous).lower()}\npersistence false\n"
            f"log_dest none\nlistener {self.port} 127.0.0.1\n{listener_options}\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:  # its own warnings (e.g. about running as root) go there
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=log, **child_options()
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    tail = self.log.read_text(errors="replace").strip()[-500:]
                    raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {tail}") from None
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self, kill: bool = False) -> None:
        """Terminate (or, with `kill`, SIGKILL: a crash) and wait."""
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill)
        self.start()
