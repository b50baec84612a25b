"""LSTM recurrence on the CPU (numba): forward and backprop through time.

Equations, gate order i, f, g, o as torch.nn.LSTM, for each step t in processing order::

    z_t = xp_t + h_{t-1} @ W_hh^T                 xp = x @ W_ih^T + b_ih + b_hh (torch)
    i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g
    r_t = o * tanh(c_t)
    h_t = r_t @ W_hr^T   (proj_size > 0)   or   h_t = r_t

Backward (dh_t is the total gradient reaching h_t: dy_t plus the recurrent term)::

    dr = dh_t @ W_hr  (or dh_t);  dc = dc_carry + dr * o * (1 - tanh(c_t)^2)
    dz_i = dc * g * i(1-i);  dz_f = dc * c_{t-1} * f(1-f);  dz_g = dc * i * (1-g^2)
    dz_o = dr * tanh(c_t) * o(1-o);  dc_carry = dc * f;  dh_{t-1} = dz @ W_hh

Dimensions: T steps, B rows, H hidden units, G = 4H gate columns, P = proj_size or H.
Saved for backward: the activated gates [T, B, G] and the cell states cs [T, B, H].
cs[t] holds the state after step t; an inactive row (t >= lengths[b]) keeps its state,
so cs at an inactive step is the frozen state. That makes "the previous cell state" of
any active step simply cs at the previous processing step (or c0), in both directions.
A forward that will not be differentiated (``train=False``) saves neither.

Rows never interact: the parallel drivers give each thread its own slice of rows for
the whole time loop, and a thread whose rows are sorted by length runs each step's
products on its active rows only (packed.py). A batch of one to three rows with a big
W_hh (_host.recurrence_columns) splits the hidden units instead (the column split,
:func:`_lstm_fwd_cols`, :func:`_lstm_bwd_cols`): every thread runs every row, for its
block of units (whole panels of W_hh^T in each gate), one parallel region per step;
h and the gate gradients are double-buffered, so the next step's product reads the
previous step's complete state while the other threads write the new one. Each
element is computed as in the row kernels, in the same order: bitwise their results.
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
    bptt_columns_product,
    bwd_panels,
    gate_columns_product,
    layer_gemm_provider,
    layer_grads_macs,
    layer_grads_padded,
    mm_into,
    pack_bt,
    panels,
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
def _lstm_cell(xp, z, c, gates, cs, save, xo, zo, co, so, n):
    """The cell at one vector of n units, shared by the row and the column kernels:
    gates from xp (flat offset xo) + z (zo), c (co) updated, and when ``save`` the
    activated gates (at xo in gates) and c_t (so in cs) stored. Returns r = o * tanh(c_t)."""
    H = c.shape[1]
    ig = V.sigmoid(V.load(xp, xo, n) + V.load(z, zo, n))
    fg = V.sigmoid(V.load(xp, xo + H, n) + V.load(z, zo + H, n))
    gg = V.tanh(V.load(xp, xo + 2 * H, n) + V.load(z, zo + 2 * H, n))
    og = V.sigmoid(V.load(xp, xo + 3 * H, n) + V.load(z, zo + 3 * H, n))
    cn = fg * V.load(c, co, n) + ig * gg
    V.store(c, co, n, cn)
    if save:
        V.store(gates, xo, n, ig)
        V.store(gates, xo + H, n, fg)
        V.store(gates, xo + 2 * H, n, gg)
        V.store(gates, xo + 3 * H, n, og)
        V.store(cs, so, n, cn)
    return og * V.tanh(cn)


@njit(**INLINE)
def _lstm_cell_bwd(gates, cs, dc, dz, dxp, go, so, co, zo, cp, d_r, n):
    """The cell's backward at one vector of n units, shared by the row and the column
    kernels: from the saved gates (flat offset go) and c_t (so in cs), c_{t-1} = cp and
    the gradient d_r reaching r_t, dc (co) is carried on and the gate gradients stored
    in dz (zo) and dxp (go)."""
    H = cs.shape[1]
    ig = V.load(gates, go, n)
    fg = V.load(gates, go + H, n)
    gg = V.load(gates, go + 2 * H, n)
    og = V.load(gates, go + 3 * H, n)
    tc = V.tanh(V.load(cs, so, n))
    dcc = V.load(dc, co, n) + d_r * og * (1.0 - tc * tc)
    V.store(dc, co, n, dcc * fg)
    dzi = dcc * gg * ig * (1.0 - ig)
    dzf = dcc * cp * fg * (1.0 - fg)
    dzg = dcc * ig * (1.0 - gg * gg)
    dzo = d_r * tc * og * (1.0 - og)
    V.store(dz, zo, n, dzi)
    V.store(dz, zo + H, n, dzf)
    V.store(dz, zo + 2 * H, n, dzg)
    V.store(dz, zo + 3 * H, n, dzo)
    V.store(dxp, go, n, dzi)
    V.store(dxp, go + H, n, dzf)
    V.store(dxp, go + 2 * H, n, dzg)
    V.store(dxp, go + 3 * H, n, dzo)


@njit(**JIT)
def _lstm_fwd_rows(xp, w_hh_t, z0, w_hr_t, h0, c0, lengths, off, dense, reverse,
                   y, h_n, c_n, gates, cs, save, b0, b1):
    """Forward recurrence for batch rows [b0, b1): writes their rows of y [R,P], h_n
    [B,P], c_n [B,H] and, when ``save``, gates [R,G] and cs [R,H] (else both may be
    empty and are not touched). Row arrays [R, *]: step t of batch row b is row
    off[t] + b; ``dense``: every (t, b) has a row (padded: an inactive one gets y = 0,
    gates = 0, cs = the carried c), else only the active ones (packed rows). All arrays
    C-contiguous; the pointwise step runs on one-register vectors (vec.py), offsets
    flat."""
    T, G = off.shape[0], xp.shape[1]
    L = V.lanes(xp)  # vector lanes: 16 float32 / 8 float64
    H = G // 4
    P = h0.shape[1]
    proj = w_hr_t.shape[0] > 0
    nb = b1 - b0
    h = np.empty((nb, P), dtype=xp.dtype)  # [nb, P] running h
    h_pk = a_scratch(h)  # h packed for the product (gemm.mm_into)
    c = np.empty((nb, H), dtype=xp.dtype)  # [nb, H] running c
    copy_rows(h, 0, h0, b0, b1 - b0)
    copy_rows(c, 0, c0, b0, b1 - b0)
    z = np.empty((nb, G), dtype=xp.dtype)  # [nb, G] h_{t-1} @ W_hh^T
    r = np.zeros((nb, H), dtype=xp.dtype)  # [nb, H] o * tanh(c)
    r_pk = a_scratch(r if proj else r[:0])
    hp = np.empty((nb, P), dtype=xp.dtype)  # [nb, P] r @ W_hr^T
    prefix = is_sorted(lengths, b0, b1)  # the active rows are a prefix (packed.py)
    for s in range(T):
        t = T - 1 - s if reverse else s
        na = active_rows(lengths, b0, b1, t, prefix)
        step_product(s, h, w_hh_t, z, h_pk, z0, na)
        for rr in range(nb):
            b = b0 + rr
            row = off[t] + b
            if t < lengths[b]:
                for j in range(0, H, L):
                    n = min(L, H - j)
                    co = rr * H + j
                    rv = _lstm_cell(xp, z, c, gates, cs, save, row * G + j, rr * G + j, co,
                                    row * H + j, n)
                    if proj:
                        V.store(r, co, n, rv)
                    else:  # h_t = r_t
                        V.store(h, co, n, rv)
                        V.store(y, row * H + j, n, rv)
            elif dense:
                if save:
                    for k in range(G):
                        gates[row, k] = 0
                    for j in range(H):
                        cs[row, j] = c[rr, j]
                if not proj:
                    for p in range(P):
                        y[row, p] = 0
        if proj:  # h_t = r_t @ W_hr^T
            mm_into(r[:na], w_hr_t, hp[:na], r_pk)
            for rr in range(nb):
                b = b0 + rr
                row = off[t] + b
                if t < lengths[b]:
                    for p in range(P):
                        h[rr, p] = hp[rr, p]
                        y[row, p] = hp[rr, p]
                elif dense:
                    for p in range(P):
                        y[row, p] = 0
    copy_rows(h_n, b0, h, 0, b1 - b0)
    copy_rows(c_n, b0, c, 0, b1 - b0)


@njit(**JIT)
def _lstm_fwd_cols(xp, w_hh_t, z0, h, hn, c, z, lengths, off, dense, t, s, na, u0, u1,
                   y, gates, cs, save):
    """One step of the column-split forward (:func:`lstm_fwd_kernel_parallel`, no
    projection): hidden units [u0, u1) of every row, whole panels of w_hh_t in each gate
    (u0, u1 multiples of the panel width). Reads h [B, H] (h_{t-1} of every row: the
    other threads' units too), writes hn [B, H] (h_t, these units; an inactive row's
    carried over), c [B, H] and z [B, G] at these units, and their y, gates and cs as
    :func:`_lstm_fwd_rows` does. Each element is computed as there, in the same order:
    bitwise the row kernel's results."""
    G = xp.shape[1]
    H = G // 4
    L = V.lanes(xp)
    gate_columns_product(s, h, na, w_hh_t, z0, z, 4, u0, u1)
    for b in range(h.shape[0]):
        row = off[t] + b
        if t < lengths[b]:
            for j in range(u0, u1, L):
                n = min(L, u1 - j)
                co = b * H + j
                rv = _lstm_cell(xp, z, c, gates, cs, save, row * G + j, b * G + j, co,
                                row * H + j, n)
                V.store(hn, co, n, rv)
                V.store(y, row * H + j, n, rv)
        else:
            for j in range(u0, u1):
                hn[b, j] = h[b, j]
            if dense:
                if save:
                    for k in range(4):
                        for j in range(k * H + u0, k * H + u1):
                            gates[row, j] = 0
                    for j in range(u0, u1):
                        cs[row, j] = c[b, j]
                for j in range(u0, u1):
                    y[row, j] = 0


