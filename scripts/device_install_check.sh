#!/usr/bin/env bash
# A device install (`pip install .`, no extras) in a fresh venv: it must pull stock onnxruntime,
# neither torch nor onnx nor onnxruntime-training, and then adapt a schema-2 bundle along a log.
# CI does not run it (it installs from the package index); run it before a release, once per Python.
#
#   scripts/device_install_check.sh BUNDLE LOG [PYTHON]
#
# BUNDLE and LOG come from the host, e.g. the README's step-by-step commands
# (runs/cnn-bn and data/watch_target.parquet). PYTHON defaults to python3.
set -euo pipefail
bundle=$(realpath "$1") log=$(realpath "$2") python=${3:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(mktemp -d /tmp/edge-ttt-device.XXXXXX)
trap 'rm -rf "$venv"' EXIT

"$python" -m venv "$venv"
"$venv/bin/pip" install -q "$root"
echo "== $("$venv/bin/python" --version), $(du -sm "$venv" | cut -f1) MiB venv"
"$venv/bin/pip" list --format=freeze | grep -iE '^(onnx|onnxruntime[a-z-]*|torch|numpy)==' || true
cd "$venv"  # not the source tree: the installed edge_ttt, not the checkout's
"$venv/bin/python" "$root/scripts/device_check.py" run --artifacts "$bundle" --log "$log" --device-env
