"""GRU recurrence on the CPU (numba): forward and backprop through time.

Equations, gate order r, z, n as torch.nn.GRU, for each step t in processing order::

    gh_t = h_{t-1} @ W_hh^T                       xp = x @ W_ih^T + b_ih + [b_hr, b_hz, 0]
    r = sigmoid(xp_r + gh_r);  z = sigmoid(xp_z + gh_z)
    hn = gh_n + b_hn;  n = tanh(xp_n + r * hn)
    h_t = (1 - z) * n + z * h_{t-1}  =  n + z * (h_{t-1} - n)

b_hn cannot join the projection's biases: it is multiplied by r, so the kernels take it
separately. Backward (g = dh_t, the total gradient reaching h_t: dy_t plus the recurrent
term)::

    dn = (g - g * z) * (1 - n^2)          (gradient of n's pre-activation)
    dz = g * (h_{t-1} - n) * z (1 - z);  dr = dn * hn * r (1 - r)
    dxp_t = [dr, dz, dn]                  (gradient of xp_t)
    dgh_t = [dr, dz, dn * r]              (of gh_t + [0, 0, b_hn]: for dW_hh and db_hh)
    dh_{t-1} = dgh_t @ W_hh + g * z

g - g * z is g (1 - z) as torch's autograd forms it from n + z * (h_{t-1} - n) (g from
the sum, -(g z) from the difference): an infinite g gives NaN there, as in torch.nn,
where g (1 - z) would give an infinity.

Dimensions: T steps, B rows, H hidden units, G = 3H gate columns of xp and W_hh.
Saved for backward: gates [T, B, 4H] = (r, z, n, hn) and y (h_{t-1} of an active step
is y at the previous processing step, or h0 at the row's first step). Sequence b is
active at time t iff t < lengths[b]; an inactive row keeps its state, writes y = 0 and
gates = 0, and passes its gradient through unchanged (dxp = dgh = 0 there).

Rows of the batch never interact: the parallel drivers give each thread its own slice
of rows for the whole time loop (as rnn.py and lstm.py). The per-step product is the
register-tile GEMM of gemm.py against W_hh packed once per call, on the active rows only
when a thread's rows are sorted by length (packed.py); the pointwise step is one pass
over the units on the vectors of vec.py. A forward that will not be differentiated
(``train=False``) does not save the gates.
"""

import math

import numpy as np
import torch
from numba import njit, prange

from .._check import backward_dims, check_backward_args, check_layer_args, check_recurrence_args
from . import _host
from . import vec as V
from .config import INLINE, JIT, JIT_PARALLEL
from .gemm import (
    _plain_ints,
    a_scratch,
    bwd_panels,
    columns_product,
    gate_columns_product,
    layer_gemm_provider,
    layer_grads_macs,
    layer_grads_padded,
    mm_into,
    pack_bt,
    project,
    project_part,
    projection_bias,
    recurrent_operands,
    step_product,
)
from .norms import chunk_norms, sqrt_in_place, sum_of_squares
from .packed import active_rows, chunk_bounds, copy_rows, is_sorted, unit_bounds
from .tile import NV


@njit(**INLINE)
def _gru_cell(xp, gh, b_hn, h, gates, save, xo, zo, go, ho, j, n):
    """The cell at one vector of n units (unit j on), shared by the row and the column
    kernels: gates from xp (flat offset xo), gh (zo) and b_hn, h_{t-1} from h (ho); when
    ``save`` (r, z, n, hn) stored at go in gates. Returns h_t."""
    H = b_hn.shape[0]
    rg = V.sigmoid(V.load(xp, xo, n) + V.load(gh, zo, n))
    zg = V.sigmoid(V.load(xp, xo + H, n) + V.load(gh, zo + H, n))
    hn = V.load(gh, zo + 2 * H, n) + V.load(b_hn, j, n)
    ng = V.tanh(V.fma(rg, hn, V.load(xp, xo + 2 * H, n)))
    if save:
        V.store(gates, go, n, rg)
        V.store(gates, go + H, n, zg)
        V.store(gates, go + 2 * H, n, ng)
        V.store(gates, go + 3 * H, n, hn)
    return V.fma(zg, V.load(h, ho, n) - ng, ng)