@njit(**JIT)
def _lstm_bwd_rows(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, off, dense,
                   reverse, dxp, dh0, dc0, dhs, sqsum, b0, b1):
    """BPTT for rows [b0, b1): writes their rows of dxp, dhs (when projecting; row
    arrays as :func:`_lstm_fwd_rows`), dh0, dc0 and sqsum[t] = ||dL/dh_t||^2 over those
    rows (float64)."""
    T, G = off.shape[0], gates.shape[1]
    L = V.lanes(gates)
    H = G // 4
    P = dh_n.shape[1]
    proj = w_hr.shape[0] > 0
    nb = b1 - b0
    dh = np.empty((nb, P), dtype=dy.dtype)  # [nb, P] total gradient reaching h_t
    dc = np.empty((nb, H), dtype=dy.dtype)  # [nb, H] gradient carried along c
    copy_rows(dh, 0, dh_n, b0, b1 - b0)
    copy_rows(dc, 0, dc_n, b0, b1 - b0)
    # [nb, H] the gradient reaching r_t = o * tanh(c_t): dh @ W_hr, or dh itself
    dr = np.empty((nb, H), dtype=dy.dtype) if proj else dh
    dz = np.empty((nb, G), dtype=dy.dtype)  # [nb, G] pre-activation gate gradients
    dz_pk = a_scratch(dz)  # packed for the products (gemm.mm_into)
    dh_pk = a_scratch(dh if proj else dh[:0])
    back = np.empty((nb, P), dtype=dy.dtype)  # [nb, P] dz @ W_hh
    sq = np.empty(P, dtype=np.float64)  # [P] per-unit sums of squares (this step, my rows)
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
                for p in range(0, P, L):
                    n = min(L, P - p)
                    g = V.load(dh, rr * P + p, n) + V.load(dy, row * P + p, n)
                    V.store(dh, rr * P + p, n, g)
                    V.add_squares(sq, p, n, g)
                if proj:
                    for p in range(P):
                        dhs[row, p] = dh[rr, p]
            elif proj and dense:
                for p in range(P):
                    dhs[row, p] = 0
        sqsum[t] = sum_of_squares(sq)
        if proj:
            mm_into(dh[:na], w_hr, dr[:na], dh_pk)
        for rr in range(nb):
            b = b0 + rr
            row = off[t] + b
            if t < lengths[b]:
                # c_{t-1} is c0 at the row's first step (t = 0 forward; t = T - 1 or
                # lengths[b] - 1 reversed), else cs at the previous processing step.
                first = not 0 <= tp < lengths[b]
                for j in range(0, H, L):
                    n = min(L, H - j)
                    cp = V.load(c0, b * H + j, n) if first else \
                        V.load(cs, (off[tp] + b) * H + j, n)
                    _lstm_cell_bwd(gates, cs, dc, dz, dxp, row * G + j, row * H + j,
                                   rr * H + j, rr * G + j, cp, V.load(dr, rr * H + j, n), n)
            else:
                for k in range(G):
                    dz[rr, k] = 0
                if dense:
                    for k in range(G):
                        dxp[row, k] = 0
        if s == T - 1 and dh0.shape[0] == 0:
            break  # no dh_0 asked for: the last product would feed nothing else
        mm_into(dz[:na], w_hh, back[:na], dz_pk)
        for rr in range(na):
            if t < lengths[b0 + rr]:
                for p in range(P):
                    dh[rr, p] = back[rr, p]
    if dh0.shape[0] > 0:
        copy_rows(dh0, b0, dh, 0, b1 - b0)
    copy_rows(dc0, b0, dc, 0, b1 - b0)


