"""`edge-ttt` as the composition root: host commands are mounted by name, so the device package
imports neither torch nor the simulator, and a missing extra is named, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_ttt.commandline import mounted

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
    listed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ")]
    assert [name for name in listed if name in COMMANDS] == list(COMMANDS)
    assert "Train a source model" in result.stdout and "Convert public sensor datasets" in result.stdout
    modules = next(line for line in result.stdout.splitlines() if line.startswith("modules:"))
    assert "export.train" not in modules.split() and "edge_ttt_demo.run" not in modules.split()


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
