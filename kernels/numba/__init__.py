"""numba CPU backend: launchers that check, allocate and launch (see ``kernels/__init__``).

Each launcher takes and returns CPU torch tensors (float32 or float64, [T, B, *]
time-major) and shares memory with numpy (``Tensor.numpy()``), so no copy is made
beyond making an input contiguous.
"""

import os
import sys

import numba
import numpy as np
import torch

from .._check import check_recurrence_args
from . import gemm
from .config import PARALLEL_GEMM_MIN_MACS, PARALLEL_MIN_MACS, PARALLEL_MIN_ROWS
from .lstm import (lstm_bwd_kernel, lstm_bwd_kernel_parallel, lstm_fwd_kernel,
                   lstm_fwd_kernel_parallel)
from .rnn import (rnn_bwd_kernel, rnn_bwd_kernel_parallel, rnn_fwd_kernel,
                  rnn_fwd_kernel_parallel)

DTYPES = (torch.float32, torch.float64)
__all__ = ["rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "matmul_tn", "project",
           "layer_grads", "DTYPES"]


def _np(t):
    return t.detach().contiguous().numpy()


_HUGE = 2 << 20  # x86-64 huge page
_MADV_HUGEPAGE = 14


def _madvise():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
        fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return fn
    except (OSError, AttributeError):
        return None


_MADVISE = (_madvise() if sys.platform.startswith("linux")
            and os.environ.get("RNNFAST_HUGEPAGES", "1") != "0" else None)