@njit(**JIT)
def _lstm_bwd_cols(dy, gates, cs, c0, lengths, off, dense, t, tp, dh, dc, dz, sq, dxp,
                   u0, u1):
    """One step of the column-split BPTT (:func:`lstm_bwd_kernel_parallel`, no
    projection) at units [u0, u1) of every row: dh += dy and sq[u0:u1] (the step's
    per-unit sums of squares), then the gate gradients dz [B, G] and dxp of these units'
    four gate columns, and dc there; each element as :func:`_lstm_bwd_rows` computes
    it, in the same order."""
    G = gates.shape[1]
    H = G // 4
    L = V.lanes(gates)
    for p in range(u0, u1):
        sq[p] = 0.0
    for b in range(dh.shape[0]):
        row = off[t] + b
        if t < lengths[b]:
            for p in range(u0, u1, L):
                n = min(L, u1 - p)
                g = V.load(dh, b * H + p, n) + V.load(dy, row * H + p, n)
                V.store(dh, b * H + p, n, g)
                V.add_squares(sq, p, n, g)
    for b in range(dh.shape[0]):
        row = off[t] + b
        if t < lengths[b]:
            first = not 0 <= tp < lengths[b]
            for j in range(u0, u1, L):
                n = min(L, u1 - j)
                cp = V.load(c0, b * H + j, n) if first else \
                    V.load(cs, (off[tp] + b) * H + j, n)
                _lstm_cell_bwd(gates, cs, dc, dz, dxp, row * G + j, row * H + j, b * H + j,
                               b * G + j, cp, V.load(dh, b * H + j, n), n)
        else:
            for k in range(4):
                for j in range(k * H + u0, k * H + u1):
                    dz[b, j] = 0
                    if dense:
                        dxp[row, j] = 0


