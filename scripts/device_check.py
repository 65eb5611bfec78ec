"""What a device install must do, checked in the environment this runs in: import edge_ttt,
load a schema-2 bundle and adapt along a recorded log with the default policy; and, to compare
machines (aarch64 against x86_64), the predicted class of every window.

    python scripts/device_check.py run --artifacts DIR --log FILE [--device-env] [--out FILE.json]
    python scripts/device_check.py compare A.json B.json [--min-equal 0.999]

`--device-env` also fails unless the environment is a device's: no torch, no onnx, no
onnxruntime.training. Used by scripts/device_install_check.sh and scripts/aarch64_check.sh; CI
does not run it (docs/jetson.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path

HOST_ONLY = ("torch", "onnx", "onnxruntime.training")


def _host_only_present() -> list[str]:
    """The host-only packages this environment can import (none on a device)."""
    return [name for name in HOST_ONLY if importlib.util.find_spec(name) is not None]


def run(artifacts: Path, log: Path, device_env: bool, out: Path | None) -> int:
    if device_env and (present := _host_only_present()):
        print(f"not a device environment: {', '.join(present)} importable", file=sys.stderr)
        return 1
    import onnxruntime

    from edge_ttt.replay import replay

    summary = replay(artifacts, log, with_classes=True)[0]
    classes = summary.pop("classes")
    line = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        **{k: summary[k] for k in ("policy", "windows", "adapt_steps", "accuracy", "ms_per_window")},
    }
    print(json.dumps(line))
    if out is not None:
        out.write_text(json.dumps({**line, "classes": classes}) + "\n")
    if summary["adapt_steps"] == 0:
        print("the default policy took no adaptation step", file=sys.stderr)
        return 1
    return 0


def compare(a: Path, b: Path, min_equal: float) -> int:
    left, right = (json.loads(p.read_text()) for p in (a, b))
    if len(left["classes"]) != len(right["classes"]) or not left["classes"]:
        print(f"window counts differ or are zero: {len(left['classes'])}, {len(right['classes'])}")
        return 1
    equal = sum(x == y for x, y in zip(left["classes"], right["classes"], strict=True)) / len(left["classes"])
    print(
        json.dumps(
            {
                "a": {k: left[k] for k in ("machine", "onnxruntime", "accuracy")},
                "b": {k: right[k] for k in ("machine", "onnxruntime", "accuracy")},
                "windows": len(left["classes"]),
                "equal_share": equal,
            }
        )
    )
    return 0 if equal >= min_equal else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--artifacts", type=Path, required=True)
    r.add_argument("--log", type=Path, required=True)
    r.add_argument("--device-env", action="store_true")
    r.add_argument("--out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--min-equal", type=float, default=0.999)
    args = parser.parse_args()
    if args.command == "run":
        return run(args.artifacts, args.log, args.device_env, args.out)
    return compare(args.a, args.b, args.min_equal)


if __name__ == "__main__":
    sys.exit(main())
