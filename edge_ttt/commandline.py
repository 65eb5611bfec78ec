"""What every command line of the project shares: the error exit, the missing-extra message, and a
group that mounts commands from other packages by name.

The device package cannot import the host packages (torch) or the simulator, yet `edge-ttt` offers
their commands; naming them as "module:attribute" and importing on use keeps both true.
"""

from __future__ import annotations

import importlib
from difflib import get_close_matches
from functools import cache
from types import ModuleType
from typing import ClassVar, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

HOST_ONLY = frozenset({"torch", "seglearn"})  # what the [export] extra brings


def fail(message: str) -> NoReturn:
    """Exit 2 with `error: message` on stderr: the exit code of a usage error, for a bad input."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def host_import(module: str) -> ModuleType:
    """Import a host-side (torch) module, or explain which extra or package is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name in HOST_ONLY:
            fail(f"this command runs on the host and needs {exc.name}: pip install 'edge-ttt[export]'")
        if exc.name == module.partition(".")[0]:  # an install made before the package existed
            fail(f"package {exc.name} is not installed; reinstall edge-ttt (in a checkout: pip install -e .)")
        raise


@cache  # `--help` and command resolution ask for the same command more than once
def mounted(name: str, target: str) -> TyperCommand | TyperGroup | None:
    """Command `name` of the Typer app at "module:attribute": the app itself when it is named `name`
    (a group such as `datasets`), else its command of that name (one app may hold several)."""
    module, _, attribute = target.partition(":")
    group = typer.main.get_group(getattr(host_import(module), attribute))
    if group.name == name:
        return group
    return group.commands.get(name)  # type: ignore[return-value]


class LazyGroup(TyperGroup):
    """A Typer group whose commands in `lazy` ({name: "module:attribute"}) are imported only when
    listed or invoked; `order` is the order `--help` lists every command in."""

    lazy: ClassVar[dict[str, str]] = {}
    order: ClassVar[tuple[str, ...]] = ()

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = [*super().list_commands(ctx), *self.lazy]
        return sorted(names, key=lambda n: self.order.index(n) if n in self.order else len(self.order))

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:
        if cmd_name in self.lazy:
            return mounted(cmd_name, self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)  # type: ignore[return-value]

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple:
        """Typer's "Did you mean" for a mistyped command, with the lazy commands among the candidates
        (Typer draws them from the commands it built)."""
        typo = args[0] if args else ""
        if typo[:1].isalnum() and not ctx.resilient_parsing and self.get_command(ctx, typo) is None:
            matches = get_close_matches(typo, self.list_commands(ctx)) if self.suggest_commands else []
            if matches:
                ctx.fail(f"No such command {typo!r}. Did you mean {', '.join(map(repr, matches))}?")
        return super().resolve_command(ctx, args)
