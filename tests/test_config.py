"""The agent configuration: example configs, defaults, paths, secrets, policy options, topics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_ttt.adapt.policies import DEFAULT_POLICY, Steady
from edge_ttt.agent.config import AgentConfig, load_config
from edge_ttt.agent.policy_options import policy_options
from edge_ttt.config_file import ConfigError
from tests.agent_config_factory import AGENT, BASE, MODEL, problems, write

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

DEFAULT_MQTT_PORT = 1883  # the default of mqtt.port; these tests never connect


def test_sim_config_loads_with_checks():
    cfg = load_config(CONFIGS / "sim.toml")
    assert cfg.agent.id == "sim-agent"
    # the example's broker address (a config file only: nothing connects here)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.protocol) == ("127.0.0.1", DEFAULT_MQTT_PORT, "v5")
    assert cfg.mqtt.client_id == "edge-ttt-sim-agent"
    assert not cfg.mqtt.tls.enabled
    assert cfg.mqtt.password() is None
    assert cfg.model.artifacts == (CONFIGS.parent / "runs" / "cnn-bn").resolve()
    assert cfg.state.dir == (CONFIGS.parent / "runs" / "state").resolve()
    assert (cfg.model.policy, cfg.model.device, cfg.model.options) == ("steady", "cpu", {})
    assert cfg.logging.json_lines is False


def test_jetson_config_loads_without_file_checks():
    cfg = load_config(CONFIGS / "jetson.toml", check_files=False)
    assert cfg.model.device in ("auto", "cuda")
    assert cfg.model.artifacts == Path("/var/lib/edge-ttt/bundles/cnn-bn")
    assert cfg.state.dir == Path("/var/lib/edge-ttt/state")
    tls = cfg.mqtt.tls
    assert tls.enabled and not tls.insecure
    assert tls.ca_file == Path("/etc/edge-ttt/tls/ca.pem")
    assert tls.cert_file is not None and tls.key_file is not None
    assert cfg.mqtt.password_env == "EDGE_TTT_MQTT_PASSWORD" and cfg.mqtt.password_file is None
    assert cfg.mqtt.port == 8883
    assert cfg.logging.json_lines is True


def test_jetson_config_with_file_checks_names_the_tls_files():
    if Path("/etc/edge-ttt/tls/ca.pem").exists():
        pytest.skip("this machine has the Jetson's TLS files")
    message = problems(CONFIGS / "jetson.toml")
    assert "mqtt.tls.ca_file: file /etc/edge-ttt/tls/ca.pem does not exist" in message


def test_example_configs_set_every_section():
    for name in ("sim.toml", "jetson.toml"):
        text = (CONFIGS / name).read_text()
        for section in [*AgentConfig.model_fields, "mqtt.tls", "model.options"]:
            assert f"[{section}]" in text, f"{name} lacks [{section}]"


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    mqtt = cfg.mqtt
    # the defaults (nothing connects here)
    assert (mqtt.host, mqtt.port, mqtt.client_id, mqtt.protocol) == (
        "127.0.0.1",
        DEFAULT_MQTT_PORT,
        "edge-ttt-a",
        "v5",
    )
    assert (mqtt.keepalive_s, mqtt.session_expiry_s, mqtt.qos) == (30, 3600, 1)
    assert (mqtt.reconnect_min_s, mqtt.reconnect_max_s) == (1.0, 60.0)
    assert (mqtt.prefix, mqtt.sensor_topic) == ("edge-ttt", "{prefix}/{device}/dt/{stream}")
    assert (mqtt.username, mqtt.password_env, mqtt.password_file) == (None, None, None)
    assert mqtt.tls.model_dump() == {
        "enabled": False,
        "ca_file": None,
        "cert_file": None,
        "key_file": None,
        "insecure": False,
    }
    assert cfg.model.artifacts == tmp_path / "bundle"
    assert (cfg.model.policy, cfg.model.device, cfg.model.threads) == (DEFAULT_POLICY, "auto", 1)
    assert cfg.model.options == {}
    assert cfg.queue.model_dump() == {
        "max_frames": 10000,
        "when_full": "drop_oldest",
        "max_frame_bytes": 65536,
        "max_bytes": 16 * 2**20,
    }
    assert cfg.windowing.reorder_frames == 4
    assert (cfg.predictions.topic, cfg.predictions.qos, cfg.predictions.batch) == (
        "{prefix}/{device}/pred",
        1,
        1,
    )
    assert (cfg.status.topic, cfg.status.interval_s) == ("{prefix}/agents/{agent}/status", 10.0)
    assert (cfg.state.dir, cfg.state.checkpoint_interval_s) == (tmp_path / "state", 300.0)
    assert (cfg.logging.level, cfg.logging.json_lines) == ("info", True)


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    with pytest.raises(ValidationError):
        cfg.mqtt.port = 1884  # type: ignore[misc]


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    for name in ("ca.pem", "client.pem", "client.key", "pw.txt"):
        write(conf, "x\n", f"secrets/{name}")
    text = AGENT + (
        '[model]\nartifacts = "../bundles/cnn-bn"\n'
        '[state]\ndir = "state"\n'
        '[mqtt]\npassword_file = "secrets/pw.txt"\n'
        '[mqtt.tls]\nenabled = true\nca_file = "secrets/ca.pem"\n'
        'cert_file = "secrets/client.pem"\nkey_file = "/abs/client.key"\n'
    )
    write(conf, text)
    monkeypatch.chdir(write(tmp_path, "", "elsewhere/.keep").parent)
    message = problems(Path("../conf/agent.toml"))  # the absolute key file does not exist
    assert message.endswith(
        "mqtt.tls.key_file: file /abs/client.key does not exist; correct the path or install the file there"
    )

    write(conf, text.replace("/abs/client.key", "secrets/client.key"))
    cfg = load_config(Path("../conf/agent.toml"))
    assert cfg.model.artifacts == tmp_path / "bundles" / "cnn-bn"
    assert cfg.state.dir == conf / "state"
    assert cfg.mqtt.password_file == conf / "secrets" / "pw.txt"
    assert cfg.mqtt.tls.ca_file == conf / "secrets" / "ca.pem"
    assert cfg.mqtt.tls.key_file == conf / "secrets" / "client.key"


def test_password_from_env_is_read_at_connect_time(tmp_path, monkeypatch):
    cfg = load_config(write(tmp_path, BASE + '[mqtt]\nusername = "u"\npassword_env = "EDGE_TTT_TEST_PW"\n'))
    monkeypatch.delenv("EDGE_TTT_TEST_PW", raising=False)
    with pytest.raises(
        ConfigError, match=r"mqtt.password_env: environment variable EDGE_TTT_TEST_PW is not set"
    ):
        cfg.mqtt.password()
    monkeypatch.setenv("EDGE_TTT_TEST_PW", "s3cret-from-env")
    assert cfg.mqtt.password() == "s3cret-from-env"
    assert_no_secret(cfg, "s3cret-from-env")


def test_password_from_file(tmp_path):
    secret = write(tmp_path, "s3cret-from-file\n", "pw.txt")
    cfg = load_config(write(tmp_path, BASE + '[mqtt]\npassword_file = "pw.txt"\n'))
    assert cfg.mqtt.password() == "s3cret-from-file"
    assert_no_secret(cfg, "s3cret-from-file")
    secret.unlink()
    with pytest.raises(ConfigError, match=rf"mqtt.password_file: cannot read {secret}"):
        cfg.mqtt.password()
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        cfg.mqtt.password()


def assert_no_secret(cfg: AgentConfig, secret: str) -> None:
    for text in (repr(cfg), str(cfg), repr(cfg.mqtt), str(cfg.model_dump()), cfg.model_dump_json()):
        assert secret not in text


def test_a_misplaced_password_is_never_echoed(tmp_path):
    for text in ('[mqtt]\npassword = "hunter2"\n', '[mqtt]\npassword_env = "hunter2"\n'):
        path = write(tmp_path, BASE + text.replace('"hunter2"', '"hunter2 x"'))
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "hunter2" not in str(info.value)
        assert info.value.__context__ is None and info.value.__cause__ is None


def test_valid_policy_options_reach_the_policy(tmp_path):
    cfg = load_config(write(tmp_path, AGENT + MODEL + "[model.options]\nlr = 1e-3\ncollapse_horizon = 32\n"))
    assert cfg.model.options == {"lr": 1e-3, "collapse_horizon": 32}
    assert Steady.Options(**cfg.model.options).collapse_horizon == 32
    steady_fields = {f.name for f in dataclasses.fields(Steady.Options)}
    assert set(policy_options("steady").model_fields) == steady_fields | {"episodic"}
    assert set(policy_options("source").model_fields) == set()


def test_episodic_and_auxiliary_step_options_are_checked_on_load(tmp_path):
    """Every gradient policy takes `episodic`; a policy without gradient steps refuses it."""
    text = 'policy = "ttt"\n[model.options]\nepisodic = true\nlr = 1e-4\nsteps = 3\nstats = "source"\n'
    cfg = load_config(write(tmp_path, AGENT + MODEL + text))
    assert cfg.model.options == {"episodic": True, "lr": 1e-4, "steps": 3, "stats": "source"}
    for policy in ("tent", "sar", "steady", "ttt"):
        assert policy_options(policy).model_validate({"episodic": True}).episodic is True
    with pytest.raises(ConfigError, match="episodic"):
        load_config(write(tmp_path, AGENT + MODEL + 'policy = "norm"\n[model.options]\nepisodic = true\n'))
    with pytest.raises(ConfigError, match="stats"):
        load_config(write(tmp_path, AGENT + MODEL + 'policy = "ttt"\n[model.options]\nstats = "batch"\n'))


def test_policy_option_values_are_checked_on_load_not_at_start(tmp_path):
    """A value of the right type that the policy refuses (a range, options that must go together)
    is a config error naming model.options, before any bundle is loaded."""
    for options, message in [
        ("step_every = 0", "model.options.step_every: must be at least 1, got 0"),
        ("watch_every = 3", "model.options: snapshot_every (32) must be a multiple of watch_every (3)"),
        ("class_correction = 1.5", "model.options.class_correction: must be between 0.0 and 1.0, got 1.5"),
        ("relax_from = 3.0", "model.options: relax_to (2.0) must be at least relax_from (3.0)"),
        ("relax_to = -1.0", "model.options.relax_to: must be at least 0, got -1.0"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, AGENT + MODEL + f"[model.options]\n{options}\n"), check_files=False)
        assert message in str(info.value)
    cfg = load_config(write(tmp_path, AGENT + MODEL + "[model.options]\nstep_every = 2\nepisodic = false\n"))
    assert cfg.model.options == {"step_every": 2, "episodic": False}


def test_a_tuple_option_takes_a_toml_array(tmp_path):
    """TOML has arrays, not tuples: `note`'s `lengths` (a tuple) is written as one, and its
    elements are still checked."""
    note = 'policy = "note"\n[model.options]\n'
    cfg = load_config(write(tmp_path, AGENT + MODEL + note + "lengths = [128, 64, 32]\n"), check_files=False)
    assert cfg.model.options == {"lengths": [128, 64, 32]}
    with pytest.raises(ConfigError, match=r"model.options.lengths.1: must be an integer, got 'x'"):
        load_config(write(tmp_path, AGENT + MODEL + note + 'lengths = [128, "x", 32]\n'), check_files=False)
    with pytest.raises(ConfigError, match=r"model.options.lengths"):
        load_config(write(tmp_path, AGENT + MODEL + note + "lengths = 128\n"), check_files=False)


def mqtt_filter_matches(subscription: str, topic: str) -> bool:
    """MQTT's rule for '+' (the only wildcard a subscription here uses)."""
    sub, top = subscription.split("/"), topic.split("/")
    return len(sub) == len(top) and all(s in ("+", t) for s, t in zip(sub, top, strict=True))


