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
"""

import math

import numpy as np
from numba import njit

from .cells import sigmoid_from_expneg, tanh_from_exp2, vexp
from .config import JIT


@njit(**JIT)
def lstm_fwd_kernel(xp, w_hh_t, w_hr_t, h0, c0, lengths, reverse,
                    y, h_n, c_n, gates, cs):
    """Writes y [T,B,P], h_n [B,P], c_n [B,H], gates [T,B,G], cs [T,B,H]."""
    T, B, G = xp.shape
    H = G // 4
    P = h0.shape[1]
    proj = w_hr_t.shape[0] > 0
    h = h0.copy()  # [B, P]
    c = c0.copy()  # [B, H]
    z = np.empty((B, G), dtype=xp.dtype)  # [B, G] h_{t-1} @ W_hh^T
    r = np.zeros((B, H), dtype=xp.dtype)  # [B, H] o * tanh(c)
    hp = np.empty((B, P), dtype=xp.dtype)  # [B, P] r @ W_hr^T
    # Row scratch, float64: a = exp(-z) for i, f, o and exp(2 z) for g; e = exp(2 c).
    a = np.empty(G, dtype=np.float64)
    e = np.empty(H, dtype=np.float64)
    og = np.empty(H, dtype=np.float64)
    sb = np.empty(G, dtype=np.float64)
    ib = sb.view(np.int64)
    scale = np.full(G, -1.0)  # [G] the exponent's factor per gate column
    scale[2 * H:3 * H] = 2.0
    for s in range(T):
        t = T - 1 - s if reverse else s
        np.dot(h, w_hh_t, z)
        for b in range(B):
            if t < lengths[b]:
                for k in range(G):
                    a[k] = (np.float64(xp[t, b, k]) + z[b, k]) * scale[k]
                vexp(a, sb, ib)
                for j in range(H):
                    ig = sigmoid_from_expneg(a[j])
                    fg = sigmoid_from_expneg(a[H + j])
                    gg = tanh_from_exp2(a[2 * H + j])
                    og[j] = sigmoid_from_expneg(a[3 * H + j])
                    c[b, j] = fg * c[b, j] + ig * gg
                    e[j] = 2.0 * c[b, j]
                    gates[t, b, j] = ig
                    gates[t, b, H + j] = fg
                    gates[t, b, 2 * H + j] = gg
                    gates[t, b, 3 * H + j] = og[j]
                vexp(e, sb, ib)
                for j in range(H):
                    r[b, j] = og[j] * tanh_from_exp2(e[j])
            else:
                for k in range(G):
                    gates[t, b, k] = 0
            for j in range(H):
                cs[t, b, j] = c[b, j]
        if proj:
            np.dot(r, w_hr_t, hp)
        for b in range(B):
            if t < lengths[b]:
                for p in range(P):
                    v = hp[b, p] if proj else r[b, p]
                    h[b, p] = v
                    y[t, b, p] = v
            else:
                for p in range(P):
                    y[t, b, p] = 0
    h_n[:] = h
    c_n[:] = c


@njit(**JIT)
def lstm_bwd_kernel(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, reverse,
                    dxp, dh0, dc0, dhs, norms):
    """Writes dxp [T,B,G], dh0 [B,P], dc0 [B,H], norms [T] (float64) and, when
    projecting, dhs [T,B,P] = the total gradient reaching h_t (for dW_hr)."""
    T, B, G = gates.shape
    H = G // 4
    P = dh_n.shape[1]
    proj = w_hr.shape[0] > 0
    dh = dh_n.copy()  # [B, P]
    dc = dc_n.copy()  # [B, H]
    dr = np.empty((B, H), dtype=dy.dtype)  # [B, H] dh @ W_hr (or dh)
    dz = np.empty((B, G), dtype=dy.dtype)  # [B, G] pre-activation gate gradients
    back = np.empty((B, P), dtype=dy.dtype)  # [B, P] dz @ W_hh
    sq = np.empty(P, dtype=np.float64)  # [P] per-unit sums of squares for the norm
    e = np.empty(H, dtype=np.float64)  # [H] exp(2 c_t), for tanh(c_t)
    sb = np.empty(H, dtype=np.float64)
    ib = sb.view(np.int64)
    for s in range(T):
        t = s if reverse else T - 1 - s
        tp = t + 1 if reverse else t - 1  # the step processed before t
        sq[:] = 0.0
        for b in range(B):
            if t < lengths[b]:
                for p in range(P):
                    g = dh[b, p] + dy[t, b, p]
                    dh[b, p] = g
                    sq[p] += np.float64(g) * g
                    if proj:
                        dhs[t, b, p] = g
            elif proj:
                for p in range(P):
                    dhs[t, b, p] = 0
        norms[t] = math.sqrt(sq.sum())
        if proj:
            np.dot(dh, w_hr, dr)
        for b in range(B):
            if t < lengths[b]:
                for j in range(H):
                    e[j] = 2.0 * cs[t, b, j]
                vexp(e, sb, ib)
                for j in range(H):
                    ig = gates[t, b, j]
                    fg = gates[t, b, H + j]
                    gg = gates[t, b, 2 * H + j]
                    og = gates[t, b, 3 * H + j]
                    cp = cs[tp, b, j] if 0 <= tp < T else c0[b, j]
                    tc = tanh_from_exp2(e[j])
                    d_r = dr[b, j] if proj else dh[b, j]
                    dcc = dc[b, j] + d_r * og * (1.0 - tc * tc)
                    dc[b, j] = dcc * fg
                    dz[b, j] = dcc * gg * ig * (1.0 - ig)
                    dz[b, H + j] = dcc * cp * fg * (1.0 - fg)
                    dz[b, 2 * H + j] = dcc * ig * (1.0 - gg * gg)
                    dz[b, 3 * H + j] = d_r * tc * og * (1.0 - og)
            else:
                for k in range(G):
                    dz[b, k] = 0
            for k in range(G):
                dxp[t, b, k] = dz[b, k]
        np.dot(dz, w_hh, back)
        for b in range(B):
            if t < lengths[b]:
                for p in range(P):
                    dh[b, p] = back[b, p]
    dh0[:] = dh
    dc0[:] = dc
