"""torch.library custom ops: one recurrent layer direction, forward and backward.

Each op runs the input projection GEMM, the kernel's recurrence, and (backward) the
weight-gradient and input-gradient GEMMs, all over every time step at once::

    forward:   xp = x @ W_ih^T + b_ih + b_hh;  y, h_n(, c_n) = <cell>_fwd(xp, ...)
    backward:  dxp, dh0(, dc0) = <cell>_bwd(...)
               dW_hh = dxp^T h_prev;  dW_ih = dxp^T x;  db = sum dxp;  dx = dxp W_ih
               (LSTM with proj_size: dW_hr = dh^T (o * tanh c))

The GEMMs are opaque to autograd because they live inside the backward op. On the CPU
they run on the numba backend's own AVX-512 GEMM (kernels/numba/gemm.py, the same
register tile as the recurrences' per-step product), not torch.mm: MKL runs AVX2 code
on this project's AMD EPYC (Zen 5) machines, 91-109 GFLOP/s per core on the layer GEMMs,
against 240-260 for the tile.

``probe`` (float64 [T] or None) is the gradient-norm telemetry hook: it does not affect
the outputs, and its gradient is the kernel's per-step ||dL/dh_t||.

Kernels are registered per device (``register_kernel('cpu')`` / ``('cuda')``), the
``backend`` argument picks numba or Triton inside, and ``register_fake`` gives shapes
to torch.compile, so ``torch.compile(fullgraph=True)`` traces through without a break.
"""

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .dispatch import kernels

_EMPTY = (0,)


def _cpu_gemm(t):
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _mm_tn(a, b):
    """a^T @ b for a [N, G], b [N, K]: a sum over N = T*B rows (the weight gradients),
    in float64 across blocks of rows on the CPU (long float32 sums drift)."""
    if _cpu_gemm(a):
        from .kernels.numba import matmul_tn
        return matmul_tn(a, b)
    return a.t() @ b


def _projection(x, w_ih, b_ih, b_hh):
    if _cpu_gemm(x):
        from .kernels.numba import project
        return project(x, w_ih, b_ih + b_hh if b_ih is not None else None)
    T, B, I = x.shape
    xp = x.reshape(T * B, I) @ w_ih.t()
    if b_ih is not None:
        xp += b_ih + b_hh
    return xp.view(T, B, -1)


def _recurrent_weight_grad(dxp, y, h0, lengths, reverse):
    """(Non-CPU devices; the CPU's is kernels.numba.layer_grads.)
    dW_hh = sum_t dxp_t^T h_{t-1}, without materialising h_{t-1}: y shifted by one step
    is a contiguous view, and the steps whose previous state is h0 add one small GEMM.
    Forward: h_{t-1} = y[t-1], and h0 at t = 0. Reverse: h_{t-1} = y[t+1], and h0 at each
    row's first processed step t = lengths[b] - 1 (where y[t+1] is padding, i.e. 0)."""
    T, B, G = dxp.shape
    P = y.shape[2]
    if reverse:
        inner, outer = dxp[:-1], y[1:]
        if lengths is None:
            first = dxp[T - 1]
        else:
            idx = lengths.to(device=dxp.device, dtype=torch.int64) - 1
            first = dxp[idx, torch.arange(B, device=dxp.device)]
    else:
        inner, outer, first = dxp[1:], y[:-1], dxp[0]
    dw = first.t() @ h0
    if T > 1:
        dw += inner.reshape(-1, G).t() @ outer.reshape(-1, P)
    return dw