@njit(**INLINE)
def _gru_cell_bwd(gates, dxp, dgh, dz, go, xo, zo, g, hp, n):
    """The cell's backward at one vector of n units, shared by the row and the column
    kernels: from the saved (r, z, n, hn) (flat offset go), the gradient g reaching h_t
    and h_{t-1} = hp, the gate gradients stored in dxp and dgh (xo) and dz (zo).
    Returns the direct path's term of dh_{t-1}, g * z. n's gradient in torch's form
    (see the module docstring)."""
    H = gates.shape[1] // 4
    rg = V.load(gates, go, n)
    zg = V.load(gates, go + H, n)
    ng = V.load(gates, go + 2 * H, n)
    hn = V.load(gates, go + 3 * H, n)
    dn = (g - g * zg) * (1.0 - ng * ng)
    dzp = g * (hp - ng) * zg * (1.0 - zg)
    drp = dn * hn * rg * (1.0 - rg)
    dnh = dn * rg
    V.store(dxp, xo, n, drp)
    V.store(dxp, xo + H, n, dzp)
    V.store(dxp, xo + 2 * H, n, dn)
    V.store(dgh, xo, n, drp)
    V.store(dgh, xo + H, n, dzp)
    V.store(dgh, xo + 2 * H, n, dnh)
    V.store(dz, zo, n, drp)
    V.store(dz, zo + H, n, dzp)
    V.store(dz, zo + 2 * H, n, dnh)
    return g * zg


@njit(**JIT)
def _gru_fwd_rows(xp, w_hh_t, z0, b_hn, h0, lengths, off, dense, reverse, y, h_n, gates,
                  save, b0, b1):
    """Forward recurrence for batch rows [b0, b1): writes their rows of y [R,H], h_n
    [B,H] and, when ``save``, gates [R,4H] (else it may be empty and is not touched).
    Row arrays [R, *]: step t of batch row b is row off[t] + b; ``dense``: every (t, b)
    has a row (padded: an inactive one gets y = 0, gates = 0), else only the active ones
    (packed rows). All arrays C-contiguous, b_hn [H] (zeros when the layer has no
    bias); offsets flat."""
    T, G = off.shape[0], xp.shape[1]
    L = V.lanes(xp)  # vector lanes: 16 float32 / 8 float64
    H = G // 3
    G4 = 4 * H
    nb = b1 - b0
    h = np.empty((nb, H), dtype=xp.dtype)  # [nb, H] running h
    h_pk = a_scratch(h)  # h packed for the product (gemm.mm_into)
    copy_rows(h, 0, h0, b0, b1 - b0)
    gh = np.empty((nb, G), dtype=xp.dtype)  # [nb, G] h_{t-1} @ W_hh^T
    prefix = is_sorted(lengths, b0, b1)  # the active rows are a prefix (packed.py)
    for s in range(T):
        t = T - 1 - s if reverse else s
        na = active_rows(lengths, b0, b1, t, prefix)
        step_product(s, h, w_hh_t, gh, h_pk, z0, na)
        for rr in range(nb):
            b = b0 + rr
            row = off[t] + b
            if t < lengths[b]:
                for j in range(0, H, L):
                    n = min(L, H - j)
                    ho = rr * H + j
                    hv = _gru_cell(xp, gh, b_hn, h, gates, save, row * G + j, rr * G + j,
                                   row * G4 + j, ho, j, n)
                    V.store(h, ho, n, hv)
                    V.store(y, row * H + j, n, hv)
            elif dense:
                if save:
                    for k in range(G4):
                        gates[row, k] = 0
                for j in range(H):
                    y[row, j] = 0
    copy_rows(h_n, b0, h, 0, b1 - b0)


