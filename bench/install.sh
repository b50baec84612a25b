# Sourced by bench/run.sh and tests/run.sh (from the repository root): installs this
# checkout when it is not the one Python imports.
#
#   ensure_installed EXTRAS MODULE...
#   install_torch                      (also what .ci/run installs first)
#
# Skips the install only when MODULE... (the import names of every package the extras
# bring) import and rnnfast's kernels come from this checkout: with another checkout
# installed in editable mode, `import rnnfast` from here
# finds this rnnfast/ but its kernels (mapped by that install) from the other checkout.
# torch is pinned to 2.13.0 and its CPU build preferred (PyTorch's CPU index, where it
# is reachable; on a machine whose pip serves local wheels only, that index fails in a
# few seconds and the local build is taken), so pip never pulls a multi-GB CUDA build.
install_torch() {
    python -m pip install --quiet torch==2.13.0 \
        --extra-index-url https://download.pytorch.org/whl/cpu
}

ensure_installed() {
    local extras="$1"
    shift
    if python - "$(pwd -P)" "$@" <<'PY' 2>/dev/null
import importlib, os, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
import rnnfast.kernels
sys.exit(0 if os.path.realpath(rnnfast.kernels.__file__).startswith(
    os.path.join(sys.argv[1], "")) else 1)
PY
    then
        return 0
    fi
    install_torch
    python -m pip install --quiet -e ".[$extras]"
}