@njit(**JIT)
def lstm_fwd_kernel(x, w_ih, b_ih, b_hh, xp, w_hh, w_hr, h0, c0, lengths, off, dense,
                    reverse, y, h_n, c_n, gates, cs, save, nproj, nchunks, ncols, wih_p,
                    whh_p, whr_p):
    """Writes y [R,P], h_n [B,P], c_n [B,H] and, when ``save``, gates [R,G] and
    cs [R,H] (row arrays: :func:`_lstm_fwd_rows`). x [R, I] with w_ih [G, I] and b_ih,
    b_hh [G] (or [0]: no bias): the layer's input projection x @ W_ih^T + b_ih + b_hh is
    written into xp first; x [0, 0]: xp holds it already. w_hh [G, P] and w_hr [P, H]
    ([0, 0]: none) as torch stores them. nproj, nchunks, ncols: the parallel kernel's
    splits (ncols > 1: the column split). wih_p, whh_p, whr_p: room for the weights'
    panels (_host.panel_buffer; or empty stand-ins)."""
    if x.shape[0] > 0:
        project_part(x, pack_bt(w_ih, wih_p), projection_bias(b_ih, b_hh, b_hh.shape[0]),
                     xp, 0, 1)
    b0, _ = _plain_ints(h0.shape[0])  # as the parallel kernel's bounds are typed
    w_hh_t, z0 = recurrent_operands(h0, w_hh, whh_p, off.shape[0])
    _lstm_fwd_rows(xp, w_hh_t, z0, pack_bt(w_hr, whr_p), h0, c0, lengths, off, dense,
                   reverse, y, h_n, c_n, gates, cs, save, b0, h0.shape[0])