@njit(**JIT)
def _gru_bwd_rows(dy, dh_n, y, gates, h0, w_hh, lengths, off, dense, reverse,
                  dxp, dgh, dh0, sqsum, b0, b1):
    """BPTT for rows [b0, b1): writes their rows of dxp, dgh [R,3H] (row arrays as
    :func:`_gru_fwd_rows`), dh0 [B,H] and sqsum[t] = ||dL/dh_t||^2 over those rows
    (float64)."""
    T, H = off.shape[0], dy.shape[1]
    L = V.lanes(dy)
    G = 3 * H
    G4 = 4 * H
    nb = b1 - b0
    dh = np.empty((nb, H), dtype=dy.dtype)  # [nb, H] total gradient reaching h_t
    copy_rows(dh, 0, dh_n, b0, b1 - b0)
    dz = np.empty((nb, G), dtype=dy.dtype)  # [nb, G] this step's dgh rows
    dz_pk = a_scratch(dz)
    back = np.empty((nb, H), dtype=dy.dtype)  # [nb, H] dgh @ W_hh
    sq = np.empty(H, dtype=np.float64)  # [H] per-unit sums of squares (this step, my rows)
    prefix = is_sorted(lengths, b0, b1)  # the active rows are a prefix (packed.py)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp = t + 1 if reverse else t - 1  # the step processed before t
        na = active_rows(lengths, b0, b1, t, prefix)
        sq[:] = 0.0
        for rr in range(nb):
            b = b0 + rr
            row = off[t] + b
            if t < lengths[b]:
                # h_{t-1} is h0 at the row's first step (t = 0 forward; t = T - 1 or
                # lengths[b] - 1 reversed), else y at the previous processing step.
                first = not 0 <= tp < lengths[b]
                for j in range(0, H, L):
                    n = min(L, H - j)
                    ho = rr * H + j
                    go = row * G4 + j
                    g = V.load(dh, ho, n) + V.load(dy, row * H + j, n)
                    V.add_squares(sq, j, n, g)
                    hp = V.load(h0, b * H + j, n) if first else \
                        V.load(y, (off[tp] + b) * H + j, n)
                    # the direct path h_{t-1} -> h_t; the product's term is added below
                    V.store(dh, ho, n, _gru_cell_bwd(gates, dxp, dgh, dz, go, row * G + j,
                                                     rr * G + j, g, hp, n))
            else:
                for k in range(G):
                    dz[rr, k] = 0
                if dense:
                    for k in range(G):
                        dxp[row, k] = 0
                        dgh[row, k] = 0
        sqsum[t] = sum_of_squares(sq)
        if s == T - 1 and dh0.shape[0] == 0:
            break  # no dh_0 asked for: the last product would feed nothing else
        mm_into(dz[:na], w_hh, back[:na], dz_pk)
        for rr in range(na):
            if t < lengths[b0 + rr]:
                for j in range(0, H, L):
                    n = min(L, H - j)
                    ho = rr * H + j
                    V.store(dh, ho, n, V.load(dh, ho, n) + V.load(back, ho, n))
    if dh0.shape[0] > 0:
        copy_rows(dh0, b0, dh, 0, b1 - b0)


@njit(**JIT)
def _gru_fwd_cols(xp, w_hh_t, z0, b_hn, h, hnext, gh, lengths, off, dense, t, s, na, u0,
                  u1, y, gates, save):
    """One step of the column-split forward (:func:`gru_fwd_kernel_parallel`; as
    lstm._lstm_fwd_cols): hidden units [u0, u1) of every row, whole panels of w_hh_t in
    each gate. Reads h [B, H] (h_{t-1} of every row), writes hnext [B, H] (h_t at these
    units; an inactive row's carried over), gh [B, G] there, and their y and gates as
    :func:`_gru_fwd_rows` does, each element in the same order: bitwise its results."""
    G = xp.shape[1]
    H = G // 3
    G4 = 4 * H
    L = V.lanes(xp)
    gate_columns_product(s, h, na, w_hh_t, z0, gh, 3, u0, u1)
    for b in range(h.shape[0]):
        row = off[t] + b
        if t < lengths[b]:
            for j in range(u0, u1, L):
                n = min(L, u1 - j)
                ho = b * H + j
                hv = _gru_cell(xp, gh, b_hn, h, gates, save, row * G + j, b * G + j,
                               row * G4 + j, ho, j, n)
                V.store(hnext, ho, n, hv)
                V.store(y, row * H + j, n, hv)
        else:
            for j in range(u0, u1):
                hnext[b, j] = h[b, j]
            if dense:
                if save:
                    for k in range(4):
                        for j in range(k * H + u0, k * H + u1):
                            gates[row, j] = 0
                for j in range(u0, u1):
                    y[row, j] = 0


