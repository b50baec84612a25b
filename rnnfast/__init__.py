"""rnnfast: fused recurrent kernels (numba on CPU, Triton on GPU) behind drop-in
``torch.nn.RNN`` / ``torch.nn.LSTM`` / ``torch.nn.GRU`` modules."""

import os


def _isolate_inductor_cache():
    """Under ``ATEN_CPU_CAPABILITY`` (torch held to a narrower instruction set than the
    CPU's, as ``python -m bench --isa`` and CPU-simulation scripts do), point torch
    inductor's on-disk caches at a directory of their own for that capability, unless
    the user chose another (TORCHINDUCTOR_CACHE_DIR).

    Why: torch 2.13's FX graph cache key leaves the capability out. A graph compiled
    natively (16-lane AVX-512 loops) was served to a process held to AVX2, where its C++
    was built with 8-lane vectors: half of each buffer was never written, and a
    torch.compile'd model returned NaN / inf (an rnnfast model) or a wrong number (a
    plain Linear-Tanh-Linear: -3.95 against eager -3.77); the other way round, glibc
    aborted with 'malloc(): unaligned tcache chunk detected' (2026-12-03, AMD EPYC Zen
    4, ``isa-env.sh haswell``). Runs at the CPU's own capability keep torch's default."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if not cap:
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    default = default_cache_dir()
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # torch exports its default there once it has used the cache, so a held-ISA child
    # of such a process inherits the default: treat that as unset.
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default}_cap_{cap.lower()}"


_isolate_inductor_cache()

# In a source checkout, its own kernels/ as rnnfast.kernels (see _checkout).
from ._checkout import use_own_kernels  # noqa: E402

use_own_kernels(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from . import diagnostics, dispatch, reference  # noqa: E402
from .dispatch import BACKENDS, RNNArgumentError  # noqa: E402
from .modules import GRU, LSTM, RNN  # noqa: E402

__all__ = ["RNN", "LSTM", "GRU", "BACKENDS", "RNNArgumentError", "diagnostics",
           "dispatch", "empty_cache", "explain", "reference", "set_triton_tf32"]
__version__ = "0.1.0"


def explain(module, input, hx=None):
    """One line: which implementation ``module(input, hx)`` runs, on which instruction
    set, and why (``module``: an rnnfast RNN / LSTM / GRU; ``input``: a Tensor or
    PackedSequence; ``hx``: the call's initial state, as forward takes it, or None).

    Raises the error ``module(input, hx)`` would raise (torch.nn's checks and messages)
    for an input or hx the call would reject, before choosing anything; TypeError for a
    module that is not rnnfast's (torch.nn's own modules run only torch's kernels)."""
    from .modules import _require_rnnfast_module
    _require_rnnfast_module(module, "rnnfast.explain")
    be = module.plan(input, hx)
    isa = getattr(getattr(be.kernels, "config", None), "ISA", None)
    where = f" [{getattr(isa, 'name', isa)}]" if isa else ""
    line = f"{type(module).__name__}: backend={be.name}{where}: {be.reason}"
    if be.name == "numba":
        line += "; " + _layer_gemm_note(module, input, be.compute_dtype)
    return line


def _layer_gemm_note(module, input, dtype):
    """Which library the numba backend's first layer gives its gradient GEMMs
    (kernels/numba/gemm.py: layer_gemm_provider), and the times behind the choice."""
    from torch.nn.utils.rnn import PackedSequence

    from .kernels._env import setting
    from .kernels.numba import gemm
    if isinstance(input, PackedSequence):
        T, B = len(input.batch_sizes), int(input.batch_sizes[0])
    elif input.dim() == 2:
        T, B = input.shape[0], 1
    else:
        T, B = input.shape[:2]
        if module.batch_first:
            T, B = B, T
    G = {"LSTM": 4, "GRU": 3}.get(module.mode, 1) * module.hidden_size
    P = getattr(module, "proj_size", 0) or module.hidden_size
    macs = gemm.layer_grads_macs(T, B, G, module.input_size, P)
    provider = gemm.layer_gemm_provider(dtype, macs)
    choice = gemm.layer_gemm_choice(dtype, macs)
    auto = setting(gemm.LAYER_GEMM_ENV, "auto") == "auto"
    if provider == "numba" and macs < gemm.TORCH_GEMM_MIN_MACS:
        why = f"{macs} multiply-adds, under {gemm.TORCH_GEMM_MIN_MACS}: one compiled launch"
    elif auto and _torch.are_deterministic_algorithms_enabled():
        why = "deterministic algorithms: the tile, untimed"
    elif choice is not None and auto:
        why = (f"{gemm.size_class(macs)} calls, timed "
               + " vs ".join(f"{k} {v * 1e3:.2f} ms" for k, v in choice[1].items()))
    else:
        why = f"{gemm.LAYER_GEMM_ENV}={provider}"
    return f"layer-gradient GEMMs: {provider} ({why})"


def empty_cache():
    """Release the CPU backend's cached scratch buffers that no tensor uses any more.

    The numba backend keeps a layer's big internal buffers (saved gates and cell states,
    the gates' gradients) for reuse, up to ``RNNFAST_SCRATCH_POOL_MB`` MiB (default
    1024; 0: none kept), so that every call does not fault in fresh pages
    (``kernels/numba/_host.py``, the scratch pool). Buffers still saved for a backward
    stay. Like ``torch.cuda.empty_cache``, this only returns memory to the system."""
    import sys

    host = sys.modules.get(f"{__name__}.kernels.numba._host")
    if host is not None:
        host.empty_cache()


def set_triton_tf32(enabled):
    """Allow TF32 for the float32 recurrent products of the Triton kernels (default off;
    None: follow the environment variable RNNFAST_TRITON_TF32)."""
    dispatch.kernel_module("triton").set_tf32(enabled)


# Modules saved whole (torch.save(model)) load with torch.load(weights_only=True):
# the classes are allow-listed for torch's weights-only unpickler.
import torch as _torch  # noqa: E402

_torch.serialization.add_safe_globals([RNN, LSTM, GRU])