@njit(**JIT_PARALLEL)
def lstm_fwd_kernel_parallel(x, w_ih, b_ih, b_hh, xp, w_hh, w_hr, h0, c0, lengths, off,
                             dense, reverse, y, h_n, c_n, gates, cs, save, nproj,
                             nchunks, ncols, wih_p, whh_p, whr_p):
    """:func:`lstm_fwd_kernel` on threads: the projection's rows in ``nproj`` parts,
    then each chunk of batch rows (packed.chunk_bounds) runs the whole time loop."""
    if x.shape[0] > 0:
        wp = pack_bt(w_ih, wih_p)
        bias = projection_bias(b_ih, b_hh, b_hh.shape[0])
        for p in prange(nproj):
            project_part(x, wp, bias, xp, p, nproj)
    w_hh_t, z0 = recurrent_operands(h0, w_hh, whh_p, off.shape[0])
    w_hr_t = pack_bt(w_hr, whr_p)
    if ncols > 1:  # every row, the hidden units split: one parallel region per step
        T = off.shape[0]
        B, H = c0.shape
        panel = NV * V.lanes(xp)  # units per panel of W_hh^T
        hb = np.empty((2, B, H), dtype=xp.dtype)  # h_{t-1}, h_t by the step's parity
        c = np.empty((B, H), dtype=xp.dtype)
        z = np.empty((B, 4 * H), dtype=xp.dtype)
        copy_rows(hb[0], 0, h0, 0, B)
        copy_rows(c, 0, c0, 0, B)
        prefix = is_sorted(lengths, 0, B)
        for s in range(T):
            t = T - 1 - s if reverse else s
            na = active_rows(lengths, 0, B, t, prefix)
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, H, panel)
                _lstm_fwd_cols(xp, w_hh_t, z0, hb[s % 2], hb[1 - s % 2], c, z, lengths,
                               off, dense, t, s, na, u0, u1, y, gates, cs, save)
        copy_rows(h_n, 0, hb[T % 2], 0, B)
        copy_rows(c_n, 0, c, 0, B)
        return
    bounds = chunk_bounds(lengths, nchunks)
    for c in prange(nchunks):
        _lstm_fwd_rows(xp, w_hh_t, z0, w_hr_t, h0, c0, lengths, off, dense, reverse, y, h_n,
                       c_n, gates, cs, save, bounds[c], bounds[c + 1])


@njit(**JIT)
def lstm_bwd_kernel(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, off, dense,
                    reverse, dxp, dh0, dc0, dhs, norms, ncols):
    """Writes dxp [R,G], dh0 [B,P], dc0 [B,H], norms [T] (float64) and, when
    projecting, dhs [R,P] = the total gradient reaching h_t (for dW_hr)."""
    b0, _ = _plain_ints(dh_n.shape[0])  # as the parallel kernel's bounds are typed
    _lstm_bwd_rows(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, off, dense,
                   reverse, dxp, dh0, dc0, dhs, norms, b0, dh_n.shape[0])
    sqrt_in_place(norms)


@njit(**JIT_PARALLEL)
def lstm_bwd_kernel_parallel(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, off,
                             dense, reverse, dxp, dh0, dc0, dhs, norms, ncols, nchunks):
    """Batch-parallel BPTT; per-chunk squared norms summed in chunk order afterwards.
    ncols > 1 (no projection): the column split instead, every row on every thread,
    each thread a block of hidden units, one parallel region per step (the step's
    product for the previous step's gate gradients, then its own pointwise work)."""
    T = off.shape[0]
    if ncols > 1:
        B, P = dh_n.shape
        G = gates.shape[1]
        panel = NV * V.lanes(gates)  # units per panel of W_hh
        dh = np.empty((B, P), dtype=dy.dtype)
        dc = np.empty((B, P), dtype=dy.dtype)
        copy_rows(dh, 0, dh_n, 0, B)
        copy_rows(dc, 0, dc_n, 0, B)
        dzb = np.empty((2, B, G), dtype=dy.dtype)  # the step's dz, the previous step's
        back = np.empty((B, P), dtype=dy.dtype)
        sq = np.empty(P, dtype=np.float64)
        prefix = is_sorted(lengths, 0, B)
        t_prev = 0
        na_prev = 0
        for s in range(T):
            t = s if reverse else T - 1 - s
            tp = t + 1 if reverse else t - 1
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, P, panel)
                if s > 0:
                    bptt_columns_product(dzb[1 - s % 2], na_prev, w_hh, back, dh, lengths,
                                         t_prev, u0, u1)
                _lstm_bwd_cols(dy, gates, cs, c0, lengths, off, dense, t, tp, dh, dc,
                               dzb[s % 2], sq, dxp, u0, u1)
            norms[t] = math.sqrt(sum_of_squares(sq))
            t_prev = t
            na_prev = active_rows(lengths, 0, B, t, prefix)
        if dh0.shape[0] > 0 and T > 0:
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, P, panel)
                bptt_columns_product(dzb[1 - T % 2], na_prev, w_hh, back, dh, lengths,
                                     t_prev, u0, u1)
            copy_rows(dh0, 0, dh, 0, B)
        copy_rows(dc0, 0, dc, 0, B)
        return
    bounds = chunk_bounds(lengths, nchunks)
    sq = np.zeros((nchunks, T), dtype=np.float64)
    for c in prange(nchunks):
        _lstm_bwd_rows(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, off, dense,
                       reverse, dxp, dh0, dc0, dhs, sq[c], bounds[c], bounds[c + 1])
    chunk_norms(sq, norms)