@njit(**JIT)
def _gru_bwd_cols_back(dz, w_hh, back, dh, lengths, t, na, u0, u1):
    """The column-split BPTT's product for units [u0, u1) (whole panels of w_hh):
    back[:na, u0:u1] = dz[:na] @ W_hh[:, u0:u1] (dz: every row's dgh of step t), added
    to dh there for the rows active at t, as :func:`_gru_bwd_rows` does after its step."""
    H = back.shape[1]
    L = V.lanes(back)
    columns_product(dz, na, w_hh, back, u0, u1)
    for b in range(na):
        if t < lengths[b]:
            for j in range(u0, u1, L):
                n = min(L, u1 - j)
                ho = b * H + j
                V.store(dh, ho, n, V.load(dh, ho, n) + V.load(back, ho, n))


@njit(**JIT)
def _gru_bwd_cols(dy, y, gates, h0, lengths, off, dense, t, tp, dh, dz, sq, dxp, dgh, u0,
                  u1):
    """One step of the column-split BPTT (:func:`gru_bwd_kernel_parallel`) at units
    [u0, u1) of every row: sq[u0:u1] (the step's per-unit sums of squares), dxp, dgh and
    dz at these units' three gate columns, and dh's direct term there; each element as
    :func:`_gru_bwd_rows` computes it, in the same order."""
    H = dy.shape[1]
    G = 3 * H
    G4 = 4 * H
    L = V.lanes(dy)
    for j in range(u0, u1):
        sq[j] = 0.0
    for b in range(dh.shape[0]):
        row = off[t] + b
        if t < lengths[b]:
            first = not 0 <= tp < lengths[b]
            for j in range(u0, u1, L):
                n = min(L, u1 - j)
                ho = b * H + j
                go = row * G4 + j
                g = V.load(dh, ho, n) + V.load(dy, row * H + j, n)
                V.add_squares(sq, j, n, g)
                hp = V.load(h0, b * H + j, n) if first else \
                    V.load(y, (off[tp] + b) * H + j, n)
                V.store(dh, ho, n, _gru_cell_bwd(gates, dxp, dgh, dz, go, row * G + j,
                                                 b * G + j, g, hp, n))
        else:
            for k in range(3):
                for j in range(k * H + u0, k * H + u1):
                    dz[b, j] = 0
                    if dense:
                        dxp[row, j] = 0
                        dgh[row, j] = 0


@njit(**JIT)
def gru_fwd_kernel(x, w_ih, b_ih, b_hh, xp, w_hh, b_hn, h0, lengths, off, dense, reverse,
                   y, h_n, gates, save, nproj, nchunks, ncols, wih_p, whh_p):
    """Writes y [R,H], h_n [B,H] and, when ``save``, gates [R,4H] = (r, z, n, hn). x
    [R, I] with w_ih [3H, I] and b_ih, b_hh [3H] (or [0]: no bias): the layer's input
    projection x @ W_ih^T + b_ih + [b_hr, b_hz, 0] is written into xp first; x [0, 0]:
    xp holds it already. w_hh [3H, H] as torch stores it. nproj, nchunks, ncols: the
    parallel kernel's splits (ncols > 1: the column split). wih_p, whh_p: room for the
    weights' panels (_host.panel_buffer; or empty stand-ins)."""
    if x.shape[0] > 0:
        project_part(x, pack_bt(w_ih, wih_p),
                     projection_bias(b_ih, b_hh, 2 * w_hh.shape[1]), xp, 0, 1)
    b0, _ = _plain_ints(h0.shape[0])  # as the parallel kernel's bounds are typed
    w_hh_t, z0 = recurrent_operands(h0, w_hh, whh_p, off.shape[0])
    _gru_fwd_rows(xp, w_hh_t, z0, b_hn, h0, lengths, off, dense, reverse, y, h_n, gates,
                  save, b0, h0.shape[0])


