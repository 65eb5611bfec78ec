"""The agent configuration refused: each rule names its key, all problems at once, unreadable files."""

from __future__ import annotations

import pytest

from edge_ttt.adapt.policies import POLICY_TYPES
from edge_ttt.agent.config import load_config
from tests.agent_config_factory import AGENT, BASE, MODEL, problems, write

BROKEN = {
    "unknown top-level section": (
        BASE + "[mqqt]\nport = 1\n",
        ["mqqt: unknown key", "did you mean 'mqtt'", "agent, mqtt, model, queue"],
    ),
    "unknown key in a section": (
        BASE + "[mqtt]\nprot = 1884\n",
        ["mqtt.prot: unknown key", "did you mean 'port'", "host, port, client_id"],
    ),
    "unknown key in mqtt.tls": (
        BASE + '[mqtt.tls]\nca = "ca.pem"\n',
        ["mqtt.tls.ca: unknown key", "enabled, ca_file, cert_file, key_file, insecure"],
    ),
    "string for an integer": (
        BASE + '[mqtt]\nport = "1884"\n',
        ["mqtt.port: must be an integer, got '1884'"],
    ),
    "float for an integer": (BASE + "[queue]\nmax_frames = 1.5\n", ["queue.max_frames: must be an integer"]),
    "string for a flag": (
        BASE + '[logging]\njson = "yes"\n',
        ["logging.json: must be true or false, got 'yes'"],
    ),
    "string for a number": (
        BASE + '[status]\ninterval_s = "10"\n',
        ["status.interval_s: must be a number, got '10'"],
    ),
    "value for a table": ("mqtt = 5\n" + BASE, ["mqtt: must be a table, got 5"]),
    "port out of range": (
        BASE + "[mqtt]\nport = 70000\n",
        ["mqtt.port: must be between 1 and 65535, got 70000"],
    ),
    "qos out of range": (
        BASE + "[predictions]\nqos = 2\n",
        ["predictions.qos: must be between 0 and 1, got 2"],
    ),
    "threads below 1": (
        AGENT + MODEL + "threads = 0\n",
        ["model.threads: must be between 1 and 1024, got 0"],
    ),
    "negative reorder": (
        BASE + "[windowing]\nreorder_frames = -1\n",
        ["windowing.reorder_frames: must be at least 0"],
    ),
    "zero interval": (
        BASE + "[state]\ncheckpoint_interval_s = 0\n",
        ["state.checkpoint_interval_s: must be greater"],
    ),
    "bad protocol": (BASE + '[mqtt]\nprotocol = "v4"\n', ["mqtt.protocol: must be 'v5' or 'v311', got 'v4'"]),
    "bad device": (
        AGENT + MODEL + 'device = "gpu"\n',
        ["model.device: must be 'auto', 'cpu' or 'cuda', got 'gpu'"],
    ),
    "bad when_full": (BASE + '[queue]\nwhen_full = "drop"\n', ["queue.when_full: must be 'drop_oldest' or"]),
    "bad log level": (
        BASE + '[logging]\nlevel = "verbose"\n',
        ["logging.level: must be 'debug', 'info', 'warning'"],
    ),
    "both password sources": (
        BASE + '[mqtt]\npassword_env = "PW"\npassword_file = "pw.txt"\n',
        ["mqtt.password_file: set mqtt.password_env or mqtt.password_file, not both"],
    ),
    "password in the config": (
        BASE + '[mqtt]\npassword = "hunter2"\n',
        ["mqtt.password: a password is never written", "mqtt.password_env", "mqtt.password_file"],
    ),
    "password_env is not a variable name": (
        BASE + '[mqtt]\npassword_env = "hunter2!"\n',
        ["mqtt.password_env: must be the name of an environment variable"],
    ),
    "missing agent.id": (
        MODEL + '[agent]\nname = "a"\n',
        ["agent.id: required, but missing", "agent.name: unknown"],
    ),
    "missing agent section": (MODEL, ["agent.id: required, but missing"]),
    "missing artifacts": (AGENT + "[model]\n", ["model.artifacts: required, but missing"]),
    "bad agent id": ('[agent]\nid = "a/b"\n' + MODEL, ["agent.id: 'a/b' may contain only letters, digits"]),
    "empty client id": (BASE + '[mqtt]\nclient_id = ""\n', ["mqtt.client_id: must not be empty"]),
    "prefix with trailing slash": (BASE + '[mqtt]\nprefix = "edge/"\n', ["mqtt.prefix: 'edge/' must be"]),
    "prefix with a wildcard": (BASE + '[mqtt]\nprefix = "edge/+"\n', ["mqtt.prefix: 'edge/+' must be"]),
    "sensor topic without stream": (
        BASE + '[mqtt]\nsensor_topic = "{prefix}/{device}/dt"\n',
        ["mqtt.sensor_topic: '{prefix}/{device}/dt' lacks {stream}"],
    ),
    "sensor topic with a wildcard": (
        BASE + '[mqtt]\nsensor_topic = "{prefix}/{device}/{stream}/#"\n',
        ["mqtt.sensor_topic:", "wildcard"],
    ),
    "placeholder inside a level": (
        BASE + '[mqtt]\nsensor_topic = "{prefix}/{device}-{stream}"\n',
        ["mqtt.sensor_topic:", "placeholders fill a whole level"],
    ),
    "unknown placeholder": (
        BASE + '[predictions]\ntopic = "{prefix}/{site}/{device}"\n',
        ["predictions.topic:", "'{site}' is not a placeholder", "{prefix}, {device}"],
    ),
    "prediction topic without device": (
        BASE + '[predictions]\ntopic = "{prefix}/pred"\n',
        ["predictions.topic: '{prefix}/pred' lacks {device}"],
    ),
    "status topic without agent": (
        BASE + '[status]\ntopic = "{prefix}/status"\n',
        ["status.topic:", "{agent}"],
    ),
    "prediction topic under the subscription": (
        BASE + '[predictions]\ntopic = "{prefix}/{device}/dt/pred"\n',
        ["predictions: topic '{prefix}/{device}/dt/pred' can match mqtt.sensor_topic", "own messages"],
    ),
    "status topic under the subscription": (
        '[agent]\nid = "dt"\n' + MODEL,
        ["status: topic '{prefix}/agents/{agent}/status' can match mqtt.sensor_topic"],
    ),
    "bad policy": (
        AGENT + MODEL + 'policy = "tnet"\n',
        [f"model.policy: unknown policy 'tnet'; choose one of {', '.join(POLICY_TYPES)}"],
    ),
    "misspelt steady option": (
        AGENT + MODEL + "options = { lrr = 1e-4 }\n",
        ["model.options.lrr: unknown key; did you mean 'lr'?", "stat_momentum"],
    ),
    "wrong type of a steady option": (
        AGENT + MODEL + "[model.options]\ncollapse_horizon = 1.5\n",
        ["model.options.collapse_horizon: must be an integer, got 1.5"],
    ),
    "steady momentum out of range": (
        AGENT + MODEL + "[model.options]\nstat_momentum = 2\n",
        ["model.options.stat_momentum: must be greater than 0.0 and at most 1.0, got 2"],
    ),
    "steady share below 0": (
        AGENT + MODEL + "[model.options]\nanchor = -0.1\n",
        ["model.options.anchor: must be between 0.0 and 1.0, got -0.1"],
    ),
    "steady learning rate not finite": (
        AGENT + MODEL + "[model.options]\nlr = inf\n",
        ["model.options.lr: must be a finite number, got Infinity"],
    ),
    "steady horizon of no windows": (
        AGENT + MODEL + "[model.options]\ncollapse_horizon = 0\n",
        ["model.options.collapse_horizon: must be at least 1, got 0"],
    ),
    "optional option out of range": (
        AGENT + MODEL + 'policy = "norm"\noptions = { prior_windows = 0 }\n',
        ["model.options.prior_windows: must be greater than 0.0, got 0"],
    ),
    "unmix-tns spread of the whole variance": (
        AGENT + MODEL + 'policy = "unmix-tns"\noptions = { spread = 1.0 }\n',
        ["model.options.spread: must be at least 0.0 and less than 1.0, got 1.0"],
    ),
    "option another policy does not take": (
        AGENT + MODEL + 'policy = "tent"\noptions = { lr = 1e-3, momentum = 0.9 }\n',
        ["model.options.momentum: unknown key; allowed in model.options: lr"],
    ),
    "backoff minimum above maximum": (
        BASE + "[mqtt]\nreconnect_min_s = 10\nreconnect_max_s = 5\n",
        ["mqtt.reconnect_max_s: must be at least mqtt.reconnect_min_s (10.0), got 5.0"],
    ),
    "backoff minimum above the default maximum": (
        BASE + "[mqtt]\nreconnect_min_s = 120\n",
        ["mqtt.reconnect_max_s: must be at least mqtt.reconnect_min_s (120.0), got 60.0"],
    ),
    "TLS certificate without key": (
        BASE + '[mqtt.tls]\ncert_file = "client.pem"\n',
        ["mqtt.tls.key_file: missing: mqtt.tls.cert_file is set"],
    ),
    "TLS key without certificate": (
        BASE + '[mqtt.tls]\nkey_file = "client.key"\n',
        ["mqtt.tls.key_file: set without mqtt.tls.cert_file"],
    ),
    "TLS file missing": (
        BASE + '[mqtt.tls]\nenabled = true\nca_file = "ca.pem"\n',
        ["mqtt.tls.ca_file: file ", "ca.pem does not exist"],
    ),
    "password file missing": (
        BASE + '[mqtt]\npassword_file = "pw.txt"\n',
        ["mqtt.password_file: file ", "pw.txt does not exist"],
    ),
    "TOML syntax error": (AGENT + "[model]\nartifacts = \n", ["invalid TOML", "line 4"]),
    "a host longer than any DNS name": (BASE + f'[mqtt]\nhost = "{"h" * 5000}"\n', ["mqtt.host:", "253"]),
    "threads beyond any machine": (AGENT + MODEL + "threads = 99999999999999999999\n", ["model.threads"]),
    "spool in the state directory": (
        BASE + '[state]\ndir = "st"\n[drift]\nspool_dir = "st"\n',
        ["drift.spool_dir is state.dir", "give the spool a directory of its own"],
    ),
    "spool inside the bundle": (
        BASE + '[drift]\nspool_dir = "bundle/spool"\n',
        ["drift.spool_dir ", "bundle/spool is inside model.artifacts; give the spool a directory of its own"],
    ),
    "stop timeout of inf": (BASE + "[state]\nstop_timeout_s = inf\n", ["state.stop_timeout_s:", "finite"]),
    "status interval of inf": (BASE + "[status]\ninterval_s = inf\n", ["status.interval_s:", "finite"]),
}