# ---------------------------------------------------------------- launchers

DTYPES = (torch.float32, torch.float64)


def lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths=None, reverse=False, reuse_xp=False,
             train=True, offsets=None):
    """Forward recurrence of an LSTM (gate order i, f, g, o).

    Parameters
    ----------
    xp : Tensor [T, B, 4H];  w_hh : Tensor [4H, P];  w_hr : Tensor [P, H] or None
    h0 : Tensor [B, P];  c0 : Tensor [B, H];  lengths, reverse: as ``rnn_fwd``
    (P = proj_size when w_hr is given, else H.)
    reuse_xp : the gates may be written over xp (as ``rnn_fwd``'s y): saves a
    [T, B, 4H] buffer and its first-touch page faults
    train : False for a forward that will not be differentiated: gates and cs (read
    only by :func:`lstm_bwd`) are neither allocated nor written
    offsets : packed rows, as ``rnn_fwd``: xp [M, 4H]; y [M, P], gates [M, 4H] and
    cs [M, H] are then packed rows too

    Returns
    -------
    y [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H] (activated), cs [T, B, H];
    with train=False gates and cs are empty [0] tensors of xp's dtype

    Raises ValueError on a bad shape, dtype or device (kernels._check).
    """
    T, B, G = check_recurrence_args("lstm", xp, w_hh, h0, c0, w_hr, lengths,
                                    0, 0.0, DTYPES, "numba", offsets=offsets)
    return _forward(None, None, None, None, xp, w_hh, w_hr, h0, c0, lengths, reverse,
                    reuse_xp, train, offsets, T, B, G)


def lstm_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths=None, reverse=False,
                   train=True, offsets=None):
    """A whole LSTM layer direction's forward: the input projection x @ W_ih^T + b_ih +
    b_hh and the recurrence, in one compiled call where the projection runs on the tile
    (:func:`gemm.layer_gemm_provider`; else torch.mm's projection, then the recurrence).
    One call instead of two saved a layer forward 20-35 us of host work at (B, H) =
    (1, 32) on a 2-core Zen 2 (the projection's launcher, its output buffer, the bias
    sum, packing W_hh apart; BENCHMARKS.md).

    x [T, B, I] (or, with ``offsets``, a PackedSequence's rows [M, I]: y, gates and cs
    are then [M, *]), w_ih [4H, I], b_ih and b_hh [4H] or both None; the rest and the
    returns as :func:`lstm_fwd`. Bitwise the same results as :func:`gemm.project` then
    :func:`lstm_fwd`.

    Raises ValueError on a bad shape, dtype or device (kernels._check)."""
    check_layer_args("lstm", x, w_ih, b_ih, b_hh, w_hh, h0, c0, w_hr, lengths, 0, 0.0,
                     DTYPES, "numba", offsets)
    return lstm_layer_fwd_unchecked(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths,
                                    reverse, train, offsets)


def lstm_layer_fwd_unchecked(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths=None,
                             reverse=False, train=True, offsets=None):
    """:func:`lstm_layer_fwd` without its checks, for a caller that made them already
    (a module's own checks cover every operand: rnnfast.ops' eager path)."""
    T, B = _host.steps_and_batch(x, lengths, offsets)
    I, G = x.shape[-1], w_hh.shape[0]
    if layer_gemm_provider(x.dtype, math.prod(x.shape[:-1]) * I * G) == "torch":
        xp = project(x, w_ih, b_ih + b_hh if b_ih is not None else None, scratch=True)
        return _forward(None, None, None, None, xp, w_hh, w_hr, h0, c0, lengths, reverse,
                        True, train, offsets, T, B, G)
    return _forward(x, w_ih, b_ih, b_hh, None, w_hh, w_hr, h0, c0, lengths, reverse, True,
                    train, offsets, T, B, G)


