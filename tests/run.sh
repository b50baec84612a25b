#!/usr/bin/env bash
# The whole test suite, in the two processes it needs: Triton reads TRITON_INTERPRET when
# its kernels are defined, so the interpreter run (the Triton backend on CPU tensors,
# drawing the same case catalogue) and the rest (numba, the torch reference, sm_80/sm_90
# compile checks) cannot share a process. Installs the package and its test extras
# first, so a fresh clone needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import rnnfast, pytest, triton" 2>/dev/null; then
    python -m pip install --quiet torch==2.13.0
    python -m pip install --quiet -e ".[test,triton]"
fi
python -m pytest -q tests "$@"
TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py tests/test_triton_gru.py \
    tests/test_kernels.py tests/test_dropin.py tests/test_modules.py tests/test_diagnostics.py "$@"
