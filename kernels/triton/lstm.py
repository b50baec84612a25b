"""LSTM recurrence in Triton (gate order i, f, g, o; optional projection): forward and BPTT.

Equations, for each step t in processing order::

    z_t = xp_t + h_{t-1} @ W_hh^T                 xp = x @ W_ih^T + b (torch)
    i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;   r_t = o * tanh(c_t)
    h_t = r_t @ W_hr^T  (PROJ)   or   h_t = r_t

Backward (dh_t: total gradient reaching h_t = dy_t + dz_{t+1} @ W_hh)::

    dr = dh_t @ W_hr (or dh_t);   dc = dc_carry + dr * o * (1 - tanh(c_t)^2)
    dz_i = dc g i(1-i);  dz_f = dc c_{t-1} f(1-f);  dz_g = dc i (1-g^2);  dz_o = dr tanh(c_t) o(1-o)
    dc_carry = dc * f

Dimensions: T steps, B rows, H cell units, G = 4H gate columns, P = proj_size or H.
Padded widths (powers of two): HH >= H, HP >= P. Tiles: program (i_h, j) owns cell
units [i_h*BH, i_h*BH + BH) with their four gate rows (so the cell update is local),
projected units [i_h*BP, i_h*BP + BP) (PROJ), and every step runs the batch tiles
i_b = j, j + grid[1], ... (rows [i_b*BB, i_b*BB + BB)).

Gate rows of a program are held unit-major, row r = 4u + q (unit u, gate q), so one
dot gives [BB, 4BH] and a reshape to [BB, BH, 2, 2] splits it into the four gates.

A step is one phase without projection. With projection it is two, with a barrier
between them: the cell phase (H tiles) exchanges r_t, the projection phase (P tiles)
exchanges h_t; backward, the dh phase (P tiles) exchanges dh_t and the gate phase
(H tiles) exchanges dz_t. ``phases`` (bit 0: first, bit 1: second; 3 without projection)
selects what a launch runs, so one step per launch is one (or two) launches and the launch boundary
is the barrier; ``sync=1`` runs every phase of every step in one launch, separated by
the atomic grid barrier.

Saved for backward, as on the CPU: activated gates [T, B, G] (0 where inactive) and the
cell states cs [T, B, H] (frozen where inactive).
"""

import torch
import triton
import triton.language as tl

from .._check import check_backward_args, check_recurrence_args, full_lengths
from . import _host as host
from .common import (
    STREAM_BK,
    grid_barrier,
    load_weights,
    resident_dot,
    sigmoid,
    step_time,
    streamed_dot,
    sum_of_squares,
    tanh,
)
from .config import DTYPES, grid_size, pick


@triton.jit
def _split_gates(b_z, BB: tl.constexpr, BH: tl.constexpr):
    """[BB, 4BH] unit-major gate block -> i, f, g, o, each [BB, BH]."""
    b_z4 = tl.reshape(b_z, [BB, BH, 2, 2])  # (row, unit, q // 2, q % 2)
    b_ig, b_fo = tl.split(b_z4)  # q % 2 == 0: (i, g); == 1: (f, o)
    b_i, b_g = tl.split(b_ig)
    b_f, b_o = tl.split(b_fo)
    return b_i, b_f, b_g, b_o