def _weight_grads(dxp, x, y, h0, w_ih, lengths, reverse, has_bias, need_dx):
    if _cpu_gemm(dxp):  # all four in one numba call
        from .kernels.numba import layer_grads
        return layer_grads(dxp, x, y, h0, w_ih, lengths, reverse, has_bias, need_dx)
    T, B, G = dxp.shape
    d2 = dxp.reshape(T * B, G)
    dw_hh = _recurrent_weight_grad(dxp, y, h0, lengths, reverse)
    dw_ih = d2.t() @ x.reshape(T * B, -1)
    db = d2.sum(0) if has_bias else dxp.new_empty(_EMPTY)
    dx = (d2 @ w_ih).view(T, B, -1) if need_dx else dxp.new_empty(_EMPTY)
    return dx, dw_ih, dw_hh, db


# ---------------------------------------------------------------- Elman RNN

@torch.library.custom_op("rnnfast::rnn_layer", mutates_args=())
def rnn_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], h0: Tensor, lengths: Optional[Tensor],
              reverse: bool, activation: int, negative_slope: float, backend: str,
              probe: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """x [T, B, I] -> y [T, B, H], h_n [B, H]. ``activation``: rnnfast.kernels.TANH/..."""
    raise NotImplementedError(f"rnnfast::rnn_layer has no kernel for device {x.device}")


@rnn_layer.register_kernel("cpu")
@rnn_layer.register_kernel("cuda")
def _rnn_layer_impl(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation,
                    negative_slope, backend, probe):
    xp = _projection(x, w_ih, b_ih, b_hh)
    return kernels(backend).rnn_fwd(xp, w_hh, h0, lengths, reverse, activation,
                                    negative_slope, reuse_xp=True)


@rnn_layer.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation, negative_slope,
      backend, probe):
    return x.new_empty((x.shape[0], x.shape[1], w_hh.shape[1])), torch.empty_like(h0)


@torch.library.custom_op("rnnfast::rnn_layer_bwd", mutates_args=())
def rnn_layer_bwd(dy: Tensor, dh_n: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor,
                  h0: Tensor, y: Tensor, lengths: Optional[Tensor], reverse: bool,
                  activation: int, negative_slope: float, backend: str, has_bias: bool,
                  need_dx: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> dx [T, B, I] (or [0]), dW_ih, dW_hh, db [H] (or [0]), dh0 [B, H], norms [T] f64."""
    raise NotImplementedError(f"rnnfast::rnn_layer_bwd has no kernel for device {x.device}")


@rnn_layer_bwd.register_kernel("cpu")
@rnn_layer_bwd.register_kernel("cuda")
def _rnn_layer_bwd_impl(dy, dh_n, x, w_ih, w_hh, h0, y, lengths, reverse, activation,
                        negative_slope, backend, has_bias, need_dx):
    dxp, dh0, norms = kernels(backend).rnn_bwd(dy, dh_n, y, w_hh, lengths, reverse,
                                               activation, negative_slope)
    dx, dw_ih, dw_hh, db = _weight_grads(dxp, x, y, h0, w_ih, lengths, reverse,
                                         has_bias, need_dx)
    return dx, dw_ih, dw_hh, db, dh0, norms


@rnn_layer_bwd.register_fake
def _(dy, dh_n, x, w_ih, w_hh, h0, y, lengths, reverse, activation, negative_slope,
      backend, has_bias, need_dx):
    T, B, _ = x.shape
    return (torch.empty_like(x) if need_dx else x.new_empty(_EMPTY),
            torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty((w_hh.shape[0],) if has_bias else _EMPTY),
            torch.empty_like(h0), x.new_empty((T,), dtype=torch.float64))


def _rnn_setup_context(ctx, inputs, output):
    (x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation, negative_slope,
     backend, probe) = inputs
    ctx.save_for_backward(x, w_ih, w_hh, h0, output[0], lengths)
    ctx.config = (reverse, activation, negative_slope, backend, b_ih is not None,
                  probe is not None)
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None


def _rnn_backward(ctx, dy, dh_n):
    x, w_ih, w_hh, h0, y, lengths = ctx.saved_tensors
    reverse, activation, negative_slope, backend, has_bias, has_probe = ctx.config
    dy = torch.zeros_like(y) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    bwd = _rnn_layer_bwd_impl if _plain(dy, x) else rnn_layer_bwd
    dx, dw_ih, dw_hh, db, dh0, norms = bwd(
        dy, dh_n, x, w_ih, w_hh, h0, y, lengths, reverse, activation, negative_slope,
        backend, has_bias, ctx.needs_input_grad[0])
    db_ih, db_hh = (db, db.clone()) if has_bias else (None, None)
    return (dx if ctx.needs_input_grad[0] else None, dw_ih, dw_hh, db_ih, db_hh, dh0,
            None, None, None, None, None, norms if has_probe else None)


rnn_layer.register_autograd(_rnn_backward, setup_context=_rnn_setup_context)


# ---------------------------------------------------------------- LSTM

@torch.library.custom_op("rnnfast::lstm_layer", mutates_args=())
def lstm_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
               b_hh: Optional[Tensor], w_hr: Optional[Tensor], h0: Tensor, c0: Tensor,
               lengths: Optional[Tensor], reverse: bool, backend: str,
               probe: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x [T, B, I] -> y [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H], cs [T, B, H]
    (the last two are saved for backward)."""
    raise NotImplementedError(f"rnnfast::lstm_layer has no kernel for device {x.device}")


@lstm_layer.register_kernel("cpu")
@lstm_layer.register_kernel("cuda")
def _lstm_layer_impl(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend,
                     probe):
    xp = _projection(x, w_ih, b_ih, b_hh)
    return kernels(backend).lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths, reverse,
                                     reuse_xp=True)


