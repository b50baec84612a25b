"""The one place an implementation is chosen for a layer call.

Resolution order (first match wins), for a requested backend and the call's tensors:

1. ``backend`` argument of the module, when not ``'auto'``;
2. the environment variable ``RNNFAST_BACKEND`` (``numba``, ``triton`` or ``torch``),
   which replaces ``'auto'``;
3. ``'auto'``: Triton for CUDA tensors, numba for CPU tensors; where the chosen kernels
   cannot run the call (a width past the Triton kernels' limit), the reference loop,
   with a warning.

While a cell's numba kernels are not compiled yet on this machine, ``'auto'`` (with
``RNNFAST_BACKEND`` unset) runs torch.nn's own operator for that cell's calls (``'torch.nn'``;
the reference loop where torch.nn has none) and compiles them in a background process
(:mod:`rnnfast.warmup`); a module passes its ``cell`` for that. Where torch.nn's operator
measured faster than the numba kernels at a call's shape (the module says so:
``torch_op_wins``: a forward-only float32 LSTM at the batch and hidden sizes of
rnnfast.modules.TORCH_OP_LSTM_INFERENCE_REGIONS), ``'auto'`` runs it too.

Whatever was asked, three situations take the reference loop (``rnnfast.reference``,
differentiated by autograd, so every autograd feature works): a call inside a
``torch.func`` transform (grad, vjp, jacrev, vmap: the fused kernels have no batching
rule), a call inside ``torch.autograd.forward_ad.dual_level()`` (no jvp rule), and
``backend='torch'``; half inputs run it in float32. An explicit backend that
cannot run the call raises :class:`RNNArgumentError` saying why. Half-precision inputs
(float16, bfloat16) on a backend whose kernels run only float32/float64 run in float32
(state and accumulation), with the results cast back, as the Triton kernels do on CUDA.

Each kernel backend module (``rnnfast.kernels.numba``, ``rnnfast.kernels.triton``)
declares what it runs through ``unsupported(device, dtype, width)``; nothing else in
rnnfast looks at devices or backend names.
"""

import warnings
from typing import NamedTuple, Optional

import torch

from .kernels._env import getenv, setting

BACKENDS = ("auto", "numba", "triton", "torch")
ENV_VAR = "RNNFAST_BACKEND"
HALF_DTYPES = (torch.float16, torch.bfloat16)


class RNNArgumentError(ValueError, RuntimeError):
    """Bad argument to an rnnfast module. A ValueError *and* a RuntimeError, so code
    written against torch.nn (which raises either, depending on the check) still catches it."""


class Backend(NamedTuple):
    """A resolved implementation for one call.

    name : 'numba' | 'triton' | 'torch' (the reference loop) | 'torch.nn' (torch.nn's own
        fused operator, while the numba kernels compile in the background)
    kernels : the kernel backend module (None for the reference loop and torch.nn)
    compute_dtype : the dtype the kernels run in (the input's, or float32 for half inputs
        on a backend without half kernels)
    reason : one line saying why this implementation was chosen
    requested : the backend asked for ('auto', ...): a fused op resolves it again from
        its tensors when it runs, so traced and exported programs follow their inputs
    """
    name: str
    kernels: Optional[object]
    compute_dtype: torch.dtype
    reason: str
    requested: str = "auto"


def check_backend_name(backend, what="backend"):
    if backend not in BACKENDS:
        raise RNNArgumentError(f"{what} must be one of {BACKENDS}, got {backend!r}")


def kernel_module(name):
    """``rnnfast.kernels.<name>`` for 'numba' / 'triton' (imported on first use, so a
    machine without Triton never imports it)."""
    if name == "numba":
        from .kernels import numba as mod
    elif name == "triton":
        from .kernels import triton as mod
    else:
        raise RNNArgumentError(f"no kernel module for backend {name!r}")
    return mod


def _requested(backend):
    check_backend_name(backend)
    if backend == "auto":
        env = setting(ENV_VAR, "auto")
        check_backend_name(env, f"environment variable {ENV_VAR}")
        return env, f"{ENV_VAR}={env}" if env != "auto" else "auto"
    return backend, f"backend={backend!r}"


def in_functorch_transform():
    """True inside torch.func.grad / vjp / jacrev / jacfwd / vmap.

    ``torch._C._are_functorch_transforms_active()``, not ``peek_interpreter_stack() is
    not None``: torch.compile's tracer (dynamo, torch 2.13) wraps the interpreter stack
    it peeks as an object variable, and ``is not None`` on it is always True, so every
    compiled module took the reference loop instead of rnnfast's ops."""
    return torch._C._are_functorch_transforms_active()


def in_forward_ad():
    """True inside ``torch.autograd.forward_ad.dual_level()``: dual tensors may reach the
    layer, and the fused kernels have no forward-mode (jvp) rule."""
    return torch.autograd.forward_ad._current_level >= 0


_RESOLVED = {}  # (backend, RNNFAST_BACKEND, device, dtype, width) -> a kernel Backend


