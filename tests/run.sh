#!/usr/bin/env bash
# The whole test suite, in the two processes it needs: Triton reads TRITON_INTERPRET when
# its kernels are defined, so the interpreter run (the Triton backend on CPU tensors,
# drawing the same case catalogue) and the rest (numba, the torch reference, sm_80/sm_90
# compile checks) cannot share a process. Installs the package and its test extras
# first, so a fresh clone needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/install.sh
ensure_installed test,triton pytest pytest_benchmark ruff onnx onnxruntime onnxscript expecttest triton
INTERPRETED=(tests/test_triton.py tests/test_triton_gru.py tests/test_kernels.py
             tests/test_dropin.py tests/test_modules.py tests/test_diagnostics.py)
# Arguments that name an existing file or folder (tests/test_errors.py,
# tests/test_kernels.py::test_x) select what runs: the plain pass runs those, the
# interpreter pass those among its files (none: no interpreter pass). Without any, the
# whole suite and every interpreter file; other arguments go to both passes.
options=() paths=()
for arg in "$@"; do
    if [[ -e "${arg%%::*}" ]]; then paths+=("$arg"); else options+=("$arg"); fi
done
if (( ${#paths[@]} == 0 )); then
    python -m pytest -q tests "${options[@]}"
    TRITON_INTERPRET=1 python -m pytest -q "${INTERPRETED[@]}" "${options[@]}"
    exit
fi
python -m pytest -q "${options[@]}" "${paths[@]}"
interpreted=()
for arg in "${paths[@]}"; do
    for f in "${INTERPRETED[@]}"; do
        if [[ "${arg%%::*}" -ef "$f" ]]; then interpreted+=("$arg"); fi
    done
done
if (( ${#interpreted[@]} > 0 )); then
    TRITON_INTERPRET=1 python -m pytest -q "${options[@]}" "${interpreted[@]}"
fi
