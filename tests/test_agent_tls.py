"""TLS and password authentication against a mosquitto that requires both."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from edge_ttt.agent import Agent
from edge_ttt.agent.config import load_config
from firmware_sim.broker import Broker
from tests.agent_harness import write_config

PASSWORD = "s3cret-Pa55"


def sh(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Path:
    """In `d`: ca.crt, server.crt and server.key for 127.0.0.1, and passwd (user edge)."""
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("openssl and mosquitto_passwd are needed (apt-get install -y openssl mosquitto)")
    d.mkdir()
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
       "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
       "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=d)  # fmt: skip
    sh("mosquitto_passwd", "-b", "-c", "passwd", "edge", PASSWORD, cwd=d)
    return d


@pytest.fixture
def secure_broker(tmp_path: Path):
    """A CA, a server certificate for 127.0.0.1, a password file, and a broker requiring them."""
    d = make_pki(tmp_path / "pki")
    options = "\n".join(
        [
            f"cafile {d / 'ca.crt'}",
            f"certfile {d / 'server.crt'}",
            f"keyfile {d / 'server.key'}",
            f"password_file {d / 'passwd'}",
        ]
    )
    broker = Broker(tmp_path, listener_options=options, anonymous=False)
    broker.start()
    try:
        yield broker, d
    finally:
        broker.stop()


def tls_config(tmp_path: Path, bundle_dir: Path, port: int, pki: Path) -> Path:
    mqtt = 'username = "edge"\npassword_env = "EDGE_TTT_TEST_PASSWORD"\n'
    mqtt += f'[mqtt.tls]\nenabled = true\nca_file = "{pki / "ca.crt"}"'
    return write_config(tmp_path, bundle_dir, port, mqtt=mqtt)


def test_agent_connects_over_tls_with_a_password_from_the_environment(
    tmp_path, bundle_dir, secure_broker, monkeypatch, caplog
):
    broker, pki = secure_broker
    monkeypatch.setenv("EDGE_TTT_TEST_PASSWORD", PASSWORD)
    agent = Agent(load_config(tls_config(tmp_path, bundle_dir, broker.port, pki)))
    thread = threading.Thread(target=agent.run, daemon=True)
    with caplog.at_level(logging.DEBUG):
        thread.start()
        try:
            assert agent.transport.connected.wait(15), "no TLS connection"
        finally:
            agent.stop_event.set()
            thread.join(10)
    assert PASSWORD not in caplog.text


def test_a_wrong_password_is_refused_and_never_logged(
    tmp_path, bundle_dir, secure_broker, monkeypatch, caplog
):
    broker, pki = secure_broker
    monkeypatch.setenv("EDGE_TTT_TEST_PASSWORD", "wrong-" + PASSWORD)
    agent = Agent(load_config(tls_config(tmp_path, bundle_dir, broker.port, pki)))
    thread = threading.Thread(target=agent.run, daemon=True)
    with caplog.at_level(logging.DEBUG):
        thread.start()
        try:
            assert not agent.transport.connected.wait(3)
        finally:
            agent.stop_event.set()
            thread.join(10)
    assert "refused" in caplog.text
    assert PASSWORD not in caplog.text


def test_tls_files_that_cannot_be_used_are_one_config_error_naming_the_fix(tmp_path, bundle_dir):
    """Before, a CA file that is no certificate, a key of another certificate or a key with a
    passphrase ended `run` and `collect` in an SSLError traceback, or OpenSSL's prompt on a terminal."""
    from edge_ttt.config_file import ConfigError
    from edge_ttt.stream.mqtt import make_client

    pki = make_pki(tmp_path / "pki")
    (pki / "junk.pem").write_text("not a certificate\n")
    sh("openssl", "genrsa", "-aes256", "-passout", "pass:secret", "-out", "locked.key", "2048", cwd=pki)
    cases = {
        "junk CA": f'ca_file = "{pki / "junk.pem"}"',
        "key of another certificate": f'cert_file = "{pki / "server.crt"}"\nkey_file = "{pki / "ca.key"}"',
        "key with a passphrase": f'cert_file = "{pki / "server.crt"}"\nkey_file = "{pki / "locked.key"}"',
    }
    for name, lines in cases.items():
        (tmp_path / name.replace(" ", "-")).mkdir()
        config = write_config(
            tmp_path / name.replace(" ", "-"),
            bundle_dir,
            1,
            mqtt=f"[mqtt.tls]\nenabled = true\n{lines}",  # never dialled
        )
        with pytest.raises(ConfigError, match=r"^mqtt\.tls: the TLS files cannot be used .*Fix: ") as refused:
            make_client(load_config(config).mqtt, "edge-ttt-test")
        assert "Traceback" not in str(refused.value), name
