"""`edge-ttt` as the composition root: host commands are mounted by name, so the device package
imports neither torch nor the simulator, and a missing extra is named, not a traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_ttt.atomic import atomic_write
from edge_ttt.commandline import command_app, mounted, run_app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("collect", "train", "export", "replay", "run", "demo", "health", "datasets", "monitor")
NEEDS_TORCH = "error: this command runs on the host and needs torch: pip install 'edge-ttt[export]'"

BLOCKED = """
import sys
sys.modules["torch"] = None  # from here on, `import torch` raises ImportError
sys.argv = ["edge-ttt", *sys.argv[1:]]
from edge_ttt.cli import main
try:
    main()
finally:
    assert sys.modules["torch"] is None, "something replaced the torch blocker"
    print("modules:", *sorted(m for m in sys.modules if m.startswith(("export.", "edge_ttt_demo."))))
"""


def _blocked(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )


def _modules(code: str) -> set[str]:
    """Every module in sys.modules after `code`, in a fresh interpreter."""
    script = f"{code}\nimport sys\nprint(' '.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_help_lists_every_command_without_torch():
    result = _blocked("--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:\n", 1)[1].splitlines()
    listed = [line.split()[0] for line in commands if line.startswith("  ") and not line.startswith("   ")]
    assert listed == list(COMMANDS)
    assert (
        "Train a source model" in result.stdout
        and "Recorded logs from public sensor datasets" in result.stdout
    )
    modules = next(line for line in result.stdout.splitlines() if line.startswith("modules:"))
    assert "export.train" not in modules.split() and "edge_ttt_demo.run" not in modules.split()


def test_version_is_the_installed_one_and_needs_no_command_or_torch():
    from importlib.metadata import version

    import edge_ttt

    result = _blocked("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"edge-ttt {edge_ttt.__version__}"
    # pyproject reads the version from the package: what pip installed is what the agent stamps
    # on its drift summaries (`agent_version`)
    assert version("edge-ttt") == edge_ttt.__version__


@pytest.mark.parametrize(
    "args",
    [("train", "--log", "log.parquet", "--out", "m.pt"), ("export", "--checkpoint", "m.pt", "--out", "art")],
)
def test_host_commands_name_the_missing_extra(args: tuple[str, ...]):
    result = _blocked(*args)
    assert result.returncode == 2, result.stderr
    assert NEEDS_TORCH in result.stderr
    assert "Traceback" not in result.stderr


def test_device_cli_imports_no_host_package():
    loaded = {m.split(".")[0] for m in _modules("import edge_ttt.cli")}
    assert not loaded & {"torch", "export", "firmware_sim", "edge_ttt_demo"}, sorted(loaded)


def test_simulator_cli_does_not_import_edge_ttt_cli():
    loaded = _modules("import firmware_sim.cli")
    assert "firmware_sim.datasets.cli" in loaded and "edge_ttt.cli" not in loaded


def test_mounted_takes_the_named_app_or_its_command():
    datasets = mounted("datasets", "firmware_sim.datasets.cli:datasets_app")
    assert datasets is not None and datasets.name == "datasets" and "watch" in datasets.commands
    train = mounted("train", "export.cli:app")
    assert train is not None and train.name == "train" and {p.name for p in train.params} >= {"log", "out"}
    assert mounted("demo", "export.cli:app") is None  # not there: `edge-ttt` answers "No such command"


def test_a_mistyped_host_command_is_suggested():
    from edge_ttt.cli import app

    result = CliRunner().invoke(app, ["trian"])
    assert result.exit_code == 2
    assert "No such command 'trian'. Did you mean 'train'?" in result.output


def test_a_package_missing_from_an_old_install_is_named(capsys):
    """An editable install made before a mounted package existed: one line saying to reinstall."""
    import typer

    from edge_ttt.commandline import host_import

    with pytest.raises(typer.Exit) as raised:
        host_import("edge_ttt_no_such_package.cli")
    assert raised.value.exit_code == 2
    err = capsys.readouterr().err
    assert "package edge_ttt_no_such_package is not installed; reinstall edge-ttt" in err


def test_stock_onnxruntime_in_place_of_the_training_build_is_named(capsys, monkeypatch):
    """The host has both onnxruntime wheels and the stock one won: one line with the fix."""
    import sys

    import typer

    from edge_ttt.commandline import TRAINING_FIX, host_import

    monkeypatch.setitem(sys.modules, "onnxruntime.training", None)
    monkeypatch.delitem(sys.modules, "export.loss", raising=False)
    with pytest.raises(typer.Exit) as raised:
        host_import("export.loss")
    assert raised.value.exit_code == 2
    assert TRAINING_FIX in capsys.readouterr().err


def _commands(command, path: tuple[str, ...] = ()):
    """Every command under `command` with its path, the lazily mounted ones included (typer may
    bring its own copy of click, so groups are known by what they do)."""
    import typer

    yield path, command
    if hasattr(command, "list_commands"):
        ctx = typer.Context(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))


def _every_command():
    import typer

    from edge_ttt.cli import app as edge_ttt
    from firmware_sim.cli import app as firmware_sim

    for root, app in (("edge-ttt", edge_ttt), ("firmware-sim", firmware_sim)):
        for path, command in _commands(typer.main.get_command(app)):
            yield " ".join((root, *path)), command


def test_every_option_has_a_description_and_says_its_default_once():
    """Checked on what --help prints: each option's help text, and `default` at most once in it
    (a help text that says "(default: x)" next to click's "[default: x]" says it twice)."""
    pytest.importorskip("torch")  # the host commands are mounted only where they import
    problems = []
    import typer

    commands = dict(_every_command())
    assert {"edge-ttt datasets import", "edge-ttt monitor alerts", "firmware-sim replay"} <= set(commands)
    for name, command in commands.items():
        ctx = typer.Context(command, info_name=name)
        for param in command.params:
            record = param.get_help_record(ctx)
            if record is None or param.name == "help":
                continue
            if not getattr(param, "help", None):
                problems.append(f"{name} {record[0]}: no description")
            if record[1].lower().count("default") > 1:
                problems.append(f"{name} {record[0]}: says its default twice: {record[1]}")
    assert problems == []


def test_help_keeps_long_option_names_and_square_brackets_whole():
    """Help is plain text, not rich boxes: at 80 columns rich cut `--as-fast-as-possible` to
    `--as-fast-as-p…` and read `[alerts]` as markup, printing `its  rules`."""
    from edge_ttt.cli import app as edge_ttt
    from firmware_sim.cli import app as firmware_sim

    replay = CliRunner().invoke(firmware_sim, ["replay", "--help"], terminal_width=80)
    assert "--as-fast-as-possible / --no-as-fast-as-possible" in replay.output and "…" not in replay.output
    assert "clean, gain" in replay.output  # the built-in scenarios, not only in an error
    alerts = CliRunner().invoke(edge_ttt, ["monitor", "alerts", "--help"], terminal_width=80)
    assert "monitor TOML; its [alerts] rules" in alerts.output


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_file_the_system_refuses_ends_a_command_with_one_line(code, capsys):
    app = command_app()

    @app.command()
    def write() -> None:
        raise OSError(code, os.strerror(code), "/var/lib/edge-ttt/report.html")

    with pytest.raises(SystemExit) as ended:
        run_app(app, [])
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: /var/lib/edge-ttt/report.html: {os.strerror(code)}\n"


def test_a_path_that_cannot_be_written_ends_a_command_with_one_line_naming_it(tmp_path, capsys):
    """A directory given where a file goes, or a file under a directory that cannot exist: the
    path asked for is named (not atomic_write's temporary file), exit 2: a bad input."""
    app = command_app()
    target = {"path": tmp_path}

    @app.command()
    def write() -> None:
        atomic_write(target["path"], lambda f: f.write(b"x"))

    for path, reason in [(tmp_path, errno.EISDIR), (tmp_path / "file" / "below" / "it.html", errno.ENOTDIR)]:
        (tmp_path / "file").write_text("a file where a directory should be")
        target["path"] = path
        with pytest.raises(SystemExit) as ended:
            run_app(app, [])
        assert ended.value.code == 2
        assert capsys.readouterr().err == f"error: {path}: {os.strerror(reason)}\n"


def test_atomic_write_refuses_a_device_or_pipe_and_writes_through_a_link(tmp_path):
    """Before, `monitor report --out /dev/full` renamed the report over the device node."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OSError) as refused:  # a device node is refused alike (not tried on the machine's own)
        atomic_write(pipe, lambda f: f.write(b"x"))
    assert refused.value.errno == errno.EEXIST and "not a regular file" in refused.value.strerror
    assert pipe.is_fifo() and refused.value.filename == str(pipe)
    target, link = tmp_path / "report.html", tmp_path / "latest.html"
    target.write_bytes(b"old")
    link.symlink_to(target)
    assert atomic_write(link, lambda f: f.write(b"new")) == target
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_other_os_errors_stay_tracebacks_for_a_bug_report():
    app = command_app()

    @app.command()
    def connect() -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    with pytest.raises(ConnectionRefusedError):
        run_app(app, [])


def test_atomic_write_names_the_file_the_disk_refused(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as refused:
        atomic_write(tmp_path / "report.html", full)
    assert refused.value.errno == errno.ENOSPC and refused.value.filename == str(tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
