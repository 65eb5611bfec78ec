#!/usr/bin/env bash
# Target 3 of issue #20 without aarch64 hardware: replay a log through the default policy on
# aarch64 (Debian bookworm arm64 under qemu user-mode emulation, stock onnxruntime from the
# package index's aarch64 wheels) and on x86_64, and compare the predicted class of every window
# (at least 99.9 % equal). Needs root, apt and the package index; not run by CI (docs/jetson.md).
#
#   scripts/aarch64_check.sh BUNDLE LOG [OUT]
#
# BUNDLE (schema 2) and LOG come from the host, e.g. the README's step-by-step commands.
# OUT (default benchmarks/results/aarch64) receives both runs' classes and the comparison.
# AARCH64_ROOT (default /var/tmp/edge-ttt-arm64) keeps the arm64 root between runs (debootstrap
# takes about 4 minutes); X86_PYTHON (default .venv/bin/python) runs the x86_64 side.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bundle=$(realpath "$1") log=$(realpath "$2")
out=$(realpath -m "${3:-$repo/benchmarks/results/aarch64}")
arm=${AARCH64_ROOT:-/var/tmp/edge-ttt-arm64}
x86_python=${X86_PYTHON:-$repo/.venv/bin/python}
platforms=(--platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64)
mkdir -p "$out"

if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap binfmt-support >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64

if [ ! -x "$arm/usr/bin/python3" ]; then
    echo "== debootstrap arm64 bookworm into $arm (about 4 minutes)"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$arm" >"$out/debootstrap.log"
fi
arm_py=$(chroot "$arm" python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

echo "== aarch64 wheels for Python $arm_py: edge-ttt and what a device installs"
rm -rf "$arm/check" && mkdir -p "$arm/check/wheels"
"$x86_python" -m pip wheel -q --no-deps "$repo" -w "$arm/check/wheels"
"$x86_python" -m pip download -q --only-binary=:all: --python-version "$arm_py" "${platforms[@]}" \
    -d "$arm/check/wheels" "$arm"/check/wheels/edge_ttt-*.whl
cp -r "$bundle" "$arm/check/bundle" && cp "$log" "$arm/check/log.parquet"
cp "$repo/scripts/device_check.py" "$arm/check/"

# No /sys in the root: onnxruntime's CPU probe crashed under emulation with it (docs/jetson.md).
echo "== aarch64 (emulated): install and replay"
start=$SECONDS
chroot "$arm" sh -c 'rm -rf /opt/venv && python3 -m venv /opt/venv &&
    /opt/venv/bin/pip install -q --no-index --find-links /check/wheels edge-ttt'
chroot "$arm" sh -c 'cd /check && /opt/venv/bin/python device_check.py run --device-env \
    --artifacts bundle --log log.parquet --out aarch64.json' 2> >(grep -v cpuinfo >&2)
cp "$arm/check/aarch64.json" "$out/aarch64.json"
echo "   $((SECONDS - start)) s under emulation"

echo "== x86_64: replay"
(cd "$out" && "$x86_python" "$repo/scripts/device_check.py" run --artifacts "$bundle" --log "$log" \
    --out "$out/x86_64.json")

echo "== compare"
"$x86_python" "$repo/scripts/device_check.py" compare "$out/x86_64.json" "$out/aarch64.json" |
    tee "$out/compare.json"