def _forward(x, w_ih, b_ih, b_hh, xp, w_hh, w_hr, h0, c0, lengths, reverse, reuse_xp,
             train, offsets, T, B, G):
    """:func:`lstm_fwd` (xp given, x None) or :func:`lstm_layer_fwd` (x given, xp None:
    the kernel projects x into the gates buffer, or into a scratch one without train)."""
    H = G // 4
    P = h0.shape[1]
    like = xp if xp is not None else x
    lead = tuple(like.shape[:-1])  # (T, B) padded, (M,) packed
    y = _host.empty(like, (*lead, P))
    h_n = h0.new_empty(h0.shape)  # contiguous, as torch.nn's, whatever h0's strides
    c_n = c0.new_empty(c0.shape)
    if train:
        gates = xp if xp is not None and reuse_xp and xp.is_contiguous() else \
            _host.scratch(like, (*lead, G))[0]
        cs, cs_np = _host.scratch(like, (*lead, H))
        gates_np, cs_np = _host.rows(gates), cs_np.reshape(-1, H)
        xn = _host.rows(xp) if xp is not None else gates_np
    else:
        gates = cs = _host.no_tensor(like)
        gates_np = cs_np = _host.no_rows(like)
        xn = _host.rows(xp) if xp is not None else \
            _host.pool_array((math.prod(lead), G), gates_np.dtype)
    off, dense = _host.row_layout(offsets, T, B)
    nchunks = _host.recurrence_chunks(B, B * P * G, T)
    ncols = _host.recurrence_columns(B, H, G, like.element_size(), T) if w_hr is None \
        else 1
    if ncols > 1:
        nchunks = 1
    x_np, w_ih_np, b_ih_np, b_hh_np, nproj = _host.layer_input(x, w_ih, b_ih, b_hh, like, G)
    w_hh_np = _host.as_numpy(w_hh)
    w_hr_np = _host.as_numpy(w_hr) if w_hr is not None else _host.no_rows(like)
    _host.launch(lstm_fwd_kernel, lstm_fwd_kernel_parallel, nchunks,
                 x_np, w_ih_np, b_ih_np, b_hh_np, xn, w_hh_np, w_hr_np,
                 _host.as_numpy(h0), _host.as_numpy(c0), _host.lengths_array(lengths, T, B),
                 off, dense, bool(reverse), _host.rows(y), h_n.numpy(), c_n.numpy(),
                 gates_np, cs_np, bool(train), nproj, nchunks, ncols,
                 *_host.transposed_panels(h0, w_ih_np, w_hh_np, w_hr_np),
                 threads=max(nproj, nchunks, ncols))
    return y, h_n, c_n, gates, cs


def lstm_bwd(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths=None, reverse=False,
             offsets=None, need_dh0=True):
    """BPTT of an LSTM.

    Parameters: dy [T, B, P], dh_n [B, P], dc_n [B, H]; gates, cs from :func:`lstm_fwd`;
    c0, w_hh, w_hr, lengths, reverse, offsets as in the forward (packed rows: dy [M, P],
    gates [M, 4H], cs [M, H], and so are dxp and dhs).

    Returns
    -------
    dxp [T, B, 4H], dh0 [B, P], dc0 [B, H],
    dhs [T, B, P] (total gradient reaching h_t, for dW_hr; [0] without projection),
    norms : float64 [T]

    ``need_dh0`` False (h_0 needs no gradient): dh0 is not computed (the last
    step's product h-gradient x W_hh is skipped) and comes back as [0, P].
    """
    T, B, lead = backward_dims("lstm_bwd[numba]", gates, dh_n, lengths, offsets)
    G = gates.shape[-1]
    H = G // 4
    P = dh_n.shape[1]
    proj = w_hr is not None
    named = [("dy", dy, (*lead, P)), ("dh_n", dh_n, (B, P)), ("dc_n", dc_n, (B, H)),
             ("cs", cs, (*lead, H)), ("c0", c0, (B, H)), ("w_hh", w_hh, (G, P))]
    if proj:
        named.append(("w_hr", w_hr, (P, H)))
    check_backward_args("lstm_bwd[numba]", gates, named)
    dxp_np, dh0, dc0, dhs, norms = _bwd(_host.rows(dy), dh_n, dc_n, _host.rows(gates),
                                        _host.rows(cs), c0, w_hh, w_hr, lengths, offsets,
                                        reverse, T, B, need_dh0)
    return (torch.from_numpy(dxp_np).view(gates.shape), dh0, dc0,
            dhs.view(*lead, P) if proj else dhs, norms)