def resolve(backend, device, dtype, width, warn=True, cell=None, torch_op=False,
            start=True, torch_op_wins=None):
    """The implementation for a call with tensors on ``device`` of ``dtype`` and the
    layer's widest state (max(hidden_size, proj_size)). Raises RNNArgumentError when an
    explicitly requested backend cannot run it.

    ``cell`` ('rnn', 'lstm', 'gru'; a module's call) lets ``'auto'`` step aside while that
    cell's numba kernels compile in the background: to torch.nn's operator when the
    caller can run it (``torch_op``), else to the reference loop; ``start=False`` only
    reports (rnnfast.explain). ``torch_op_wins`` (a reason, from the module) says that at
    this call's shape torch.nn's own operator measured faster than the numba kernels:
    ``'auto'`` then runs it.

    A layer call resolves up to three times (module, op, backward): a choice of fused
    kernels is remembered per (backend, RNNFAST_BACKEND, device, dtype, width); the
    reference loop, errors and fallback warnings are worked out on every call."""
    if in_functorch_transform():
        _requested(backend)  # a bad name raises here too
        return _reference(dtype, "inside a torch.func transform: the reference loop "
                                 "(autograd)")._replace(requested=backend)
    if in_forward_ad():
        _requested(backend)
        return _reference(dtype, "inside torch.autograd.forward_ad.dual_level(): the "
                                 "reference loop (autograd)")._replace(requested=backend)
    # Under torch.compile the choice is worked out afresh and nothing module-level is
    # read: dynamo guards on what a traced function reads, and a guard on _RESOLVED's
    # keys (or the warm-up's ready set) failed once the first compiled call had filled
    # it, so the second call with the same input recompiled (and with fullgraph=True
    # under a recompile limit of 1, raised).
    compiling = torch.compiler.is_compiling()
    key = (backend, getenv(ENV_VAR), device, dtype, width)
    hit = None if compiling else _RESOLVED.get(key)
    if hit is None:
        hit = _resolve(backend, device, dtype, width, warn)._replace(requested=backend)
        if hit.kernels is not None and not compiling:
            _RESOLVED[key] = hit
    if cell is not None and hit.name == "numba" and not compiling:
        w = _WARMUP or _import_warmup()
        key = (cell, hit.compute_dtype)
        if key not in w._READY and key not in w._SYNC:  # the common case costs ~0.2 us
            hit = _while_compiling(hit, cell, torch_op, start)
    if torch_op_wins is not None and hit.name == "numba" and _auto_may_step_aside(hit):
        hit = Backend("torch.nn", None, hit.compute_dtype, f"auto: {torch_op_wins}",
                      hit.requested)
    return hit


_WARMUP = None  # rnnfast.warmup, imported on the first call that needs it (numba's)


def _import_warmup():
    global _WARMUP
    from . import warmup
    _WARMUP = warmup
    return warmup


def _auto_may_step_aside(be):
    """True when ``be`` answers a plain 'auto' (RNNFAST_BACKEND unset) outside
    torch.compile and the JIT, so another implementation may run the call."""
    return _requested(be.requested)[0] == "auto" and not (
        torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting())


def _while_compiling(be, cell, torch_op, start):
    """``be`` (numba kernels), or what runs instead while they compile in the background
    (rnnfast.warmup.kernels_status). Only for 'auto' with RNNFAST_BACKEND unset; never
    while torch.compile or the JIT traces (a traced graph would keep the stand-in for
    good), nor under torch.use_deterministic_algorithms(True) (a run that switches
    implementations part-way is not reproducible bit for bit)."""
    if not _auto_may_step_aside(be) or torch.are_deterministic_algorithms_enabled():
        return be
    why = _WARMUP.kernels_status(cell, be.compute_dtype, start=start)
    if why is None:
        return be
    if torch_op:
        return Backend("torch.nn", None, be.compute_dtype,
                       f"auto: {why}; meanwhile torch.nn's own operator", be.requested)
    return _reference(be.compute_dtype, f"auto: {why}; meanwhile the reference loop "
                                        f"(autograd)")._replace(requested=be.requested)


def _resolve(backend, device, dtype, width, warn):
    name, why = _requested(backend)
    if name == "torch":
        return _reference(dtype, f"{why}: the reference loop (autograd)")
    auto = name == "auto"
    if auto:
        name = "triton" if device.type == "cuda" else "numba"
    try:
        mod = kernel_module(name)
    except ImportError as e:
        if not auto:
            raise RNNArgumentError(f"backend {name!r} cannot be imported: {e}") from e
        return _fallback(f"backend {name!r} cannot be imported ({e})", dtype, warn)
    compute = dtype
    problem = mod.unsupported(device, dtype, width)
    if problem is not None and dtype in HALF_DTYPES \
            and mod.unsupported(device, torch.float32, width) is None:
        compute, problem = torch.float32, None
    if problem is not None:
        if not auto:
            raise RNNArgumentError(problem)
        # a meta tensor holds no data: nothing is computed, so no speed to warn about
        return _fallback(problem, dtype, warn and device.type != "meta")
    what = f"{why}: {name} kernels on {device.type}"
    if compute != dtype:
        what += f", computing in {compute} for {dtype} inputs"
    return Backend(name, mod, compute, what)


def _reference(dtype, reason):
    """The reference loop; half inputs run it in float32 (state and sums), as the kernels
    do, and as torch.nn's CPU kernels do."""
    if dtype in HALF_DTYPES:
        return Backend("torch", None, torch.float32, f"{reason}, computing in float32 "
                                                     f"for {dtype} inputs")
    return Backend("torch", None, dtype, reason)


def _fallback(problem, dtype, warn):
    msg = f"rnnfast: backend='auto' runs the torch reference loop here ({problem})"
    if warn:
        warnings.warn(msg, stacklevel=4)
    return _reference(dtype, msg)
