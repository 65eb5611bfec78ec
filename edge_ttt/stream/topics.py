"""MQTT topic patterns: '{prefix}/{device}/dt/{stream}' and the like, checked, filled and matched.

A placeholder is a whole topic level, so that a subscription can put MQTT's '+' in its place and a
received topic can be read back into (device, stream) level by level.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

WILDCARDS = ("{device}", "{stream}")


def levels(pattern: str, **values: str) -> list[str]:
    """Topic levels of a pattern with the given placeholders filled in; the others stay '{name}'."""
    filled = {f"{{{name}}}": value for name, value in values.items()}
    return [level for part in pattern.split("/") for level in filled.get(part, part).split("/")]


def check_pattern(pattern: str, required: tuple[str, ...]) -> str:
    """Placeholders are whole levels (so '+' can stand in for them), each used once."""
    allowed = [f"{{{name}}}" for name in ("prefix", *required)]
    parts = pattern.split("/")
    if "" in parts:
        raise ValueError(f"{pattern!r} has an empty level; remove the leading, trailing or doubled '/'")
    for level in parts:
        if "+" in level or "#" in level:
            raise ValueError(f"{pattern!r} contains a wildcard ('+' or '#'); write placeholders instead")
        if ("{" in level or "}" in level) and level not in allowed:
            raise ValueError(
                f"{pattern!r}: level {level!r} is not a placeholder; placeholders fill a whole level "
                f"and are {', '.join(allowed)}"
            )
    for name in allowed:
        if parts.count(name) > 1:
            raise ValueError(f"{pattern!r} uses {name} twice; use it once")
    missing = [name for name in allowed[1:] if name not in parts]
    if missing:
        raise ValueError(f"{pattern!r} lacks {' and '.join(missing)}; add it as a level of its own")
    return pattern


def topic_pattern(*required: str) -> Any:
    """A topic-pattern field type whose placeholders must include `required`."""
    return Annotated[str, AfterValidator(lambda value: check_pattern(value, required))]


def level_problem(value: str) -> str | None:
    """Why `value` cannot fill one topic level (None: it can): MQTT topic levels are non-empty here
    (an empty one fits no '+' of ours), hold no '/' (the level separator), no wildcard, no NUL.

    >>> [level_problem(v) for v in ("watch-06", "a/b", "")]
    [None, "it holds '/'", 'it is empty']
    """
    if not value:
        return "it is empty"
    for char in ("/", "+", "#", "\0"):
        if char in value:
            return f"it holds {char!r}"
    return None


DeviceTopic = topic_pattern("device")
AgentTopic = topic_pattern("agent")
SensorTopic = topic_pattern("device", "stream")


def may_overlap(a: list[str], b: list[str]) -> bool:
    """Whether one topic can fit both level lists ('{...}' levels fit any one level)."""
    return len(a) == len(b) and all(
        x == y or x.startswith("{") or y.startswith("{") for x, y in zip(a, b, strict=True)
    )


def subscription(sensor_levels: list[str]) -> str:
    """The filter that receives every device's streams: '+' for both placeholders."""
    return "/".join("+" if level in WILDCARDS else level for level in sensor_levels)


def parse_topic(sensor_levels: list[str], topic: str) -> tuple[str, str] | None:
    """(device, stream) of a topic that fits the sensor topic's levels, else None."""
    parts = topic.split("/")
    if len(parts) != len(sensor_levels):
        return None
    found = {}
    for level, part in zip(sensor_levels, parts, strict=True):
        if level in WILDCARDS and part:
            found[level] = part
        elif level != part:
            return None
    return found["{device}"], found["{stream}"]
