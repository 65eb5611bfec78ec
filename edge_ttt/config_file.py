"""What every configuration file shares: TOML reading, strict sections, paths and error messages.

A config is read whole and checked whole: every problem is reported in one `ConfigError`, one
line each, naming the key by its dotted path and saying how to fix it, because the reader is at a
device's console and fixing one typo per restart is slow. This module knows no section of any
particular config; the agent's and the monitor's configs are built from it.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, ValidationError, ValidationInfo
from pydantic_core import ErrorDetails

from edge_ttt.logs import show
from edge_ttt.ranges import BOUNDS, bounds_of, describe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "ConfigPath",
    "Section",
    "TOMLDecodeError",
    "explain",
    "parse_toml",
    "read_toml",
    "require_file",
    "section_at",
    "validate_file",
]

TOMLDecodeError = tomllib.TOMLDecodeError
Model = TypeVar("Model", bound=BaseModel)
SectionModel = Callable[[tuple[Any, ...]], type[BaseModel]]


class ConfigError(ValueError):
    """The configuration is unreadable or invalid; the message names the file, the keys and the fix."""


class Section(BaseModel):
    """A table of a config file: unknown keys refused, values immutable, types strict."""

    # strict: a TOML "1883" for a port or "yes" for a flag is a mistake, not a value to coerce;
    # nan and inf are no durations, sizes or thresholds (a stop_timeout_s of inf ended a stop in
    # an OverflowError, a status interval of inf kept a stopped agent "healthy")
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _context(info: ValidationInfo) -> dict[str, Any]:
    """The loader passes base_dir (the config file's directory) and check_files."""
    return info.context or {}


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """Relative to the config file, so that a config means the same from any working directory."""
    base = _context(info).get("base_dir")
    return path if base is None or path.is_absolute() else (base / path).resolve()


def require_file(path: Path, info: ValidationInfo) -> None:
    """Refuse a path that is not a file, unless the loader was told not to check files."""
    if _context(info).get("check_files", True) and not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ValueError(f"file {path} {what}; correct the path or install the file there")


def _writable(path: Path, info: ValidationInfo) -> Path:
    """Refuse a directory the agent could not write in (read-only, no permission, a file in the
    way), unless the loader was told not to check files: said at load, not at the first write."""
    if not _context(info).get("check_files", True):
        return path
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a directory; point this at a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{existing} cannot be written by this user (read-only or no permission), so {path} "
            "cannot hold the agent's files; point this at a writable directory"
        )
    return path


# The models are strict (TOML has real types); paths are the one place a string is converted.
ConfigPath = Annotated[Path, Strict(False), AfterValidator(_resolve)]
# A directory the agent writes in (state, spool), checked at load.
WritableDir = Annotated[Path, Strict(False), AfterValidator(_resolve), AfterValidator(_writable)]


def parse_toml(text: str) -> dict[str, Any]:
    """TOML text to its tables; raises `TOMLDecodeError` (tomllib, or tomli before Python 3.11)."""
    return tomllib.loads(text)


def read_toml(path: Path) -> dict[str, Any]:
    """The file's tables, or a ConfigError that says what is wrong with the file itself."""
    try:
        # utf-8-sig: a byte-order mark (which Windows editors write) is not a TOML statement
        return parse_toml(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror}); check the path") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}; fix the syntax there") from None


def section_at(root: type[BaseModel], section: tuple[Any, ...]) -> type[BaseModel]:
    """The model of the table at `section` below `root`: its fields are the keys allowed there."""
    model = root
    for name in section:
        model = model.model_fields[name].annotation
    return model


def validate_file(
    model: type[Model],
    raw: dict[str, Any],
    path: Path,
    context: dict[str, Any],
    section_model: SectionModel | None = None,
    top: str = "the top level",
) -> Model:
    """`raw` (the tables of `path`) as `model`, or one ConfigError with a line per problem.

    `section_model` finds the model of a table by its key path (default: through `model`'s fields),
    for tables whose model depends on another key, such as a policy's options. `top` names the
    keys outside any table in the message for an unknown one."""
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        where = section_model or (lambda section: section_at(model, section))
        problems = [
            f"{path}: {'.'.join(map(str, e['loc']))}: {explain(e, where, top)}"
            for e in exc.errors(include_url=False)
        ]
    # Raised outside the except block so that the ValidationError, which holds the raw input
    # values (a misplaced password among them), is not chained to it.
    raise ConfigError("\n".join(problems))


# ---------------------------------------------------------------------------------------------
# What is wrong and how to fix it

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a table",
    "model_type": "a table",
    "path_type": "a path (a string)",
    "finite_number": "a finite number",
}
_PASSWORD = (
    "a password is never written in the configuration; name an environment variable that holds it "
    "with mqtt.password_env, or a file with mqtt.password_file"
)


def _got(error: ErrorDetails) -> str:
    return f"got {show(error.get('input'), toml=True)}"


def explain(error: ErrorDetails, section_model: SectionModel, top: str = "the top level") -> str:
    """What is wrong with one key and how to fix it, in the words of a TOML file."""
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx", {})
    got = _got(error)
    if kind == "extra_forbidden":  # the value is not shown: it may be a password
        return _PASSWORD if loc == ("mqtt", "password") else _unknown_key(loc, section_model, top)
    if kind == "missing":
        return "required, but missing; add it"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be {ctx['expected']}, {got}"
    if kind == "string_too_short":
        return f"must not be empty, {got}"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, {got}"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        # The field's bounds together ("between 0 and 1"); the error's own for a type that hides
        # them (an optional value).
        bounds = _bounds(loc, section_model) or {k: v for k, v in ctx.items() if k in BOUNDS}
        return f"must be {describe(bounds)}, {got}"
    return f"{error['msg']}, {got}"


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _unknown_key(loc: tuple[Any, ...], section_model: SectionModel, top: str) -> str:
    allowed = list(_keys(section_model(loc[:-1])))
    guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    where = ".".join(loc[:-1]) or top
    return f"unknown key; {hint}allowed in {where}: {', '.join(allowed) or 'none'}"


def _bounds(loc: tuple[Any, ...], section_model: SectionModel) -> dict[str, Any]:
    return bounds_of(_keys(section_model(loc[:-1]))[loc[-1]].metadata)