@lstm_layer.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend, probe):
    T, B, _ = x.shape
    G, P = w_hh.shape
    return (x.new_empty((T, B, P)), torch.empty_like(h0), torch.empty_like(c0),
            x.new_empty((T, B, G)), x.new_empty((T, B, G // 4)))


@torch.library.custom_op("rnnfast::lstm_layer_bwd", mutates_args=())
def lstm_layer_bwd(dy: Tensor, dh_n: Tensor, dc_n: Tensor, x: Tensor, w_ih: Tensor,
                   w_hh: Tensor, w_hr: Optional[Tensor], h0: Tensor, c0: Tensor, y: Tensor,
                   gates: Tensor, cs: Tensor, lengths: Optional[Tensor], reverse: bool,
                   backend: str, has_bias: bool, need_dx: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> dx, dW_ih, dW_hh, db, dW_hr ([0] without projection), dh0, dc0, norms [T] f64."""
    raise NotImplementedError(f"rnnfast::lstm_layer_bwd has no kernel for device {x.device}")


@lstm_layer_bwd.register_kernel("cpu")
@lstm_layer_bwd.register_kernel("cuda")
def _lstm_layer_bwd_impl(dy, dh_n, dc_n, x, w_ih, w_hh, w_hr, h0, c0, y, gates, cs,
                         lengths, reverse, backend, has_bias, need_dx):
    dxp, dh0, dc0, dhs, norms = kernels(backend).lstm_bwd(
        dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, reverse)
    dx, dw_ih, dw_hh, db = _weight_grads(dxp, x, y, h0, w_ih, lengths, reverse,
                                         has_bias, need_dx)
    if w_hr is not None:
        T, B, H = cs.shape
        r = gates[..., 3 * H:] * torch.tanh(cs)  # o * tanh(c), [T, B, H]
        dw_hr = _mm_tn(dhs.reshape(T * B, -1), r.reshape(T * B, H))
    else:
        dw_hr = x.new_empty(_EMPTY)
    return dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0, norms


@lstm_layer_bwd.register_fake
def _(dy, dh_n, dc_n, x, w_ih, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse,
      backend, has_bias, need_dx):
    T = x.shape[0]
    return (torch.empty_like(x) if need_dx else x.new_empty(_EMPTY),
            torch.empty_like(w_ih), torch.empty_like(w_hh),
            x.new_empty((w_hh.shape[0],) if has_bias else _EMPTY),
            torch.empty_like(w_hr) if w_hr is not None else x.new_empty(_EMPTY),
            torch.empty_like(h0), torch.empty_like(c0),
            x.new_empty((T,), dtype=torch.float64))


def _lstm_setup_context(ctx, inputs, output):
    (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend, probe) = inputs
    y, _, _, gates, cs = output
    ctx.save_for_backward(x, w_ih, w_hh, w_hr, h0, c0, y, gates, cs, lengths)
    ctx.config = (reverse, backend, b_ih is not None, probe is not None)
    # gates and cs are outputs only to be saved: without this, autograd fills a [T, B, 4H]
    # and a [T, B, H] buffer with zeros for their gradients on every backward (1.7 ms of
    # an 8 ms fwd+bwd at B=32, H=128).
    ctx.set_materialize_grads(False)


def _lstm_backward(ctx, dy, dh_n, dc_n, _dgates, _dcs):
    x, w_ih, w_hh, w_hr, h0, c0, y, gates, cs, lengths = ctx.saved_tensors
    reverse, backend, has_bias, has_probe = ctx.config
    dy = torch.zeros_like(y) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n.contiguous()
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n.contiguous()
    bwd = _lstm_layer_bwd_impl if _plain(dy, x) else lstm_layer_bwd
    dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0, norms = bwd(
        dy, dh_n, dc_n, x, w_ih, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse,
        backend, has_bias, ctx.needs_input_grad[0])
    db_ih, db_hh = (db, db.clone()) if has_bias else (None, None)
    return (dx if ctx.needs_input_grad[0] else None, dw_ih, dw_hh, db_ih, db_hh,
            dw_hr if w_hr is not None else None, dh0, dc0, None, None, None,
            norms if has_probe else None)


lstm_layer.register_autograd(_lstm_backward, setup_context=_lstm_setup_context)


# ---------------------------------------------------------------- eager entry points

def _plain(*tensors):
    """True in plain eager execution: not under torch.compile (Dynamo / AOTAutograd),
    and no tensor subclass (FakeTensor, FunctionalTensor, ...) among the arguments."""
    return not torch.compiler.is_compiling() and all(
        t is None or type(t) is torch.Tensor for t in tensors)


class _EagerRNN(torch.autograd.Function):
    """Eager twin of rnnfast::rnn_layer: the same implementation, setup and backward,
    without the custom op's Python-side dispatch (which measured 35 us per layer
    forward + backward, 9% of an LSTM step at B=1, H=32). Traced code keeps the op."""

    @staticmethod
    def forward(ctx, *inputs):
        out = _rnn_layer_impl(*inputs)
        _rnn_setup_context(ctx, inputs, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        return _rnn_backward(ctx, *grads)


class _EagerLSTM(torch.autograd.Function):
    """Eager twin of rnnfast::lstm_layer (see :class:`_EagerRNN`)."""

    @staticmethod
    def forward(ctx, *inputs):
        out = _lstm_layer_impl(*inputs)
        _lstm_setup_context(ctx, inputs, out)
        ctx.mark_non_differentiable(out[3], out[4])  # gates, cs: saved for backward only
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        return _lstm_backward(ctx, *grads)


def rnn(*args):
    """rnnfast::rnn_layer's arguments -> (y, h_n): the op, or its eager twin."""
    x, h0, probe = args[0], args[5], args[11]
    return (_EagerRNN.apply if _plain(x, h0, probe) else rnn_layer)(*args)


def lstm(*args):
    """rnnfast::lstm_layer's arguments -> (y, h_n, c_n, gates, cs): the op, or its eager
    twin."""
    x, h0, c0, probe = args[0], args[6], args[7], args[11]
    return (_EagerLSTM.apply if _plain(x, h0, c0, probe) else lstm_layer)(*args)