@pytest.mark.parametrize(("text", "expected"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_config_names_the_key(tmp_path, text, expected):
    message = problems(write(tmp_path, text))
    for part in expected:
        assert part in message


def test_all_problems_in_one_message(tmp_path):
    text = '[agent]\nid = "a b"\n[mqtt]\nport = 0\nprot = 1\n[model]\npolicy = "x"\n[queue]\nmax_frames = 0\n'
    lines = problems(write(tmp_path, text)).splitlines()
    keys = [line.split(": ")[1] for line in lines]
    assert sorted(keys) == sorted(
        ["agent.id", "mqtt.port", "mqtt.prot", "model.artifacts", "model.policy", "queue.max_frames"]
    )


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.toml"
    assert "cannot read the configuration" in problems(missing)
    (tmp_path / "latin1.toml").write_bytes(b'[agent]\nid = "\xe9"\n')
    assert "not UTF-8" in problems(tmp_path / "latin1.toml")


def test_a_byte_order_mark_is_read_past(tmp_path):
    """Windows editors write one; it is not a TOML statement."""
    plain = write(tmp_path, BASE)
    marked = write(tmp_path, "", name="bom.toml")
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_config(marked) == load_config(plain)


def test_state_and_spool_directories_the_agent_cannot_write_are_refused_at_load(tmp_path, small_disk):
    import os

    (tmp_path / "blocker").write_text("a file where the state directory should be")
    message = problems(write(tmp_path, BASE + '[state]\ndir = "blocker"\n'))
    assert "state.dir: " in message and "is a file, not a directory" in message
    locked = tmp_path / "locked"
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount refuses it
        small_disk(locked, "64k", read_only=True)
    else:
        locked.mkdir()
        locked.chmod(0o555)
    try:
        text = BASE + '[state]\ndir = "locked/state"\n[drift]\nspool_dir = "locked/spool"\n'
        message = problems(write(tmp_path, text))
        assert "state.dir: " in message and "drift.spool_dir: " in message
        assert f"{locked} cannot be written by this user" in message
        assert "point this at a writable directory" in message
        unchecked = load_config(write(tmp_path, text), check_files=False)  # `edge-ttt health` elsewhere
        assert unchecked.state.dir == locked / "state"
    finally:
        if os.geteuid() != 0:
            locked.chmod(0o755)
