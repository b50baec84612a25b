"""The Triton backend's layer-GEMM entry points: a layer's products over all time steps
at once, as torch matmuls (cuBLAS on CUDA; the same contract as
:mod:`rnnfast.kernels.numba.gemm`, whose docstrings give the sums). Only the per-step
recurrence is a Triton kernel."""

import torch


def matmul_tn(a, b):
    """a [N, G]^T @ b [N, K] -> [G, K]."""
    return a.t() @ b


def project(x, w_ih, bias=None):
    """x [T, B, I] @ w_ih^T [I, G] (+ bias [G]) -> xp [T, B, G]."""
    T, B, I = x.shape
    x2 = x.reshape(T * B, I)
    xp = torch.addmm(bias, x2, w_ih.t()) if bias is not None else x2 @ w_ih.t()
    return xp.view(T, B, w_ih.shape[0])  # not -1: B or T may be 0


def _recurrent_weight_grad(dgh, y, h0, lengths, reverse):
    """dW_hh = sum_t dgh_t^T h_{t-1}, without materialising h_{t-1}: y shifted by one
    step is a contiguous view, and the steps whose previous state is h0 add one small
    GEMM. Forward: h_{t-1} = y[t-1], and h0 at t = 0. Reverse: h_{t-1} = y[t+1], and h0
    at each row's first processed step t = lengths[b] - 1 (where y[t+1] is padding, 0)."""
    T, B, G = dgh.shape
    P = y.shape[2]
    if reverse:
        inner, outer = dgh[:-1], y[1:]
        if lengths is None:
            first = dgh[T - 1]
        else:
            idx = lengths.to(device=dgh.device, dtype=torch.int64) - 1
            first = dgh[idx, torch.arange(B, device=dgh.device)]
    else:
        inner, outer, first = dgh[1:], y[:-1], dgh[0]
    dw = first.t() @ h0
    if T > 1:
        dw += inner.reshape(-1, G).t() @ outer.reshape(-1, P)
    return dw


def layer_grads(dxp, x, y, h0, w_ih, lengths=None, reverse=False, has_bias=True,
                need_dx=True, dgh=None):
    """-> dx [T, B, I] (or [0]), dW_ih [G, I], dW_hh [G, P], db_ih [G], db_hh [G] (both
    [0] without bias); dgh None means the same as dxp."""
    T, B, G = dxp.shape
    same = dgh is None
    dgh = dxp if same else dgh
    d2 = dxp.reshape(T * B, G)
    dw_hh = _recurrent_weight_grad(dgh, y, h0, lengths, reverse)
    dw_ih = d2.t() @ x.reshape(T * B, x.shape[-1])
    empty = dxp.new_empty((0,))
    db_ih = d2.sum(0) if has_bias else empty
    db_hh = (db_ih.clone() if same else dgh.reshape(T * B, G).sum(0)) if has_bias else empty
    dx = (d2 @ w_ih).view(T, B, w_ih.shape[1]) if need_dx else empty
    return dx, dw_ih, dw_hh, db_ih, db_hh
