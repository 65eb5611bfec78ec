"""What the benchmarks' command lines share: verdicts, argument types, progress lines, and a record
of when, where and with what a run was made, so that every results table can be traced."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import edge_ttt

PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "not measured"


@dataclass(frozen=True)
class Target:
    title: str
    status: str  # PASS, FAIL or NOT_MEASURED
    details: list[str]


def pct(value: float | None) -> str:
    """A percentage for a table, one decimal; "-" where nothing was measured."""
    return "-" if value is None else f"{value:.1f}"


def share(value: float | None) -> str:
    """A share (0-1) as `pct` writes a percentage."""
    return pct(None if value is None else 100 * value)


def target_lines(targets: list[Target]) -> list[str]:
    """The report's closing section: every target's verdict with its details."""
    lines = ["", "## Targets", ""]
    for target in targets:
        lines.append(f"- **{target.status}** {target.title}")
        lines += [f"  - {detail}" for detail in target.details]
    return lines


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine_info(module: str, argv: list[str]) -> dict:
    """When, where and with what a benchmark ran: date, commit, command, versions, CPUs."""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        # results written earlier in the same run (or by another benchmark) are not the code's changes
        "git_dirty": bool(_git("status", "--porcelain", "--", ".", ":!benchmarks/results")),
        "command": shlex.join(["python", "-m", module, *argv]),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "edge_ttt": edge_ttt.__version__,
        },
        "cpus": os.cpu_count(),
    }


def name_list(known: Iterable[str], what: str):
    """An argparse type: a comma-separated list of names out of `known`."""
    known = tuple(known)

    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {', '.join(known)}")
        return names

    return parse


def _batch_sizes(text: str) -> list[int]:
    """An argparse type; argparse names it in its error for a non-number, hence the name."""
    sizes = [int(n) for n in text.split(",") if n]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers")
    return sizes


def add_output_options(p: argparse.ArgumentParser) -> None:
    """Where a benchmark keeps its trained models (`--cache`) and writes its tables (`--out`)."""
    p.add_argument("--cache", type=Path, default=Path("runs/bench"), help="trained models and bundles")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the result files go")


def one_model_args(module: str, doc: str | None, out: str, argv: list[str] | None) -> argparse.Namespace:
    """The options of a benchmark of one reference model: `--model`, `--cache`, `--out` (default `out`)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").partition("\n\n")[0])
    parser.add_argument("--model", default="cnn-bn", help="reference model")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench"), help="trained models and bundles")
    parser.add_argument("--out", type=Path, default=Path(out), help="result files")
    return parser.parse_args(argv)


def write_json(out: Path, stem: str, module: str, argv: list[str] | None, **content) -> dict:
    """`<out>/<stem>.json`: `content` and the run's machine info as `meta`, which is returned."""
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_info(module, sys.argv[1:] if argv is None else argv)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, **content}, indent=1))
    return meta


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