@njit(**JIT_PARALLEL)
def gru_fwd_kernel_parallel(x, w_ih, b_ih, b_hh, xp, w_hh, b_hn, h0, lengths, off, dense,
                            reverse, y, h_n, gates, save, nproj, nchunks, ncols, wih_p,
                            whh_p):
    """:func:`gru_fwd_kernel` on threads: the projection's rows in ``nproj`` parts, then
    each chunk of batch rows (packed.chunk_bounds) runs the whole time loop."""
    if x.shape[0] > 0:
        wp = pack_bt(w_ih, wih_p)
        bias = projection_bias(b_ih, b_hh, 2 * w_hh.shape[1])
        for p in prange(nproj):
            project_part(x, wp, bias, xp, p, nproj)
    w_hh_t, z0 = recurrent_operands(h0, w_hh, whh_p, off.shape[0])
    if ncols > 1:  # every row, the hidden units split (lstm_fwd_kernel_parallel)
        T = off.shape[0]
        B, H = h0.shape
        panel = NV * V.lanes(xp)  # units per panel of W_hh^T
        hb = np.empty((2, B, H), dtype=xp.dtype)  # h_{t-1}, h_t by the step's parity
        gh = np.empty((B, 3 * H), dtype=xp.dtype)
        copy_rows(hb[0], 0, h0, 0, B)
        prefix = is_sorted(lengths, 0, B)
        for s in range(T):
            t = T - 1 - s if reverse else s
            na = active_rows(lengths, 0, B, t, prefix)
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, H, panel)
                _gru_fwd_cols(xp, w_hh_t, z0, b_hn, hb[s % 2], hb[1 - s % 2], gh, lengths,
                              off, dense, t, s, na, u0, u1, y, gates, save)
        copy_rows(h_n, 0, hb[T % 2], 0, B)
        return
    bounds = chunk_bounds(lengths, nchunks)
    for c in prange(nchunks):
        _gru_fwd_rows(xp, w_hh_t, z0, b_hn, h0, lengths, off, dense, reverse, y, h_n, gates,
                      save, bounds[c], bounds[c + 1])


@njit(**JIT)
def gru_bwd_kernel(dy, dh_n, y, gates, h0, w_hh, lengths, off, dense, reverse, dxp, dgh,
                   dh0, norms, ncols):
    """Writes dxp [R,3H], dgh [R,3H], dh0 [B,H] and norms [T] (float64)."""
    b0, _ = _plain_ints(dh_n.shape[0])  # as the parallel kernel's bounds are typed
    _gru_bwd_rows(dy, dh_n, y, gates, h0, w_hh, lengths, off, dense, reverse, dxp, dgh,
                  dh0, norms, b0, dh_n.shape[0])
    sqrt_in_place(norms)


@njit(**JIT_PARALLEL)
def gru_bwd_kernel_parallel(dy, dh_n, y, gates, h0, w_hh, lengths, off, dense, reverse,
                            dxp, dgh, dh0, norms, ncols, nchunks):
    """Batch-parallel BPTT; per-chunk squared norms summed in chunk order afterwards
    (deterministic). ncols > 1: the column split (lstm_bwd_kernel_parallel)."""
    T = off.shape[0]
    if ncols > 1:
        B, H = dh_n.shape
        panel = NV * V.lanes(dy)  # units per panel of W_hh
        dh = np.empty((B, H), dtype=dy.dtype)
        copy_rows(dh, 0, dh_n, 0, B)
        dzb = np.empty((2, B, 3 * H), dtype=dy.dtype)  # the step's dgh, the previous one's
        back = np.empty((B, H), dtype=dy.dtype)
        sq = np.empty(H, dtype=np.float64)
        prefix = is_sorted(lengths, 0, B)
        t_prev = 0
        na_prev = 0
        for s in range(T):
            t = s if reverse else T - 1 - s
            tp = t + 1 if reverse else t - 1
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, H, panel)
                if s > 0:
                    _gru_bwd_cols_back(dzb[1 - s % 2], w_hh, back, dh, lengths, t_prev,
                                       na_prev, u0, u1)
                _gru_bwd_cols(dy, y, gates, h0, lengths, off, dense, t, tp, dh,
                              dzb[s % 2], sq, dxp, dgh, u0, u1)
            norms[t] = math.sqrt(sum_of_squares(sq))
            t_prev = t
            na_prev = active_rows(lengths, 0, B, t, prefix)
        if dh0.shape[0] > 0 and T > 0:
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, H, panel)
                _gru_bwd_cols_back(dzb[1 - T % 2], w_hh, back, dh, lengths, t_prev,
                                   na_prev, u0, u1)
            copy_rows(dh0, 0, dh, 0, B)
        return
    bounds = chunk_bounds(lengths, nchunks)
    sq = np.zeros((nchunks, T), dtype=np.float64)
    for c in prange(nchunks):
        _gru_bwd_rows(dy, dh_n, y, gates, h0, w_hh, lengths, off, dense, reverse, dxp, dgh,
                      dh0, sq[c], bounds[c], bounds[c + 1])
    chunk_norms(sq, norms)