def _empty(like, shape, dtype=None):
    """like.new_empty(shape), its big buffers backed by transparent huge pages where the
    kernel allows it (madvise, as numpy does for its own arrays). torch's CPU allocator
    maps big buffers fresh on every call, and the first write to each 4 KiB page then
    faults: a [100, 64, 2048] float32 buffer measured 13 ms to allocate and fill, against
    3 ms with huge pages and 1.3 ms to refill it (this machine's THP mode: madvise)."""
    t = like.new_empty(shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if _MADVISE is not None and nbytes >= 2 * _HUGE:
        start = -(-t.data_ptr() // _HUGE) * _HUGE
        end = (t.data_ptr() + nbytes) // _HUGE * _HUGE
        if end > start:
            _MADVISE(start, end - start, _MADV_HUGEPAGE)
    return t


def _threads(parts):
    """Threads for ``parts`` independent pieces of work: torch's thread count rules."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, parts))


def _chunks(B, macs_per_step):
    """How many threads split the batch: 1 (serial) for small problems."""
    if macs_per_step < PARALLEL_MIN_MACS:
        return 1
    return _threads(B // PARALLEL_MIN_ROWS)


def _launch(serial, parallel, nchunks, *args):
    if nchunks == 1:
        return serial(*args)
    numba.set_num_threads(nchunks)
    return parallel(*args, nchunks)


def _gemm_threads(rows, macs):
    """Threads for a layer GEMM: 1 below PARALLEL_GEMM_MIN_MACS, else up to one per 4
    row tiles."""
    if macs < PARALLEL_GEMM_MIN_MACS:
        return 1
    return _threads(rows // (4 * gemm.MR))


def matmul_tn(a, b):
    """a^T @ b for 2-D CPU tensors a [N, G], b [N, K] -> new [G, K]: a sum over N rows
    (float64 across blocks of rows), the G rows of the result split across threads."""
    N, G = a.shape
    out = _empty(a, (G, b.shape[1]))
    _launch(gemm.matmul_tn, gemm.matmul_tn_parallel, _gemm_threads(G, N * G * b.shape[1]),
            _np(a), _np(b), out.numpy())
    return out


def project(x, w_ih, bias=None):
    """A layer's input projection: x [T, B, I] @ w_ih^T [I, G] (+ bias [G]) -> [T, B, G]."""
    T, B, I = x.shape
    G = w_ih.shape[0]
    xp = _empty(x, (T, B, G))
    xn = _np(x)
    _launch(gemm.project, gemm.project_parallel, _gemm_threads(T * B, T * B * I * G),
            xn.reshape(T * B, I), np.ascontiguousarray(_np(w_ih).T),
            _np(bias) if bias is not None else np.empty(0, dtype=xn.dtype),
            xp.numpy().reshape(T * B, G))
    return xp


def layer_grads(dxp, x, y, h0, w_ih, lengths=None, reverse=False, has_bias=True,
                need_dx=True):
    """One layer direction's weight and input gradients from the kernel's dxp, in one
    call: dW_ih = sum dxp^T x, dW_hh = sum_t dxp_t^T h_{t-1}, db = sum dxp, dx = dxp W_ih.

    dxp [T, B, G], x [T, B, I], y [T, B, P] (the layer's output: h_{t-1} is y one step
    back in processing order, or h0 [B, P] at a row's first step). Returns dx [T, B, I]
    (or [0] when not need_dx), dW_ih [G, I], dW_hh [G, P], db [G] (or [0]).
    """
    T, B, G = dxp.shape
    I = x.shape[2]
    P = y.shape[2]
    if not reverse:
        first = dxp[0]
    elif lengths is None:
        first = dxp[T - 1]
    else:  # a reversed row starts at its own last step
        first = dxp[lengths.to(torch.int64) - 1, torch.arange(B)]
    dw_ih = _empty(dxp, (G, I))
    dw_hh = _empty(dxp, (G, P))
    db = dxp.new_empty((G,) if has_bias else (0,))
    dx = _empty(dxp, (T, B, I)) if need_dx else dxp.new_empty((0,))
    N = T * B
    _launch(gemm.layer_grads, gemm.layer_grads_parallel,
            _gemm_threads(G, N * G * (I + P + (I if need_dx else 0))),
            _np(dxp).reshape(N, G), _np(x).reshape(N, I), _np(y).reshape(N, P), _np(h0),
            _np(first), _np(w_ih), not reverse, dw_ih.numpy(), dw_hh.numpy(), db.numpy(),
            dx.numpy().reshape(N if need_dx else 0, I))
    return dx, dw_ih, dw_hh, db


def _packed(w, transpose=False):
    """A weight as the GEMM tile reads it (gemm.pack_b): w^T or w, in column panels."""
    a = _np(w)
    return gemm.pack_b(np.ascontiguousarray(a.T) if transpose else a)


def _no_weight(like):
    """Stands for an absent projection weight: zero panels."""
    return np.zeros((0, 0, 0), dtype=_np(like).dtype)


def _lengths(lengths, T, B):
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    return _np(lengths.to(torch.int64))


def rnn_fwd(xp, w_hh, h0, lengths=None, reverse=False, activation=0, negative_slope=0.01,
            reuse_xp=False):
    """Forward recurrence of an Elman RNN.

    Parameters
    ----------
    xp : Tensor [T, B, H]   input projection x @ W_ih^T + b_ih + b_hh
    w_hh : Tensor [H, H]
    h0 : Tensor [B, H]
    lengths : int64 Tensor [B] or None   sequence b is active for t < lengths[b]
    reverse : bool          process t = T-1 .. 0
    activation : int        kernels.TANH, RELU or LEAKY_RELU
    negative_slope : float  >= 0, used by LEAKY_RELU
    reuse_xp : bool         y may be written over xp (a caller's temporary): each step
                            reads its xp before writing y in the same place

    Returns
    -------
    y : Tensor [T, B, H]  (0 where t >= lengths[b]),  h_n : Tensor [B, H]
    """
    T, B, H = check_recurrence_args("rnn", xp, w_hh, h0, None, None, lengths,
                                    activation, negative_slope, DTYPES, "numba")
    y = xp if reuse_xp and xp.is_contiguous() else _empty(xp, xp.shape)
    h_n = torch.empty_like(h0)
    _launch(rnn_fwd_kernel, rnn_fwd_kernel_parallel, _chunks(B, B * H * H),
            _np(xp), _packed(w_hh, transpose=True), _np(h0), _lengths(lengths, T, B),
            bool(reverse), int(activation), float(negative_slope), y.numpy(), h_n.numpy())
    return y, h_n


def rnn_bwd(dy, dh_n, y, w_hh, lengths=None, reverse=False, activation=0,
            negative_slope=0.01):
    """BPTT of an Elman RNN.

    Parameters: dy [T, B, H] (gradient of y), dh_n [B, H] (gradient of h_n), y [T, B, H]
    (the forward output), the rest as :func:`rnn_fwd`.

    Returns
    -------
    dxp : Tensor [T, B, H], dh0 : Tensor [B, H],
    norms : float64 Tensor [T]   ||dL/dh_t|| over batch and units, t = input position
    """
    T, B, H = y.shape
    for name, t, shape in (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H))):
        if tuple(t.shape) != shape or t.dtype != y.dtype:
            raise ValueError(f"rnn_bwd: {name} must be {y.dtype} of shape {shape}, "
                             f"got {t.dtype} of shape {tuple(t.shape)}")
    dxp = _empty(y, y.shape)
    dh0 = torch.empty_like(dh_n)
    norms = torch.empty(T, dtype=torch.float64)
    _launch(rnn_bwd_kernel, rnn_bwd_kernel_parallel, _chunks(B, B * H * H),
            _np(dy), _np(dh_n), _np(y), _packed(w_hh), _lengths(lengths, T, B), bool(reverse),
            int(activation), float(negative_slope), dxp.numpy(), dh0.numpy(), norms.numpy())
    return dxp, dh0, norms


def lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths=None, reverse=False, reuse_xp=False):
    """Forward recurrence of an LSTM (gate order i, f, g, o).

    Parameters
    ----------
    xp : Tensor [T, B, 4H];  w_hh : Tensor [4H, P];  w_hr : Tensor [P, H] or None
    h0 : Tensor [B, P];  c0 : Tensor [B, H];  lengths, reverse: as :func:`rnn_fwd`
    (P = proj_size when w_hr is given, else H.)
    reuse_xp : the gates may be written over xp (as :func:`rnn_fwd`'s y): saves a
    [T, B, 4H] buffer and its first-touch page faults

    Returns
    -------
    y [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H] (activated), cs [T, B, H]
    """
    T, B, G = check_recurrence_args("lstm", xp, w_hh, h0, c0, w_hr, lengths,
                                    0, 0.0, DTYPES, "numba")
    H = G // 4
    P = h0.shape[1]
    y = _empty(xp, (T, B, P))
    h_n = torch.empty_like(h0)
    c_n = torch.empty_like(c0)
    gates = xp if reuse_xp and xp.is_contiguous() else _empty(xp, xp.shape)
    cs = _empty(xp, (T, B, H))
    w_hr_t = _packed(w_hr, transpose=True) if w_hr is not None else _no_weight(xp)
    _launch(lstm_fwd_kernel, lstm_fwd_kernel_parallel, _chunks(B, B * P * G),
            _np(xp), _packed(w_hh, transpose=True), w_hr_t, _np(h0), _np(c0),
            _lengths(lengths, T, B), bool(reverse), y.numpy(), h_n.numpy(), c_n.numpy(),
            gates.numpy(), cs.numpy())
    return y, h_n, c_n, gates, cs


def lstm_bwd(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths=None, reverse=False):
    """BPTT of an LSTM.

    Parameters: dy [T, B, P], dh_n [B, P], dc_n [B, H]; gates, cs from :func:`lstm_fwd`;
    c0, w_hh, w_hr, lengths, reverse as in the forward.

    Returns
    -------
    dxp [T, B, 4H], dh0 [B, P], dc0 [B, H],
    dhs [T, B, P] (total gradient reaching h_t, for dW_hr; [0] without projection),
    norms : float64 [T]
    """
    T, B, G = gates.shape
    P = dh_n.shape[1]
    proj = w_hr is not None
    dxp = _empty(gates, gates.shape)
    dh0 = torch.empty_like(dh_n)
    dc0 = torch.empty_like(dc_n)
    dhs = _empty(gates, (T, B, P) if proj else (0,))
    norms = torch.empty(T, dtype=torch.float64)
    w_hr_np = _packed(w_hr) if proj else _no_weight(gates)
    _launch(lstm_bwd_kernel, lstm_bwd_kernel_parallel, _chunks(B, B * P * G),
            _np(dy), _np(dh_n), _np(dc_n), _np(gates), _np(cs), _np(c0), _packed(w_hh), w_hr_np,
            _lengths(lengths, T, B), bool(reverse), dxp.numpy(), dh0.numpy(), dc0.numpy(),
            dhs.numpy() if proj else np.empty((0, 0, 0), dtype=_np(gates).dtype),
            norms.numpy())
    return dxp, dh0, dc0, dhs, norms
