"""MQTT topic patterns: placeholders as whole levels, the subscription, reading a topic back."""

from __future__ import annotations

import pytest

from edge_ttt.stream.topics import check_pattern, levels, may_overlap, parse_topic, subscription

SENSOR = levels("{prefix}/{device}/dt/{stream}", prefix="site/a")


def test_levels_fill_the_given_placeholders_and_keep_the_others():
    assert SENSOR == ["site", "a", "{device}", "dt", "{stream}"]
    assert levels("{prefix}/agents/{agent}", prefix="p", agent="x") == ["p", "agents", "x"]


def test_subscription_and_parse_topic_agree():
    assert subscription(SENSOR) == "site/a/+/dt/+"
    assert parse_topic(SENSOR, "site/a/w1/dt/0") == ("w1", "0")
    assert parse_topic(SENSOR, "site/a/w1/dt") is None
    assert parse_topic(SENSOR, "site/b/w1/dt/0") is None
    assert parse_topic(SENSOR, "site/a//dt/0") is None  # an empty level names no device


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{prefix}//{device}", "has an empty level"),
        ("{prefix}/{device}/#", "contains a wildcard"),
        ("{prefix}/{device}/{device}", "uses {device} twice"),
        ("{prefix}/x", "lacks {device}"),
        ("{prefix}/d-{device}", "is not a placeholder"),
    ],
)
def test_check_pattern_refuses_with_the_fix(pattern, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_pattern(pattern, ("device",))
    assert check_pattern("{prefix}/{device}/pred", ("device",)) == "{prefix}/{device}/pred"


def test_may_overlap_treats_placeholders_as_any_level():
    assert may_overlap(["site", "a", "{device}", "dt", "x"], SENSOR)
    assert may_overlap(["site", "{agent}", "w1", "dt", "{stream}"], SENSOR)
    assert not may_overlap(["p", "{device}", "pred"], SENSOR)