# ---------------------------------------------------------------- launchers

DTYPES = (torch.float32, torch.float64)


def gru_fwd(xp, w_hh, b_hn, h0, lengths=None, reverse=False, reuse_xp=False, train=True,
            offsets=None):
    """Forward recurrence of a GRU (torch.nn.GRU's cell, gate order r, z, n).

    Parameters
    ----------
    xp : Tensor [T, B, 3H]   input projection x @ W_ih^T + b_ih + [b_hr, b_hz, 0]
    w_hh : Tensor [3H, H]
    b_hn : Tensor [H] or None   the n gate's recurrent bias (inside r * (...)); None: 0
    h0 : Tensor [B, H]
    lengths : int64 Tensor [B] or None   sequence b is active for t < lengths[b]
    reverse : bool          process t = T-1 .. 0
    reuse_xp : bool         accepted for the common launcher signature; the GRU's gates
                            (4H columns) do not fit in xp (3H), so they always get a
                            fresh [T, B, 4H] buffer and xp is left untouched
    train : bool            False for a forward that will not be differentiated: the
                            gates (read only by :func:`gru_bwd`) are neither allocated
                            nor written
    offsets : int64 Tensor [T] or None   packed rows, as ``rnn_fwd``: xp [M, 3H]; y
                            [M, H] and gates [M, 4H] are then packed rows too

    All tensors share one dtype (float32 or float64) and live on the CPU.

    Returns
    -------
    y : Tensor [T, B, H]  (0 where t >= lengths[b]),  h_n : Tensor [B, H],
    gates : Tensor [T, B, 4H]  (r, z, n, hn = h_{t-1} W_hn^T + b_hn; 0 where inactive),
    saved for :func:`gru_bwd`; with train=False an empty [0] tensor of xp's dtype

    Raises ValueError on a bad shape, dtype or device, or lengths outside [1, T]
    (kernels._check).
    """
    T, B, G = check_recurrence_args("gru", xp, w_hh, h0, None, None, lengths,
                                    0, 0.0, DTYPES, "numba", b_hn=b_hn, offsets=offsets)
    return _forward(None, None, None, None, xp, w_hh, b_hn, h0, lengths, reverse, train,
                    offsets, T, B, G)


def gru_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, lengths=None, reverse=False, train=True,
                  offsets=None):
    """A whole GRU layer direction's forward: the input projection x @ W_ih^T + b_ih +
    [b_hr, b_hz, 0] and the recurrence (with b_hn = b_hh[2H:]), in one compiled call
    where the projection runs on the tile (:func:`gemm.layer_gemm_provider`; else
    torch.mm's projection, then the recurrence): as lstm.lstm_layer_fwd.

    x [T, B, I] (or, with ``offsets``, a PackedSequence's rows [M, I]: y and gates are
    then [M, *]), w_ih [3H, I], b_ih and b_hh [3H] or both None; the rest and the
    returns as :func:`gru_fwd`. Bitwise the same results as :func:`gemm.project` then
    :func:`gru_fwd`.

    Raises ValueError on a bad shape, dtype or device (kernels._check)."""
    check_layer_args("gru", x, w_ih, b_ih, b_hh, w_hh, h0, None, None, lengths, 0, 0.0,
                     DTYPES, "numba", offsets)
    return gru_layer_fwd_unchecked(x, w_ih, b_ih, b_hh, w_hh, h0, lengths, reverse, train,
                                   offsets)


def gru_layer_fwd_unchecked(x, w_ih, b_ih, b_hh, w_hh, h0, lengths=None, reverse=False,
                            train=True, offsets=None):
    """:func:`gru_layer_fwd` without its checks, for a caller that made them already
    (a module's own checks cover every operand: rnnfast.ops' eager path)."""
    T, B = _host.steps_and_batch(x, lengths, offsets)
    I, G = x.shape[-1], w_hh.shape[0]
    H = G // 3
    b_hn = b_hh[2 * H:] if b_hh is not None else None
    if layer_gemm_provider(x.dtype, math.prod(x.shape[:-1]) * I * G) == "torch":
        bias = torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]]) \
            if b_ih is not None else None
        xp = project(x, w_ih, bias, scratch=True)
        return _forward(None, None, None, None, xp, w_hh, b_hn, h0, lengths, reverse, train,
                        offsets, T, B, G)
    return _forward(x, w_ih, b_ih, b_hh, None, w_hh, b_hn, h0, lengths, reverse, train,
                    offsets, T, B, G)