@triton.jit
def _lstm_fwd_cell(s, xp, w_hh, y, gates, cs, hbuf, hx, cbuf, rbuf, b_w, b_len, o_b, o_j,
                   o_r, T, B, H, P, reverse, HP: tl.constexpr, BH: tl.constexpr,
                   BB: tl.constexpr, NK: tl.constexpr, PROJ: tl.constexpr,
                   PRECISION: tl.constexpr, RESIDENT: tl.constexpr):
    """Cell phase: gates, c_t and r_t of own units; h_t too without projection."""
    t = step_time(s, T, reverse, False).to(tl.int64)
    G = 4 * H
    m_b = o_b < B
    o_row = (o_r % 4) * H + o_r // 4  # [4BH] gate column in xp / W_hh rows, unit-major
    m_r = m_b[:, None] & (o_r // 4 < H)[None, :]  # [BB, 4BH]
    m_bj = m_b[:, None] & (o_j < H)[None, :]  # [BB, BH]
    h_cur = hx + (s % 2) * B * P  # exchange copy of h_{t-1}, input dtype
    b_c = tl.load(cbuf + (s % 2) * B * H + o_b[:, None] * H + o_j[None, :], mask=m_bj,
                  other=0.0)  # [BB, BH] c_{t-1}
    # [BB, 4BH] h_{t-1} @ W_hh[rows]^T
    if RESIDENT:
        b_z = resident_dot(tl.zeros([BB, 4 * BH], dtype=b_c.dtype), h_cur, P, o_b, m_b,
                           b_w, P, 0, NK, HP // NK, HP, PRECISION)
    else:
        b_z = streamed_dot(tl.zeros([BB, 4 * BH], dtype=b_c.dtype), h_cur, P, o_b, m_b,
                           w_hh, 1, o_row * P, o_r // 4 < H, P, 0, 0, 1, HP, STREAM_BK,
                           w_hh.dtype.element_ty, PRECISION)
    b_z += tl.load(xp + t * B * G + o_b[:, None] * G + o_row[None, :], mask=m_r,
                   other=0.0).to(b_c.dtype)
    b_i, b_f, b_g, b_o = _split_gates(b_z, BB, BH)
    b_i = sigmoid(b_i)
    b_f = sigmoid(b_f)
    b_g = tanh(b_g)
    b_o = sigmoid(b_o)
    b_cn = b_f * b_c + b_i * b_g
    b_r = b_o * tanh(b_cn)  # [BB, BH]
    active = (t < b_len)[:, None]
    b_c = tl.where(active, b_cn, b_c)
    o_g = t * B * G + o_b[:, None] * G + o_j[None, :]
    dt = gates.dtype.element_ty
    tl.store(gates + o_g, tl.where(active, b_i, 0.0).to(dt), mask=m_bj)
    tl.store(gates + o_g + H, tl.where(active, b_f, 0.0).to(dt), mask=m_bj)
    tl.store(gates + o_g + 2 * H, tl.where(active, b_g, 0.0).to(dt), mask=m_bj)
    tl.store(gates + o_g + 3 * H, tl.where(active, b_o, 0.0).to(dt), mask=m_bj)
    o_own = o_b[:, None] * H + o_j[None, :]
    tl.store(cs + t * B * H + o_own, b_c.to(cs.dtype.element_ty), mask=m_bj)
    tl.store(cbuf + ((s + 1) % 2) * B * H + o_own, b_c, mask=m_bj)
    if PROJ:
        tl.store(rbuf + o_own, b_r.to(rbuf.dtype.element_ty), mask=m_bj)
    else:
        b_h = tl.load(hbuf + (s % 2) * B * H + o_own, mask=m_bj, other=0.0)
        b_h = tl.where(active, b_r, b_h)
        tl.store(y + t * B * H + o_own, tl.where(active, b_r, 0.0).to(y.dtype.element_ty),
                 mask=m_bj)
        tl.store(hbuf + ((s + 1) % 2) * B * H + o_own, b_h, mask=m_bj)
        tl.store(hx + ((s + 1) % 2) * B * H + o_own, b_h.to(hx.dtype.element_ty), mask=m_bj)


@triton.jit
def _lstm_fwd_proj(s, w_hr, y, hbuf, hx, rbuf, b_wr, b_len, o_b, o_p, T, B, H, P, reverse,
                   HH: tl.constexpr, BB: tl.constexpr, BP: tl.constexpr,
                   NK: tl.constexpr, PRECISION: tl.constexpr, RESIDENT: tl.constexpr):
    """Projection phase: h_t = r_t @ W_hr^T for own projected units."""
    t = step_time(s, T, reverse, False).to(tl.int64)
    m_b = o_b < B
    m_bp = m_b[:, None] & (o_p < P)[None, :]  # [BB, BP]
    o_own = o_b[:, None] * P + o_p[None, :]
    b_h = tl.load(hbuf + (s % 2) * B * P + o_own, mask=m_bp, other=0.0)  # [BB, BP] h_{t-1}
    # [BB, BP] r_t @ W_hr[p]^T
    if RESIDENT:
        b_hn = resident_dot(tl.zeros([BB, BP], dtype=b_h.dtype), rbuf, H, o_b, m_b, b_wr,
                            H, 0, NK, HH // NK, HH, PRECISION)
    else:
        b_hn = streamed_dot(tl.zeros([BB, BP], dtype=b_h.dtype), rbuf, H, o_b, m_b, w_hr,
                            1, o_p * H, o_p < P, H, 0, 0, 1, HH, STREAM_BK,
                            w_hr.dtype.element_ty, PRECISION)
    active = (t < b_len)[:, None]
    tl.store(y + t * B * P + o_own, tl.where(active, b_hn, 0.0).to(y.dtype.element_ty),
             mask=m_bp)
    b_h = tl.where(active, b_hn, b_h)
    tl.store(hbuf + ((s + 1) % 2) * B * P + o_own, b_h, mask=m_bp)
    tl.store(hx + ((s + 1) % 2) * B * P + o_own, b_h.to(hx.dtype.element_ty), mask=m_bp)


@triton.jit(do_not_specialize=["T", "B", "s_begin", "s_end", "reverse", "phases", "sync"])
def lstm_fwd_kernel(
    # pointers
    xp, w_hh, w_hr, lengths, y, gates, cs, hbuf, hx, cbuf, rbuf, counter,
    # sizes
    T, B, H, P,
    # steps [s_begin, s_end); phases: bit mask; sync=1: grid barrier between phases
    s_begin, s_end, reverse, phases, sync,
    # meta-parameters
    HP: tl.constexpr, HH: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr,
    BB: tl.constexpr, PROJ: tl.constexpr, PRECISION: tl.constexpr, RESIDENT: tl.constexpr,
    NK: tl.constexpr,
):
    i_h = tl.program_id(0).to(tl.int64)
    n_grid = tl.num_programs(0) * tl.num_programs(1)
    n_bt = tl.cdiv(B, BB)  # batch tiles, visited i_b = program_id(1) + k * num_programs(1)
    o_j = i_h * BH + tl.arange(0, BH)  # [BH] own cell units
    o_r = i_h * 4 * BH + tl.arange(0, 4 * BH)  # [4BH] own gate rows, unit-major
    o_p = i_h * BP + tl.arange(0, BP)  # [BP] own projected units
    # Own gate rows of W_hh, transposed ([HP, 4BH]), and own rows of W_hr, transposed
    # ([HH, BP]), as NK reduction chunks: on chip for every step (RESIDENT; Triton keeps
    # them in shared memory) or streamed from L2 every step.
    if RESIDENT:
        b_w = load_weights(w_hh, 1, ((o_r % 4) * H + o_r // 4) * P, o_r // 4 < H, P, 0,
                           NK, HP // NK, HP)  # [NK, HP/NK, 4BH]
        b_wr = b_w
        if PROJ:
            b_wr = load_weights(w_hr, 1, o_p * H, o_p < P, H, 0, NK, HH // NK, HH)
    else:
        b_w = tl.zeros([16, 16], dtype=w_hh.dtype.element_ty)  # unused placeholders
        b_wr = b_w
    NBAR: tl.constexpr = 2 if PROJ else 1
    for s in range(s_begin, s_end):
        if phases % 2 == 1:
            for i_b in range(tl.program_id(1), n_bt, tl.num_programs(1)):
                o_b = i_b * BB + tl.arange(0, BB)  # [BB] rows of this tile
                b_len = tl.load(lengths + o_b, mask=o_b < B, other=0)  # [BB]
                _lstm_fwd_cell(s, xp, w_hh, y, gates, cs, hbuf, hx, cbuf, rbuf, b_w, b_len,
                               o_b, o_j, o_r, T, B, H, P, reverse, HP, BH, BB, NK, PROJ,
                               PRECISION, RESIDENT)
        if PROJ:
            if sync:
                grid_barrier(counter, ((s - s_begin) * NBAR + 1) * n_grid)
            if phases // 2 == 1:
                for i_b in range(tl.program_id(1), n_bt, tl.num_programs(1)):
                    o_b = i_b * BB + tl.arange(0, BB)  # [BB]
                    b_len = tl.load(lengths + o_b, mask=o_b < B, other=0)  # [BB]
                    _lstm_fwd_proj(s, w_hr, y, hbuf, hx, rbuf, b_wr, b_len, o_b, o_p, T, B, H,
                                   P, reverse, HH, BB, BP, NK, PRECISION, RESIDENT)
        if sync:
            grid_barrier(counter, (s - s_begin + 1) * NBAR * n_grid)


@triton.jit
def _lstm_bwd_dh(s, dy, w_hh, dhs, dzbuf, dhbuf, gbuf, norms, b_w, b_len, o_b, o_p,
                 n_prog, i_prog, T, B, H, P, reverse, HH: tl.constexpr, BB: tl.constexpr,
                 BP: tl.constexpr, NK: tl.constexpr, PROJ: tl.constexpr,
                 PRECISION: tl.constexpr, RESIDENT: tl.constexpr):
    """dh phase (own projected units): dh_t = dy_t + dz_{t+1} @ W_hh[:, p]; writes the
    norm partial, dhs_t and dh_t for the gate phase (PROJ), the carried dh. Returns dh_t."""
    t = step_time(s, T, reverse, True).to(tl.int64)
    tb = t + 1  # the step BPTT processed just before t
    if reverse:
        tb = t - 1
    G = 4 * H
    m_b = o_b < B
    m_bp = m_b[:, None] & (o_p < P)[None, :]  # [BB, BP]
    o_own = o_b[:, None] * P + o_p[None, :]
    b_carry = tl.load(dhbuf + (s % 2) * B * P + o_own, mask=m_bp, other=0.0)  # [BB, BP]
    # [BB, BP] dz_{t+1} @ W_hh[:, p]
    # (reduction over the 4 gates x HH padded units: index g * HH + m -> column g * H + m)
    if RESIDENT:
        b_back = resident_dot(tl.zeros([BB, BP], dtype=b_carry.dtype),
                              dzbuf + (s % 2) * B * G, G, o_b, m_b, b_w, H, H, NK,
                              4 * HH // NK, HH, PRECISION)
    else:
        b_back = streamed_dot(tl.zeros([BB, BP], dtype=b_carry.dtype),
                              dzbuf + (s % 2) * B * G, G, o_b, m_b, w_hh, P, o_p, o_p < P,
                              H, H, H, 4, HH, STREAM_BK, w_hh.dtype.element_ty, PRECISION)
    b_dh = tl.where(((s > 0) & (tb < b_len))[:, None], b_back, b_carry)
    active = (t < b_len)[:, None]
    o_t = t * B * P + o_own
    b_g = tl.where(active, b_dh + tl.load(dy + o_t, mask=m_bp, other=0.0).to(b_dh.dtype),
                   0.0)
    tl.store(norms + t * n_prog + i_prog, sum_of_squares(b_g))
    if PROJ:
        tl.store(dhs + o_t, b_g.to(dhs.dtype.element_ty), mask=m_bp)
        tl.store(gbuf + o_own, b_g.to(gbuf.dtype.element_ty), mask=m_bp)
    tl.store(dhbuf + ((s + 1) % 2) * B * P + o_own, b_dh, mask=m_bp)
    return b_g


@triton.jit
def _lstm_bwd_gates(s, b_g, w_hr, gates, cs, c0, dxp, dzbuf, dcbuf, gbuf, b_wr, b_len,
                    o_b, o_j, T, B, H, P, reverse, HP: tl.constexpr, BB: tl.constexpr,
                    BH: tl.constexpr, NK: tl.constexpr, PROJ: tl.constexpr,
                    PRECISION: tl.constexpr, RESIDENT: tl.constexpr):
    """Gate phase (own cell units): dr, dc and the four dz_t, written to dxp and dzbuf."""
    t = step_time(s, T, reverse, True).to(tl.int64)
    tf = t - 1  # the step the forward pass processed just before t
    if reverse:
        tf = t + 1
    G = 4 * H
    m_b = o_b < B
    m_bj = m_b[:, None] & (o_j < H)[None, :]  # [BB, BH]
    o_own = o_b[:, None] * H + o_j[None, :]
    b_dc = tl.load(dcbuf + (s % 2) * B * H + o_own, mask=m_bj, other=0.0)  # [BB, BH]
    if PROJ:
        # [BB, BH] dr = dh_t @ W_hr[:, j]
        if RESIDENT:
            b_dr = resident_dot(tl.zeros([BB, BH], dtype=b_dc.dtype), gbuf, P, o_b, m_b, b_wr,
                                P, 0, NK, HP // NK, HP, PRECISION)
        else:
            b_dr = streamed_dot(tl.zeros([BB, BH], dtype=b_dc.dtype), gbuf, P, o_b, m_b,
                                w_hr, H, o_j, o_j < H, P, 0, 0, 1, HP, STREAM_BK,
                                w_hr.dtype.element_ty, PRECISION)
    else:
        b_dr = b_g
    o_g = t * B * G + o_b[:, None] * G + o_j[None, :]
    b_i = tl.load(gates + o_g, mask=m_bj, other=0.0).to(b_dc.dtype)
    b_f = tl.load(gates + o_g + H, mask=m_bj, other=0.0).to(b_dc.dtype)
    b_gg = tl.load(gates + o_g + 2 * H, mask=m_bj, other=0.0).to(b_dc.dtype)
    b_o = tl.load(gates + o_g + 3 * H, mask=m_bj, other=0.0).to(b_dc.dtype)
    b_tc = tanh(tl.load(cs + t * B * H + o_own, mask=m_bj, other=0.0).to(b_dc.dtype))
    # c_{t-1}: the previous forward step's saved state, or c0 at the sequence start
    # (both loaded, the index clamped into range, then one is selected).
    has_prev = (tf >= 0) & (tf < T)
    tfc = tl.minimum(tl.maximum(tf, 0), T - 1)
    b_cp = tl.where(has_prev, tl.load(cs + tfc * B * H + o_own, mask=m_bj, other=0.0),
                    tl.load(c0 + o_own, mask=m_bj, other=0.0))
    b_cp = b_cp.to(b_dc.dtype)
    active = (t < b_len)[:, None]
    b_dcc = b_dc + b_dr * b_o * (1.0 - b_tc * b_tc)
    tl.store(dcbuf + ((s + 1) % 2) * B * H + o_own, tl.where(active, b_dcc * b_f, b_dc),
             mask=m_bj)
    b_zi = tl.where(active, b_dcc * b_gg * b_i * (1.0 - b_i), 0.0)
    b_zf = tl.where(active, b_dcc * b_cp * b_f * (1.0 - b_f), 0.0)
    b_zg = tl.where(active, b_dcc * b_i * (1.0 - b_gg * b_gg), 0.0)
    b_zo = tl.where(active, b_dr * b_tc * b_o * (1.0 - b_o), 0.0)
    dt = dxp.dtype.element_ty
    tl.store(dxp + o_g, b_zi.to(dt), mask=m_bj)
    tl.store(dxp + o_g + H, b_zf.to(dt), mask=m_bj)
    tl.store(dxp + o_g + 2 * H, b_zg.to(dt), mask=m_bj)
    tl.store(dxp + o_g + 3 * H, b_zo.to(dt), mask=m_bj)
    o_z = dzbuf + ((s + 1) % 2) * B * G + o_b[:, None] * G + o_j[None, :]
    dz = dzbuf.dtype.element_ty
    tl.store(o_z, b_zi.to(dz), mask=m_bj)
    tl.store(o_z + H, b_zf.to(dz), mask=m_bj)
    tl.store(o_z + 2 * H, b_zg.to(dz), mask=m_bj)
    tl.store(o_z + 3 * H, b_zo.to(dz), mask=m_bj)


@triton.jit(do_not_specialize=["T", "B", "s_begin", "s_end", "reverse", "phases", "sync"])
def lstm_bwd_kernel(
    # pointers
    dy, gates, cs, c0, w_hh, w_hr, lengths, dxp, dhs, dzbuf, dhbuf, dcbuf, gbuf, norms,
    counter,
    # sizes
    T, B, H, P,
    # steps [s_begin, s_end); phases: bit mask; sync=1: grid barrier between phases
    s_begin, s_end, reverse, phases, sync,
    # meta-parameters
    HP: tl.constexpr, HH: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr,
    BB: tl.constexpr, PROJ: tl.constexpr, PRECISION: tl.constexpr, RESIDENT: tl.constexpr,
    NK: tl.constexpr,
):
    tl.static_assert(PROJ or BP == BH)
    i_h = tl.program_id(0).to(tl.int64)
    n_grid = tl.num_programs(0) * tl.num_programs(1)
    n_bt = tl.cdiv(B, BB)  # batch tiles, visited i_b = program_id(1) + k * num_programs(1)
    n_slot = tl.num_programs(0) * n_bt  # norm partials: one per (unit tile, batch tile)
    o_j = i_h * BH + tl.arange(0, BH)  # [BH] own cell units
    o_p = i_h * BP + tl.arange(0, BP)  # [BP] own projected units (= o_j without PROJ)
    # Columns of W_hh for own projected units, all gates ([4HH, BP]), and columns of
    # W_hr for own cell units ([HP, BH]), as NK reduction chunks: on chip for every step
    # (RESIDENT) or streamed from L2 every step.
    if RESIDENT:
        b_w = load_weights(w_hh, P, o_p, o_p < P, H, H, NK, 4 * HH // NK, HH)
        b_wr = b_w
        if PROJ:
            b_wr = load_weights(w_hr, H, o_j, o_j < H, P, 0, NK, HP // NK, HP)
    else:
        b_w = tl.zeros([16, 16], dtype=w_hh.dtype.element_ty)  # unused placeholders
        b_wr = b_w
    NBAR: tl.constexpr = 2 if PROJ else 1
    for s in range(s_begin, s_end):
        for i_b in range(tl.program_id(1), n_bt, tl.num_programs(1)):
            o_b = i_b * BB + tl.arange(0, BB)  # [BB] rows of this tile
            b_len = tl.load(lengths + o_b, mask=o_b < B, other=0)  # [BB]
            b_g = tl.zeros([BB, BP], dtype=dhbuf.dtype.element_ty)
            if phases % 2 == 1:
                b_g = _lstm_bwd_dh(s, dy, w_hh, dhs, dzbuf, dhbuf, gbuf, norms, b_w, b_len,
                                   o_b, o_p, n_slot, i_b * tl.num_programs(0) + i_h, T, B, H,
                                   P, reverse, HH, BB, BP, NK, PROJ, PRECISION, RESIDENT)
            # Without projection the gate phase needs only this tile's dh_t: same pass.
            if not PROJ:
                _lstm_bwd_gates(s, b_g, w_hr, gates, cs, c0, dxp, dzbuf, dcbuf, gbuf, b_wr,
                                b_len, o_b, o_j, T, B, H, P, reverse, HP, BB, BH, NK, PROJ,
                                PRECISION, RESIDENT)
        if PROJ:
            if sync:
                grid_barrier(counter, ((s - s_begin) * NBAR + 1) * n_grid)
            if phases // 2 == 1:
                for i_b in range(tl.program_id(1), n_bt, tl.num_programs(1)):
                    o_b = i_b * BB + tl.arange(0, BB)  # [BB]
                    b_len = tl.load(lengths + o_b, mask=o_b < B, other=0)  # [BB]
                    _lstm_bwd_gates(s, tl.zeros([BB, BP], dtype=dhbuf.dtype.element_ty), w_hr,
                                    gates, cs, c0, dxp, dzbuf, dcbuf, gbuf, b_wr, b_len, o_b,
                                    o_j, T, B, H, P, reverse, HP, BB, BH, NK, PROJ, PRECISION,
                                    RESIDENT)
        if sync:
            grid_barrier(counter, (s - s_begin + 1) * NBAR * n_grid)


# ---------------------------------------------------------------- launchers

def lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths=None, reverse=False, reuse_xp=False,
             train=True):
    """Forward recurrence of an LSTM (gate order i, f, g, o).

    Parameters
    ----------
    xp : Tensor [T, B, 4H];  w_hh : Tensor [4H, P];  w_hr : Tensor [P, H] or None
    h0 : Tensor [B, P];  c0 : Tensor [B, H];  lengths, reverse, reuse_xp: as
    :func:`rnn_fwd`
    train : False for a forward that will not be differentiated: gates and cs come
    back empty (the kernel still writes them to scratch buffers)

    Returns
    -------
    y [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H] (activated), cs [T, B, H];
    with train=False gates and cs are empty [0] tensors of xp's dtype
    """
    T, B, G = check_recurrence_args("lstm", xp, w_hh, h0, c0, w_hr, lengths,
                                    0, 0.0, DTYPES, "triton")
    host.check_device("lstm_fwd[triton]", xp)
    H = G // 4
    P = h0.shape[1]
    host.check_width("lstm_fwd[triton]", H, P)
    proj = w_hr is not None
    dev = xp.device
    sdt = host.state_dtype(xp.dtype)
    xp, w_hh = host.dense(xp), host.dense(w_hh)
    w_hr_c = host.dense(w_hr) if proj else w_hh
    lens = full_lengths(lengths, T, B, dev)
    y = xp.new_empty((T, B, P))
    gates = torch.empty_like(xp)
    cs = xp.new_empty((T, B, H))
    hbuf = host.ping_pong(h0, (P,), sdt, dev, B)
    hx = host.ping_pong(h0, (P,), xp.dtype, dev, B)
    cbuf = host.ping_pong(c0, (H,), sdt, dev, B)
    rbuf = torch.zeros((B, H) if proj else (1,), dtype=xp.dtype, device=dev)
    if T > 0 and B > 0:
        cfg = pick("lstm_fwd", H, P, xp.dtype, proj=proj)
        grid, persistent = host.launch_grid(dev, *grid_size(cfg, H, P, B), T)
        counter = host.counter(dev)
        host.run(lstm_fwd_kernel, "lstm_fwd", cfg, grid, T,
             lambda s0, s1, phases, sync: (
                 xp, w_hh, w_hr_c, lens, y, gates, cs, hbuf, hx, cbuf, rbuf, counter,
                 T, B, H, P, s0, s1, int(bool(reverse)), phases, sync),
             proj, persistent, dev)
    if not train:
        gates, cs = xp.new_empty((0,)), xp.new_empty((0,))
    return (y, host.final(hbuf, T).to(xp.dtype), host.final(cbuf, T).to(xp.dtype), gates, cs)


def lstm_bwd(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths=None, reverse=False,
             need_dh0=True):
    """BPTT of an LSTM.

    Parameters: dy [T, B, P], dh_n [B, P], dc_n [B, H]; gates, cs from :func:`lstm_fwd`;
    c0, w_hh, w_hr, lengths, reverse as in the forward.

    Returns
    -------
    dxp [T, B, 4H], dh0 [B, P], dc0 [B, H],
    dhs [T, B, P] (total gradient reaching h_t, for dW_hr; [0] without projection),
    norms : float64 [T]

    ``need_dh0`` is accepted for the numba launchers' signature; the Triton kernel
    computes dh0 either way (rnnfast.ops drops it where it is not needed).
    """
    T, B, G = gates.shape
    H = G // 4
    P = dh_n.shape[1]
    proj = w_hr is not None
    named = [("dy", dy, (T, B, P)), ("dh_n", dh_n, (B, P)), ("dc_n", dc_n, (B, H)),
             ("cs", cs, (T, B, H)), ("c0", c0, (B, H)), ("w_hh", w_hh, (G, P))]
    if proj:
        named.append(("w_hr", w_hr, (P, H)))
    check_backward_args("lstm_bwd[triton]", gates, named)
    host.check_device("lstm_bwd[triton]", gates)
    host.check_width("lstm_bwd[triton]", H, P)
    dev = gates.device
    sdt = host.state_dtype(gates.dtype)
    dy, gates, cs, c0 = host.dense(dy), host.dense(gates), host.dense(cs), host.dense(c0)
    w_hh = host.dense(w_hh)
    w_hr_c = host.dense(w_hr) if proj else w_hh
    lens = full_lengths(lengths, T, B, dev)
    dxp = torch.empty_like(gates)
    dhs = gates.new_empty((T, B, P) if proj else (0,))
    dzbuf = host.ping_pong(None, (G,), gates.dtype, dev, B)
    dhbuf = host.ping_pong(dh_n, (P,), sdt, dev, B)
    dcbuf = host.ping_pong(dc_n, (H,), sdt, dev, B)
    gbuf = torch.zeros((B, P) if proj else (1,), dtype=gates.dtype, device=dev)
    if T == 0 or B == 0:
        return (dxp, dh_n.clone(), dc_n.clone(), dhs,
                torch.zeros(T, dtype=torch.float64, device=dev))
    cfg = pick("lstm_bwd", H, P, gates.dtype, proj=proj)
    tiles = grid_size(cfg, H, P, B)
    grid, persistent = host.launch_grid(dev, *tiles, T)
    partial = torch.zeros((T, tiles[0] * tiles[1]), dtype=torch.float64, device=dev)
    counter = host.counter(dev)
    host.run(lstm_bwd_kernel, "lstm_bwd", cfg, grid, T,
         lambda s0, s1, phases, sync: (
             dy, gates, cs, c0, w_hh, w_hr_c, lens, dxp, dhs if proj else dxp, dzbuf, dhbuf,
             dcbuf, gbuf, partial, counter, T, B, H, P, s0, s1, int(bool(reverse)), phases,
             sync),
         proj, persistent, dev)
    dh0 = host.last_dh(dzbuf, dhbuf, w_hh, lens, T, reverse)
    return (dxp, dh0.to(gates.dtype), host.final(dcbuf, T).to(gates.dtype), dhs,
            host.norms_from_partials(partial))
