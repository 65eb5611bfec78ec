"""The options of a policy as a strict model, so that a config file or a command line is checked
on load against the policy's own `Options` (names, types, ranges; no NaN or infinity)."""

from __future__ import annotations

import dataclasses
from functools import cache
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, Strict, create_model

from edge_ttt.adapt.policies import POLICY_TYPES
from edge_ttt.config_file import Section


def _arrays_as_tuples(hint: Any) -> Any:
    """A tuple option (`note`'s `lengths`) as one that takes a TOML array: strict validation
    refuses a list where a tuple is declared, and TOML has no tuples."""
    kinds = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    return Annotated[hint, Strict(False)] if any(get_origin(k) is tuple for k in kinds) else hint


def check_option_values(policy: str, options: dict[str, Any]) -> None:
    """The values' own checks, beyond their types (ranges, options that must go together): the
    policy's `Options` made from them, or its ValueError. `episodic` is the engine's, not the
    policy's."""
    POLICY_TYPES[policy].Options(**{k: v for k, v in options.items() if k != "episodic"})


@cache
def policy_options(policy: str) -> type[BaseModel]:
    """The options a policy takes, as a strict model, so that a misspelt option fails on load:
    the fields of its `Options`, and `episodic` for every gradient policy."""
    options = POLICY_TYPES[policy].Options
    hints = get_type_hints(options, include_extras=True)  # with the ranges their types carry
    fields = {f.name: (_arrays_as_tuples(hints[f.name]), f.default) for f in dataclasses.fields(options)}
    if POLICY_TYPES[policy].loss is not None:  # gradient policies: see `Engine`
        fields["episodic"] = (bool, False)
    return create_model(f"{policy}_options", __config__=Section.model_config, **fields)  # no nan or inf
