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


def _imported(paths: list[Path]) -> set[str]:
    """Top-level names of the third-party modules these files import, anywhere in them."""
    import ast
    import sys

    first_party = {"edge_ttt", "export", "firmware_sim", "benchmarks", "edge_ttt_demo", "__future__"}
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in first_party}


def test_the_device_package_declares_every_package_it_imports():
    """A fresh `pip install .` must run `edge-ttt`: an import that only arrived through another
    package (click through typer, which stopped depending on it) broke the command on a clean
    machine while every venv with the dev extras still had it. The monitor may use its extra."""
    from importlib.metadata import packages_distributions

    from edge_ttt.config_file import parse_toml

    project = parse_toml((ROOT / "pyproject.toml").read_text())["project"]
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731  (PEP 503)
    declared = lambda reqs: {norm(re.match(r"[A-Za-z0-9_.-]+", d).group(0)) for d in reqs}  # noqa: E731
    device = declared(project["dependencies"]) | {"pydantic-core"}  # pydantic's own core, pinned by it
    monitor = device | declared(project["optional-dependencies"]["monitor"])
    files = sorted((ROOT / "edge_ttt").rglob("*.py"))
    installed = packages_distributions()
    for allowed, paths in [
        (device, [f for f in files if "monitor" not in f.relative_to(ROOT).parts]),
        (monitor, [f for f in files if "monitor" in f.relative_to(ROOT).parts]),
    ]:
        for name in sorted(_imported(paths)):
            dists = {norm(d) for d in installed.get(name, [name])}
            assert dists & allowed, f"edge_ttt imports {name} ({dists}), which pyproject does not declare"


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
