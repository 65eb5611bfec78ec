"""What every config shares: TOML reading, the one place values are quoted, error lines, and the
imports that keep the transport's and the monitor's configs free of the adaptation code."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edge_ttt.config_file import ConfigError, TOMLDecodeError, parse_toml, read_toml
from edge_ttt.logs import RateLimitedLog, TextFormatter, show
from edge_ttt.monitor.config import load_monitor_config


def test_parse_toml_is_the_shim_for_every_reader():
    assert parse_toml('a = 1\n[b]\nc = "d"\n') == {"a": 1, "b": {"c": "d"}}
    with pytest.raises(TOMLDecodeError):
        parse_toml("a = \n")


def test_read_toml_says_what_is_wrong_with_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read the configuration \(.*\); check the path"):
        read_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("a = \n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML: .*; fix the syntax there"):
        read_toml(bad)


def test_show_quotes_python_or_toml_and_shortens():
    assert show("ab", toml=True) == "'ab'"
    assert show([True, "x"], toml=True) == '[true, "x"]'
    assert show([True, "x"]) == "[True, 'x']"
    assert show(b"EDGE") == "b'EDGE'"
    long = show("x" * 100, 40)
    assert len(long) == 40 and long.endswith("...")
    assert show(1.5) == "1.5" and len(show(list(range(100)), toml=True)) == 60


def test_the_monitor_config_says_what_to_fix_in_the_agent_configs_words(tmp_path):
    path = tmp_path / "monitor.toml"
    path.write_text('[collector]\ndataset = "fleet"\nflush_s = 0\nflsh = 1\n')
    with pytest.raises(ConfigError) as info:
        load_monitor_config(path)
    assert str(info.value).splitlines() == [
        f"{path}: collector.flush_s: must be greater than 0, got 0",
        f"{path}: collector.flsh: unknown key; did you mean 'flush_s'? allowed in collector: dataset, "
        "client_id, share_group, flush_summaries, flush_s, log_every_s",
    ]


def test_rate_limited_log_logs_a_kind_once_per_interval(caplog):
    logger = logging.getLogger("tests.rate_limited")
    warn = RateLimitedLog(logger, interval=3600)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert warn.warning("size", "frame dropped", fields={"device": "d"})
        assert not warn.warning("size", "frame dropped", fields={"device": "e"})
        assert warn.warning("crc", "rejected %d payloads", 3)
    first, second = caplog.records
    assert first.getMessage() == "frame dropped" and first.fields == {"kind": "size", "device": "d"}
    assert second.getMessage() == "rejected 3 payloads" and not hasattr(second, "fields")
    again = RateLimitedLog(logger, interval=0)
    assert again.warning("size", "x") and again.warning("size", "x")


def test_readable_log_lines_carry_the_fields_that_say_why():
    message = "status file not written"
    record = logging.LogRecord("edge_ttt.agent", logging.WARNING, __file__, 1, message, None, None)
    record.fields = {"file": "/var/lib/state/status.json", "error": "[Errno 28] No space left on device"}
    line = TextFormatter().format(record)
    assert line == (
        "WARNING edge_ttt.agent: status file not written file=/var/lib/state/status.json"
        ' error="[Errno 28] No space left on device"'
    )
    bare = logging.LogRecord("x", logging.INFO, __file__, 1, "connected", None, None)
    assert TextFormatter().format(bare) == "INFO x: connected"


@pytest.mark.parametrize(
    "module", ["edge_ttt.stream.mqtt", "edge_ttt.stream.topics", "edge_ttt.monitor.config"]
)
def test_transport_and_monitor_config_do_not_load_the_adaptation_code(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('edge_ttt.adapt')))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