@pytest.mark.parametrize(
    ("mqtt", "subscription", "topic", "parsed"),
    [
        ("", "edge-ttt/+/dt/+", "edge-ttt/watch-7/dt/imu", ("watch-7", "imu")),
        ('prefix = "plant/3"', "plant/3/+/dt/+", "plant/3/w1/dt/acc", ("w1", "acc")),
        ('sensor_topic = "s/{stream}/{device}"', "s/+/+", "s/acc/w1", ("w1", "acc")),
    ],
)
def test_sensor_topic_pattern(tmp_path, mqtt, subscription, topic, parsed):
    cfg = load_config(write(tmp_path, BASE + f"[mqtt]\n{mqtt}\n"))
    assert cfg.mqtt.subscription() == subscription
    assert cfg.mqtt.parse_topic(topic) == parsed
    device, stream = parsed
    again = cfg.mqtt.sensor_topic.format(prefix=cfg.mqtt.prefix, device=device, stream=stream)
    assert again == topic
    assert mqtt_filter_matches(subscription, topic)


@pytest.mark.parametrize(
    "topic",
    [
        "edge-ttt/w1/dt",
        "edge-ttt/w1/dt/imu/extra",
        "other/w1/dt/imu",
        "edge-ttt/w1/pred",
        "edge-ttt/w1/xx/imu",
        "edge-ttt//dt/imu",
        "edge-ttt/w1/dt/",
        "",
    ],
)
def test_topics_that_do_not_fit_parse_to_none(tmp_path, topic):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.mqtt.parse_topic(topic) is None


def test_publish_topics(tmp_path):
    cfg = load_config(write(tmp_path, BASE + '[mqtt]\nprefix = "plant/3"\n'))
    assert cfg.prediction_topic("w1") == "plant/3/w1/pred"
    assert cfg.status_topic() == "plant/3/agents/a/status"
    assert cfg.mqtt.parse_topic(cfg.prediction_topic("w1")) is None
    assert cfg.mqtt.parse_topic(cfg.status_topic()) is None


def test_a_queue_byte_bound_below_one_frame_is_refused(tmp_path):
    from tests.agent_config_factory import BASE, problems, write

    path = write(tmp_path, BASE + "[queue]\nmax_frame_bytes = 1000\nmax_bytes = 999\n")
    assert "raise max_bytes or lower max_frame_bytes" in problems(path)
