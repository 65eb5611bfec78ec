"""The README's commands stay true: CI runs its test command, its main job names real commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_command = next(b for b in _bash_blocks() if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_a_device_install_pulls_stock_onnxruntime_and_nothing_host_side():
    from edge_ttt.config_file import parse_toml

    project = parse_toml((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in project["dependencies"]}
    assert "onnxruntime" in names
    assert not names & {"onnxruntime-training", "onnxruntime-training-cpu", "onnx", "torch"}
    assert "onnxruntime-training-cpu==1.19.2" in project["optional-dependencies"]["export"]


def test_host_installs_reinstall_the_training_build_last():
    """Stock onnxruntime and onnxruntime-training-cpu share `onnxruntime/`; the last one installed
    wins, and the export and the parity tests need the training build."""
    from edge_ttt.commandline import TRAINING_FIX

    for block in _bash_blocks():
        steps = block.split(" && ")
        extras = [n for n, s in enumerate(steps) if "pip install" in s and ("[export" in s or "[demo" in s)]
        if extras:
            fix = [n for n, s in enumerate(steps) if TRAINING_FIX.removeprefix("pip install ") in s]
            assert fix and fix[0] > extras[-1], f"reinstall the training build after: {block}"


def test_readme_main_job_uses_existing_subcommands():
    """Host commands are mounted lazily, so each is looked up (and imported) as `edge-ttt` would."""
    import typer
    from typer.main import get_command

    from edge_ttt.cli import app

    cli = get_command(app)
    ctx = typer.Context(cli)
    main_job = next(b for b in _bash_blocks() if "edge-ttt" in b)
    for call in re.findall(r"edge-ttt ([a-z]+)", main_job):
        assert call in cli.list_commands(ctx), f"README calls `edge-ttt {call}`, which does not exist"
        command = cli.get_command(ctx, call)
        assert command is not None and command.name == call, f"`edge-ttt {call}` does not resolve"


def test_following_the_monitoring_page_leaves_nothing_untracked():
    """What docs/monitoring.md's commands write, run from the repository root, is ignored by git."""
    import shutil
    import subprocess

    import pytest

    from edge_ttt.monitor.config import load_monitor_config

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    page = (ROOT / "docs" / "monitoring.md").read_text()
    commands = re.search(r"```bash\n(.*?)\n```", page, flags=re.S).group(1)
    written = re.findall(r"--(?:dataset|out) (\S+)", commands)
    collected = load_monitor_config(ROOT / "configs" / "monitor.toml").collector.dataset
    written.append(str(Path(collected).relative_to(ROOT)))
    assert len(written) >= 5
    for path in written:
        check = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert check.returncode == 0, f"{path}, written by docs/monitoring.md's commands, is not git-ignored"


def test_the_declared_license_ships_its_text():
    """pyproject declares Apache-2.0, which asks that its text go with every copy: the wheel's
    dist-info and the Jetson image take it from LICENSE."""
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "LICENSE" in (ROOT / "Dockerfile.jetson").read_text()
