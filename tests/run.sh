#!/usr/bin/env bash
# The whole test suite, in the two processes it needs: Triton reads TRITON_INTERPRET when
# its kernels are defined, so the interpreter run (Triton kernels on CPU tensors) and the
# rest (numba, torch reference, sm_80/sm_90 compile checks) cannot share a process.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q tests "$@"
TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py tests/test_triton_gru.py tests/test_diagnostics.py::test_triton_backend "$@"