def _forward(x, w_ih, b_ih, b_hh, xp, w_hh, b_hn, h0, lengths, reverse, train, offsets,
             T, B, G):
    """:func:`gru_fwd` (xp given, x None) or :func:`gru_layer_fwd` (x given, xp None: the
    kernel projects x into a scratch buffer first)."""
    H = G // 3
    like = xp if xp is not None else x
    lead = tuple(like.shape[:-1])  # (T, B) padded, (M,) packed
    y = _host.empty(like, (*lead, H))
    h_n = h0.new_empty(h0.shape)  # contiguous, as torch.nn's, whatever h0's strides
    if train:
        gates, gates_np = _host.scratch(like, (*lead, 4 * H))
        gates_np = gates_np.reshape(-1, 4 * H)
    else:
        gates = _host.no_tensor(like)
        gates_np = _host.no_rows(like)
    off, dense = _host.row_layout(offsets, T, B)
    nchunks = _host.recurrence_chunks(B, B * H * G, T)
    ncols = _host.recurrence_columns(B, H, G, like.element_size(), T)
    if ncols > 1:
        nchunks = 1
    x_np, w_ih_np, b_ih_np, b_hh_np, nproj = _host.layer_input(x, w_ih, b_ih, b_hh, like, G)
    xn = _host.rows(xp) if xp is not None else _host.scratch(x, (math.prod(lead), G))[1]
    b_hn_np = _host.as_numpy(b_hn) if b_hn is not None else np.zeros(H, dtype=xn.dtype)
    w_hh_np = _host.as_numpy(w_hh)
    _host.launch(gru_fwd_kernel, gru_fwd_kernel_parallel, nchunks,
                 x_np, w_ih_np, b_ih_np, b_hh_np, xn, w_hh_np, b_hn_np,
                 _host.as_numpy(h0), _host.lengths_array(lengths, T, B), off, dense,
                 bool(reverse), _host.rows(y), h_n.numpy(), gates_np, bool(train), nproj,
                 nchunks, ncols, *_host.transposed_panels(h0, w_ih_np, w_hh_np),
                 threads=max(nproj, nchunks, ncols))
    return y, h_n, gates


def gru_bwd(dy, dh_n, y, gates, h0, w_hh, lengths=None, reverse=False, offsets=None,
            need_dh0=True):
    """BPTT of a GRU.

    Parameters
    ----------
    dy : Tensor [T, B, H]    gradient of y;  dh_n : Tensor [B, H]  gradient of h_n
    y, gates : from :func:`gru_fwd`;  h0, w_hh, lengths, reverse, offsets: as in the
    forward (packed rows: dy, y, gates, dxp and dgh are [M, *])

    Returns
    -------
    dxp : Tensor [T, B, 3H]   gradient of xp
    dgh : Tensor [T, B, 3H]   gradient of the recurrent product h_{t-1} W_hh^T + b_hh
                              (= dxp in the r and z blocks, dxp_n * r in the n block;
                              0 where inactive): pass it as ``layer_grads(dgh=...)``
    dh0 : Tensor [B, H]
    norms : float64 Tensor [T]   ||dL/dh_t|| over batch and units, t = input position

    ``need_dh0`` False (h_0 needs no gradient): dh0 is not computed (the last
    step's product h-gradient x W_hh is skipped) and comes back as [0, H].

    Raises ValueError on a bad shape, dtype or device (kernels._check).
    """
    T, B, lead = backward_dims("gru_bwd[numba]", y, dh_n, lengths, offsets)
    H = y.shape[-1]
    check_backward_args("gru_bwd[numba]", y,
                        (("dy", dy, (*lead, H)), ("dh_n", dh_n, (B, H)),
                         ("gates", gates, (*lead, 4 * H)), ("h0", h0, (B, H)),
                         ("w_hh", w_hh, (3 * H, H))))
    dxp_np, dgh_np, dh0, norms = _bwd(_host.rows(dy), dh_n, _host.rows(y),
                                      _host.rows(gates), h0, w_hh, lengths, offsets,
                                      reverse, T, B, need_dh0)
    shape = (*lead, 3 * H)
    return (torch.from_numpy(dxp_np).view(shape), torch.from_numpy(dgh_np).view(shape), dh0,
            norms)