def _bwd(dy_np, dh_n, dc_n, gates_np, cs_np, c0, w_hh, w_hr, lengths, offsets, reverse, T,
         B, need_dh0=True):
    """The launch of :func:`lstm_bwd` on checked operands (dy, gates and cs as numpy
    rows [R, *]) -> (dxp as numpy rows [R, 4H], dh0, dc0, dhs, norms)."""
    R, G = gates_np.shape
    H, P = G // 4, dh_n.shape[1]
    dxp_np = _host.pool_array((R, G), gates_np.dtype)
    dh0 = dh_n.new_empty((B if need_dh0 else 0, P))
    dc0 = dc_n.new_empty((B, H))
    if w_hr is not None:
        dhs, dhs_np = _host.scratch(dh0, (R, P))
        dhs_np = dhs_np.reshape(-1, P)
    else:
        dhs, dhs_np = _host.no_tensor(dh0), _host.no_rows(dh0)
    norms, norms_np = _host.scratch(dh0, (T,), torch.float64)
    off, dense = _host.row_layout(offsets, T, B)
    ncols = _host.recurrence_columns(B, H, G, dh0.element_size(), T) if w_hr is None \
        else 1
    _host.launch(lstm_bwd_kernel, lstm_bwd_kernel_parallel,
                 ncols if ncols > 1 else _host.recurrence_chunks(B, B * P * G, T),
                 dy_np, _host.as_numpy(dh_n), _host.as_numpy(dc_n), gates_np, cs_np,
                 _host.as_numpy(c0), bwd_panels(w_hh, dh0, T, need_dh0),
                 panels(w_hr) if w_hr is not None else _host.no_weight(dh0),
                 _host.lengths_array(lengths, T, B), off, dense, bool(reverse),
                 dxp_np, dh0.numpy(), dc0.numpy(), dhs_np, norms_np, ncols)
    return dxp_np, dh0, dc0, dhs, norms


def lstm_layer_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs, reverse=False,
                   has_bias=True, need_dx=True, need_dh0=True):
    """A whole LSTM layer direction's backward in one launcher: :func:`lstm_bwd`, then
    :func:`gemm.layer_grads` on its dxp, for a padded layer without projection or
    lengths (the common call; kernels/__init__). The same two launches, bitwise the
    same results; the layer GEMMs take lstm_bwd's dxp as the numpy rows it is
    (:func:`gemm.layer_grads_padded`, none of layer_grads' torch views and copies): 3-9 us
    less host work per call at (B, H) = (1, 32) on a 2-core Zen 4 (BENCHMARKS.md).

    dy [T, B, H], dh_n and dc_n [B, H], x [T, B, I], w_ih [4H, I], w_hh [4H, H], h0 and
    c0 [B, H], y [T, B, H]; gates and cs from :func:`lstm_fwd`. Returns (dx [T, B, I]
    (or [0] when not need_dx), dW_ih, dW_hh, db_ih, db_hh ([0] without bias), dh0 ([0, H]
    when not need_dh0, as :func:`lstm_bwd`), dc0, norms float64 [T]), or None where the
    layer GEMMs go to torch.mm (:func:`gemm.layer_gemm_provider`): the caller then runs
    the two launchers.

    Raises ValueError on a bad shape, dtype or device (kernels._check)."""
    if gates.dim() != 3 or x.dim() != 3:
        return None  # the two launchers' own checks and messages
    T, B, G = gates.shape
    H, I = G // 4, x.shape[2]
    check_backward_args("lstm_layer_bwd[numba]", gates, (
        ("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)), ("dc_n", dc_n, (B, H)),
        ("cs", cs, (T, B, H)), ("c0", c0, (B, H)), ("w_hh", w_hh, (G, H)),
        ("x", x, (T, B, I)), ("w_ih", w_ih, (G, I)), ("h0", h0, (B, H)),
        ("y", y, (T, B, H))))
    return lstm_layer_bwd_unchecked(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs,
                                    reverse, has_bias, need_dx, need_dh0)


def lstm_layer_bwd_unchecked(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs,
                             reverse=False, has_bias=True, need_dx=True, need_dh0=True):
    """:func:`lstm_layer_bwd` on padded operands of the shapes it checks (dy may be any
    strides), without the checks (rnnfast.ops' eager path: the forward's own operands)."""
    T, B, G = gates.shape
    H, I = G // 4, x.shape[2]
    if layer_gemm_provider(gates.dtype, layer_grads_macs(T * B, 1, G, I, H, need_dx)) \
            != "numba":
        return None
    N = T * B
    dxp, dh0, dc0, _, norms = _bwd(
        _host.as_numpy(dy).reshape(N, H), dh_n, dc_n, _host.as_numpy(gates).reshape(N, G),
        _host.as_numpy(cs).reshape(N, H), c0, w_hh, None, None, None, reverse, T, B,
        need_dh0)
    return (*layer_grads_padded(dxp, None, x, _host.as_numpy(y).reshape(N, H), h0, w_ih,
                                reverse, has_bias, need_dx), dh0, dc0, norms)
