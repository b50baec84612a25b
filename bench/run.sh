#!/usr/bin/env bash
# The main job on a fresh machine: installs what it needs (the CPU build of torch first,
# so pip never pulls a multi-GB CUDA build), then runs `python -m bench` with the
# arguments given (e.g. --quick, --out DIR, --isa avx2).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import rnnfast, matplotlib, triton" 2>/dev/null; then
    python -m pip install --quiet torch==2.13.0
    python -m pip install --quiet -e ".[bench,triton]"
fi
exec python -m bench "$@"
