"""What every command line of the project shares: how its apps print help, the error exit, the
missing-extra message, and a group that mounts commands from other packages by name.

The device package cannot import the host packages (torch) or the simulator, yet `edge-ttt` offers
their commands; naming them as "module:attribute" and importing on use keeps both true.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import signal
from collections.abc import Callable
from difflib import get_close_matches
from functools import cache
from types import ModuleType
from typing import Any, ClassVar, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

HOST_ONLY = frozenset({"torch", "onnx", "seglearn"})  # what the [export] extra brings
# The export's training build; the stock onnxruntime a device install brings shares its package
# directory, and replaces it when pip installs it later (README).
TRAINING_FIX = "pip install --force-reinstall --no-deps onnxruntime-training-cpu==1.19.2"


class HelpGroup(TyperGroup):
    """Lists each command with the whole first paragraph of its help, wrapped, where click would
    cut it at the first sentence or at 80 columns with "..."."""

    def format_commands(self, ctx: typer.Context, formatter: Any) -> None:  # click's HelpFormatter
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                text = command.short_help or inspect.cleandoc(command.help or "").split("\n\n")[0]
                rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def command_app(**options: Any) -> typer.Typer:
    """A Typer app whose help is click's plain text: rich's boxes cut long option names to fit 80
    columns (`--as-fast-as-p…`) and read `[alerts]` in a help text as markup, dropping it; plain
    text keeps both, and pipes and greps well. No shell-completion options; a bare group prints
    its help."""
    defaults = {"cls": HelpGroup, "rich_markup_mode": None, "add_completion": False, "no_args_is_help": True}
    return typer.Typer(**{**defaults, **options})


def fail(message: str) -> NoReturn:
    """Exit 2 with `error: message` on stderr: the exit code of a usage error, for a bad input."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# What the system says when it refuses a file: the machine's state, not a bug in the command.
REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
# What it says of a path given that cannot be one (a bad input: exit 2).
BAD_PATHS = frozenset({errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EEXIST})


def on_stop(handler: Callable[[int, Any], None]) -> None:
    """End a long-running command through `handler` on Ctrl-C, SIGTERM (`kill`, `timeout`, a
    service stop) and SIGHUP (its terminal went away, an SSH session dropped), whose default would
    end it like SIGKILL, without its last states, summaries or recorded frames."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def run_app(app: typer.Typer, args: list[str] | None = None) -> None:
    """Run a command line (`args`: sys.argv's); a file the system refuses (a full or read-only
    disk, no permission) ends it with one line naming the file and the reason, exit 1, and so
    does a path that cannot be one (a missing directory, a directory where a file goes), exit 2,
    instead of a traceback."""
    try:
        app(args=args)
    except OSError as exc:
        if exc.errno not in REFUSALS | BAD_PATHS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        typer.secho(f"error: {where}{exc.strerror}", fg=typer.colors.RED, err=True)
        raise SystemExit(1 if exc.errno in REFUSALS else 2) from None


def host_import(module: str) -> ModuleType:
    """Import a host-side (torch) module, or explain which extra or package is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name in HOST_ONLY:
            fail(f"this command runs on the host and needs {exc.name}: pip install 'edge-ttt[export]'")
        if exc.name == "onnxruntime.training":
            fail(f"this command needs the training build of onnxruntime, not the stock one: {TRAINING_FIX}")
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


class LazyGroup(HelpGroup):
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