def _bwd(dy_np, dh_n, y_np, gates_np, h0, w_hh, lengths, offsets, reverse, T, B,
         need_dh0=True):
    """The launch of :func:`gru_bwd` on checked operands (dy, y and gates as numpy rows
    [R, *]) -> (dxp and dgh as numpy rows [R, 3H], dh0, norms)."""
    R, H = y_np.shape
    dxp_np = _host.pool_array((R, 3 * H), y_np.dtype)
    dgh_np = _host.pool_array((R, 3 * H), y_np.dtype)
    dh0 = dh_n.new_empty((B if need_dh0 else 0, H))
    norms, norms_np = _host.scratch(dh0, (T,), torch.float64)
    off, dense = _host.row_layout(offsets, T, B)
    ncols = _host.recurrence_columns(B, H, 3 * H, dh0.element_size(), T)
    _host.launch(gru_bwd_kernel, gru_bwd_kernel_parallel,
                 ncols if ncols > 1 else _host.recurrence_chunks(B, B * H * 3 * H, T),
                 dy_np, _host.as_numpy(dh_n), y_np, gates_np, _host.as_numpy(h0),
                 bwd_panels(w_hh, dh0, T, need_dh0), _host.lengths_array(lengths, T, B), off,
                 dense, bool(reverse), dxp_np, dgh_np, dh0.numpy(), norms_np, ncols)
    return dxp_np, dgh_np, dh0, norms


def gru_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y, gates, reverse=False, has_bias=True,
                  need_dx=True, need_dh0=True):
    """A whole GRU layer direction's backward in one launcher: :func:`gru_bwd`, then
    :func:`gemm.layer_grads` on its dxp and dgh, for a padded layer without lengths; as
    lstm.lstm_layer_bwd (bitwise the two launchers' results, less host work).

    dy [T, B, H], dh_n [B, H], x [T, B, I], w_ih [3H, I], w_hh [3H, H], h0 [B, H],
    y [T, B, H], gates from :func:`gru_fwd`. Returns (dx [T, B, I] (or [0]), dW_ih,
    dW_hh, db_ih, db_hh ([0] without bias), dh0 ([0, H] when not need_dh0, as
    :func:`gru_bwd`), norms float64 [T]), or None where the layer GEMMs go to torch.mm
    (:func:`gemm.layer_gemm_provider`).

    Raises ValueError on a bad shape, dtype or device (kernels._check)."""
    if y.dim() != 3 or x.dim() != 3:
        return None  # the two launchers' own checks and messages
    T, B, H = y.shape
    G, I = 3 * H, x.shape[2]
    check_backward_args("gru_layer_bwd[numba]", y, (
        ("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)), ("gates", gates, (T, B, 4 * H)),
        ("w_hh", w_hh, (G, H)), ("x", x, (T, B, I)), ("w_ih", w_ih, (G, I)),
        ("h0", h0, (B, H))))
    return gru_layer_bwd_unchecked(dy, dh_n, x, w_ih, w_hh, h0, y, gates, reverse, has_bias,
                                   need_dx, need_dh0)


def gru_layer_bwd_unchecked(dy, dh_n, x, w_ih, w_hh, h0, y, gates, reverse=False,
                            has_bias=True, need_dx=True, need_dh0=True):
    """:func:`gru_layer_bwd` on padded operands of the shapes it checks (dy may be any
    strides), without the checks (rnnfast.ops' eager path: the forward's own operands)."""
    T, B, H = y.shape
    G, I = 3 * H, x.shape[2]
    if layer_gemm_provider(y.dtype, layer_grads_macs(T * B, 1, G, I, H, need_dx)) \
            != "numba":
        return None
    N = T * B
    y_np = _host.as_numpy(y).reshape(N, H)
    dxp, dgh, dh0, norms = _bwd(_host.as_numpy(dy).reshape(N, H), dh_n, y_np,
                                _host.as_numpy(gates).reshape(N, 4 * H), h0, w_hh, None,
                                None, reverse, T, B, need_dh0)
    return (*layer_grads_padded(dxp, dgh, x, y_np, h0, w_ih, reverse, has_bias, need_dx),
            dh0, norms)
