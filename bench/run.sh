#!/usr/bin/env bash
# The main job on a fresh machine: installs what it needs (the CPU build of torch first,
# so pip never pulls a multi-GB CUDA build), then runs `python -m bench` with the
# arguments given (e.g. --quick, --out DIR, --isa avx2).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/install.sh
ensure_installed bench,triton matplotlib scipy pytest_benchmark triton
exec python -m bench "$@"
