"""Value ranges that types carry (annotated-types' Gt, Ge, Lt, Le, Interval): read from a type,
checked and put in words one way, for the configuration's messages and the policies' own checks.
No pydantic here: the policies use it without a configuration."""

from __future__ import annotations

import math
import operator
import types
from collections.abc import Iterable
from typing import Annotated, Any, Union, get_args, get_origin

BOUNDS = {"gt": "greater than {}", "ge": "at least {}", "lt": "less than {}", "le": "at most {}"}
_HOLDS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def bounds_of(metadata: Iterable[Any]) -> dict[str, Any]:
    """The bounds that a type's metadata sets, by kind ('gt', 'ge', 'lt', 'le')."""
    return {k: getattr(m, k) for m in metadata for k in BOUNDS if getattr(m, k, None) is not None}


def hint_bounds(hint: Any) -> dict[str, Any]:
    """The bounds of an annotated type, also inside an optional one (`Annotated[float, Gt(0)] | None`)."""
    if get_origin(hint) is Annotated:
        return bounds_of(hint.__metadata__)
    if get_origin(hint) in (Union, types.UnionType):
        return {k: v for arg in get_args(hint) for k, v in hint_bounds(arg).items()}
    return {}


def describe(bounds: dict[str, Any]) -> str:
    """The bounds in words.

    >>> describe({"ge": 0.0, "le": 1.0}), describe({"gt": 0.0, "le": 1.0})
    ('between 0.0 and 1.0', 'greater than 0.0 and at most 1.0')
    """
    if "ge" in bounds and "le" in bounds:
        return f"between {bounds['ge']} and {bounds['le']}"
    return " and ".join(BOUNDS[k].format(v) for k, v in bounds.items())


def within(value: float, bounds: dict[str, Any]) -> bool:
    """Whether a finite `value` meets every bound (NaN and infinities never do)."""
    return math.isfinite(value) and all(_HOLDS[k](value, v) for k, v in bounds.items())
