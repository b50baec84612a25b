#!/bin/bash
# Run the numba kernel tests on arm64 (aarch64) Linux, on an x86-64 machine, under
# qemu's user-mode emulation: an arm64 Debian root (debootstrap's first stage, packages
# only unpacked, so nothing needs binfmt_misc or root-level chroot), the aarch64 wheels
# of numba / llvmlite / numpy / torch / pytest from PyPI, and the repository itself.
# numba then detects NEON (config.ISA == "neon") and compiles the kernels for aarch64.
#
# Usage: tests/arm64/run.sh [pytest args]     (default: the numba kernel tests)
# Needs root for apt-get (qemu-user-static, debootstrap) the first time; the root and the
# wheels are kept under $ARM64_DIR (default /var/tmp/rnnfast-arm64) for later runs.
# Slow: every numba compile runs emulated (tens of minutes for the first run; the
# compile cache then lives in $ARM64_DIR/numba-cache).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${ARM64_DIR:-/var/tmp/rnnfast-arm64}
ROOT=$DIR/rootfs
SITE=$DIR/site
mkdir -p "$DIR"

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq && apt-get install -y -qq qemu-user-static debootstrap
fi

if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3.11,libpython3.11-stdlib,libstdc++6,libgomp1,zlib1g,libffi8,libssl3 \
    bookworm "$ROOT"
  # the first stage unpacks only the required packages: unpack the rest the same way
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
fi

PKGS='torch==2.9.1 numba>=0.68 llvmlite numpy pytest pygments iniconfig pluggy packaging
  typing_extensions sympy mpmath networkx jinja2 markupsafe fsspec filelock'
DONE=$SITE/.done-$(echo "$PKGS" | md5sum | cut -c1-8)
if [ ! -f "$DONE" ]; then
  # torch 2.9.1: a CPU-only aarch64 build on PyPI (2.14's is a CUDA build that needs
  # the nvidia libraries). --no-deps: pip evaluates the wheels' markers for this (x86)
  # host, which would pull x86-only dependencies; torch's pure-Python dependencies are
  # listed instead.
  pip install --quiet --target "$SITE" --no-deps --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none --upgrade $PKGS
  touch "$DONE"
fi

# the repository as an installed package: rnnfast/ plus kernels/ as rnnfast.kernels
PKG=$DIR/pkg
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r "$REPO/rnnfast" "$PKG/rnnfast"
cp -r "$REPO/kernels" "$PKG/rnnfast/kernels"
cp -r "$REPO/tests" "$PKG/tests"
find "$PKG" -name __pycache__ -prune -exec rm -rf {} +

# from the copy: in the repository, ./rnnfast (without kernels/) would shadow it
cd "$PKG"
[ $# -gt 0 ] || set -- -q tests/test_cpu_math.py tests/test_kernels.py -k "not triton" -p no:cacheprovider
echo "arm64 run: $(date -u +%Y-%m-%dT%H:%MZ), $(qemu-aarch64-static --version | head -n 1)"
exec env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 \
  PYTHONPATH="$PKG:$SITE" NUMBA_CACHE_DIR="$DIR/numba-cache" PYTHONDONTWRITEBYTECODE=1 \
  qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" -c "
import platform, sys
from rnnfast.kernels.numba.config import ISA
print('machine', platform.machine(), 'numba ISA', ISA.name, flush=True)
import pytest
sys.exit(pytest.main(sys.argv[1:]))" "$@"
