"""Elman RNN recurrence in Triton: forward and backprop through time.

Equations, for each step t in processing order (t = 0..T-1, or T-1..0 when reverse)::

    h_t = act(xp_t + h_{t-1} @ W_hh^T)              xp = x @ W_ih^T + b (torch)
    dh_t = dy_t + dz_{t+1} @ W_hh   (t+1: the step processed before t in BPTT)
    dz_t = dh_t * act'(h_t);   dxp_t = dz_t          dW_hh, dW_ih, db, dx: GEMMs (torch)

Dimensions: T steps, B rows, H hidden units (the gate width G = H).
Tiles: program (i_h, j) owns hidden units [i_h*BH, i_h*BH + BH) and, every step, runs
the batch tiles i_b = j, j + grid[1], ... (rows [i_b*BB, i_b*BB + BB)), so a capped grid
still covers any batch; HP = next power of two >= H is the reduction width.

Each program keeps its slice of W_hh in registers for all of its steps: rows of its
units (forward, [HP, BH] = W_hh[j, :]^T) or columns (backward, [HP, BH] = W_hh[:, j]).
Programs exchange the full h_{t-1} (forward) or dz_{t+1} (backward) through a
ping-pong buffer in global memory, ``buf[s % 2]`` read and ``buf[(s + 1) % 2]`` written
at step s. Between steps they meet at a barrier: the end of the launch (one step per
launch, ``sync=0``) or the atomic grid barrier (all steps in one launch, ``sync=1``).

Sequence b is active at t iff t < lengths[b]; an inactive row keeps its state, writes
y = 0, dxp = 0 and passes its gradient through unchanged.
"""

import torch
import triton
import triton.language as tl

from .._check import check_backward_args, check_recurrence_args, full_lengths
from . import _host as host

# do_not_specialize: the kernels' runtime arguments are never specialized on their value
# (Triton would otherwise build a separate binary for a value of 1 or a multiple of 16):
# sizes that change per call, the step range of a launch and the switches, so one binary
# serves every call and the compile check builds the binaries that run.
from .common import (
    STREAM_BK,
    activate,
    activate_backward,
    grid_barrier,
    load_weights,
    resident_dot,
    step_time,
    streamed_dot,
    sum_of_squares,
)
from .config import DTYPES, grid_size, pick


@triton.jit
def _rnn_fwd_step(s, xp, w_hh, y, hbuf, hx, b_w, b_len, o_b, o_j, T, B, H,
                  reverse, activation, slope, BB: tl.constexpr, BH: tl.constexpr,
                  HP: tl.constexpr, NK: tl.constexpr, PRECISION: tl.constexpr,
                  RESIDENT: tl.constexpr):
    """One forward step for this program's [BB, BH] tile: reads h_{t-1} (all units) from
    the exchange buffer hx[s % 2] (input dtype: the product's operand) and its own units'
    state from hbuf[s % 2] (state dtype); writes y_t and h_t to both at (s + 1) % 2."""
    t = step_time(s, T, reverse, False).to(tl.int64)
    m_b = o_b < B
    m_bj = m_b[:, None] & (o_j < H)[None, :]  # [BB, BH]
    cur = (s % 2) * B * H
    nxt = ((s + 1) % 2) * B * H
    o_own = o_b[:, None] * H + o_j[None, :]
    b_own = tl.load(hbuf + cur + o_own, mask=m_bj, other=0.0)  # [BB, BH] own h_{t-1}
    # [BB, BH] h_{t-1} @ W_hh[j]^T; the exchange buffer is read with .cg (from L2,
    # never a stale L1 line: other SMs wrote it)
    if RESIDENT:
        b_z = resident_dot(tl.zeros([BB, BH], dtype=b_own.dtype), hx + cur, H, o_b, m_b, b_w,
                           H, 0, NK, HP // NK, HP, PRECISION)
    else:
        b_z = streamed_dot(tl.zeros([BB, BH], dtype=b_own.dtype), hx + cur, H, o_b, m_b,
                           w_hh, 1, o_j * H, o_j < H, H, 0, 0, 1, HP, STREAM_BK,
                           w_hh.dtype.element_ty, PRECISION)
    o_x = t * B * H + o_b[:, None] * H + o_j[None, :]
    b_z += tl.load(xp + o_x, mask=m_bj, other=0.0).to(b_own.dtype)
    b_h = activate(b_z, activation, slope)
    active = (t < b_len)[:, None]  # [BB, 1]
    b_h = tl.where(active, b_h, b_own)
    tl.store(y + o_x, tl.where(active, b_h, 0.0).to(y.dtype.element_ty), mask=m_bj)
    tl.store(hbuf + nxt + o_own, b_h, mask=m_bj)
    tl.store(hx + nxt + o_own, b_h.to(hx.dtype.element_ty), mask=m_bj)


@triton.jit(do_not_specialize=["T", "B", "s_begin", "s_end", "reverse", "activation", "sync"])
def rnn_fwd_kernel(
    # pointers
    xp, w_hh, lengths, y, hbuf, hx, slope_ptr, counter,
    # sizes
    T, B, H,
    # steps [s_begin, s_end) of this launch; sync=1: grid barrier between steps
    s_begin, s_end, reverse, activation, sync,
    # meta-parameters
    HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, PRECISION: tl.constexpr,
    RESIDENT: tl.constexpr, NK: tl.constexpr,
):
    # negative_slope in the state dtype (a float argument would be float32)
    slope = tl.load(slope_ptr)
    i_h = tl.program_id(0).to(tl.int64)
    n_grid = tl.num_programs(0) * tl.num_programs(1)
    n_bt = tl.cdiv(B, BB)  # batch tiles, visited i_b = program_id(1) + k * num_programs(1)
    o_j = i_h * BH + tl.arange(0, BH)  # [BH] own units
    # W_hh^T restricted to own units ([HP, BH]), on chip for every step of this launch
    # (RESIDENT), or streamed from L2 every step when too large for the register file.
    if RESIDENT:
        b_w = load_weights(w_hh, 1, o_j * H, o_j < H, H, 0, NK, HP // NK, HP)
    else:
        b_w = tl.zeros([16, 16], dtype=w_hh.dtype.element_ty)  # unused placeholder
    for s in range(s_begin, s_end):
        for i_b in range(tl.program_id(1), n_bt, tl.num_programs(1)):
            o_b = i_b * BB + tl.arange(0, BB)  # [BB] rows of this tile
            b_len = tl.load(lengths + o_b, mask=o_b < B, other=0)  # [BB]
            _rnn_fwd_step(s, xp, w_hh, y, hbuf, hx, b_w, b_len, o_b, o_j, T, B, H, reverse,
                          activation, slope, BB, BH, HP, NK, PRECISION, RESIDENT)
        if sync:
            grid_barrier(counter, (s - s_begin + 1) * n_grid)


@triton.jit
def _rnn_bwd_step(s, dy, y, w_hh, dxp, dzbuf, dhbuf, norms, b_w, b_len, o_b, o_j,
                  n_prog, i_prog, T, B, H, reverse, activation, slope, BB: tl.constexpr,
                  BH: tl.constexpr, HP: tl.constexpr, NK: tl.constexpr,
                  PRECISION: tl.constexpr, RESIDENT: tl.constexpr):
    """One BPTT step: reads dz of the previous BPTT step (all units) from dzbuf[s % 2]
    and the carried dh (own units) from dhbuf[s % 2]; writes dxp_t, this program's
    partial sum of squares of dh_t to norms[t, i_prog] (one slot per tile pair), and
    dz_t, dh to the next buffers."""
    t = step_time(s, T, reverse, True).to(tl.int64)
    tp = t + 1  # the step processed just before t
    if reverse:
        tp = t - 1
    m_b = o_b < B
    m_bj = m_b[:, None] & (o_j < H)[None, :]  # [BB, BH]
    cur = (s % 2) * B * H
    nxt = ((s + 1) % 2) * B * H
    o_own = o_b[:, None] * H + o_j[None, :]
    b_carry = tl.load(dhbuf + cur + o_own, mask=m_bj, other=0.0)  # [BB, BH]
    # [BB, BH] dz_{t+1} @ W_hh[:, j]
    if RESIDENT:
        b_back = resident_dot(tl.zeros([BB, BH], dtype=b_carry.dtype), dzbuf + cur, H, o_b,
                              m_b, b_w, H, 0, NK, HP // NK, HP, PRECISION)
    else:
        b_back = streamed_dot(tl.zeros([BB, BH], dtype=b_carry.dtype), dzbuf + cur, H, o_b,
                              m_b, w_hh, H, o_j, o_j < H, H, 0, 0, 1, HP, STREAM_BK,
                              w_hh.dtype.element_ty, PRECISION)
    active_p = ((s > 0) & (tp < b_len))[:, None]
    b_dh = tl.where(active_p, b_back, b_carry)
    active = (t < b_len)[:, None]
    o_t = t * B * H + o_own
    b_g = tl.where(active, b_dh + tl.load(dy + o_t, mask=m_bj, other=0.0).to(b_dh.dtype), 0.0)
    tl.store(norms + t * n_prog + i_prog, sum_of_squares(b_g))
    b_y = tl.load(y + o_t, mask=m_bj, other=0.0).to(b_dh.dtype)
    b_dz = activate_backward(b_g, b_y, activation, slope)
    tl.store(dxp + o_t, b_dz.to(dxp.dtype.element_ty), mask=m_bj)
    tl.store(dzbuf + nxt + o_own, b_dz.to(dzbuf.dtype.element_ty), mask=m_bj)
    tl.store(dhbuf + nxt + o_own, b_dh, mask=m_bj)


@triton.jit(do_not_specialize=["T", "B", "s_begin", "s_end", "reverse", "activation", "sync"])
def rnn_bwd_kernel(
    # pointers
    dy, y, w_hh, lengths, dxp, dzbuf, dhbuf, norms, slope_ptr, counter,
    # sizes
    T, B, H,
    # steps [s_begin, s_end) of this launch; sync=1: grid barrier between steps
    s_begin, s_end, reverse, activation, sync,
    # meta-parameters
    HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, PRECISION: tl.constexpr,
    RESIDENT: tl.constexpr, NK: tl.constexpr,
):
    # negative_slope in the state dtype (a float argument would be float32)
    slope = tl.load(slope_ptr)
    i_h = tl.program_id(0).to(tl.int64)
    n_grid = tl.num_programs(0) * tl.num_programs(1)
    n_bt = tl.cdiv(B, BB)  # batch tiles, visited i_b = program_id(1) + k * num_programs(1)
    n_slot = tl.num_programs(0) * n_bt  # norm partials: one per (unit tile, batch tile)
    o_j = i_h * BH + tl.arange(0, BH)  # [BH]
    # Columns of W_hh for own units ([HP, BH]): dh_j = dz @ W_hh[:, j].
    if RESIDENT:
        b_w = load_weights(w_hh, H, o_j, o_j < H, H, 0, NK, HP // NK, HP)
    else:
        b_w = tl.zeros([16, 16], dtype=w_hh.dtype.element_ty)  # unused placeholder
    for s in range(s_begin, s_end):
        for i_b in range(tl.program_id(1), n_bt, tl.num_programs(1)):
            o_b = i_b * BB + tl.arange(0, BB)  # [BB]
            b_len = tl.load(lengths + o_b, mask=o_b < B, other=0)  # [BB]
            _rnn_bwd_step(s, dy, y, w_hh, dxp, dzbuf, dhbuf, norms, b_w, b_len, o_b, o_j,
                          n_slot, i_b * tl.num_programs(0) + i_h, T, B, H, reverse,
                          activation, slope, BB, BH, HP, NK, PRECISION, RESIDENT)
        if sync:
            grid_barrier(counter, (s - s_begin + 1) * n_grid)


# ---------------------------------------------------------------- launchers

def rnn_fwd(xp, w_hh, h0, lengths=None, reverse=False, activation=0, negative_slope=0.01,
            reuse_xp=False, train=True):
    """Forward recurrence of an Elman RNN.

    Parameters
    ----------
    xp : Tensor [T, B, H]   input projection x @ W_ih^T + b_ih + b_hh
    w_hh : Tensor [H, H];  h0 : Tensor [B, H]
    lengths : int64 Tensor [B] or None   sequence b is active for t < lengths[b]
    reverse : bool;  activation : int (kernels.TANH, RELU, LEAKY_RELU);  negative_slope
    reuse_xp : accepted for the contract (the CPU backend writes y over xp); here y is
    always a new buffer
    train : accepted for the contract: y is all the RNN's backward reads

    Returns
    -------
    y : Tensor [T, B, H] (0 where t >= lengths[b]),  h_n : Tensor [B, H]
    """
    T, B, H = check_recurrence_args("rnn", xp, w_hh, h0, None, None, lengths,
                                    activation, negative_slope, DTYPES, "triton")
    host.check_device("rnn_fwd[triton]", xp)
    host.check_width("rnn_fwd[triton]", H, H)
    dev = xp.device
    sdt = host.state_dtype(xp.dtype)
    xp, w_hh = host.dense(xp), host.dense(w_hh)
    lens = full_lengths(lengths, T, B, dev)
    y = torch.empty_like(xp)
    hbuf = host.ping_pong(h0, (H,), sdt, dev, B)
    hx = host.ping_pong(h0, (H,), xp.dtype, dev, B)
    if T > 0 and B > 0:
        cfg = pick("rnn_fwd", H, H, xp.dtype)
        grid, persistent = host.launch_grid(dev, *grid_size(cfg, H, H, B), T)
        counter = host.counter(dev)
        slope = host.scalar(negative_slope, sdt, dev)
        host.run(rnn_fwd_kernel, "rnn_fwd", cfg, grid, T,
             lambda s0, s1, phases, sync: (
                 xp, w_hh, lens, y, hbuf, hx, slope, counter, T, B, H, s0, s1,
                 int(bool(reverse)), int(activation), sync),
             False, persistent, dev)
    return y, host.final(hbuf, T).to(xp.dtype)


def rnn_bwd(dy, dh_n, y, w_hh, lengths=None, reverse=False, activation=0,
            negative_slope=0.01, need_dh0=True):
    """BPTT of an Elman RNN.

    Parameters: dy [T, B, H], dh_n [B, H], y [T, B, H] (the forward output), the rest
    as :func:`rnn_fwd`.

    Returns
    -------
    dxp : Tensor [T, B, H], dh0 : Tensor [B, H],
    norms : float64 Tensor [T]   ||dL/dh_t|| over batch and units, t = input position

    ``need_dh0`` is accepted for the numba launchers' signature; the Triton kernel
    computes dh0 either way (rnnfast.ops drops it where it is not needed).
    """
    T, B, H = y.shape
    check_backward_args("rnn_bwd[triton]", y, (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)),
                                               ("w_hh", w_hh, (H, H))))
    host.check_device("rnn_bwd[triton]", y)
    host.check_width("rnn_bwd[triton]", H, H)
    dev = y.device
    sdt = host.state_dtype(y.dtype)
    dy, y, w_hh = host.dense(dy), host.dense(y), host.dense(w_hh)
    lens = full_lengths(lengths, T, B, dev)
    dxp = torch.empty_like(y)
    dzbuf = host.ping_pong(None, (H,), y.dtype, dev, B)
    dhbuf = host.ping_pong(dh_n, (H,), sdt, dev, B)
    if T == 0 or B == 0:
        return dxp, dh_n.clone(), torch.zeros(T, dtype=torch.float64, device=dev)
    cfg = pick("rnn_bwd", H, H, y.dtype)
    tiles = grid_size(cfg, H, H, B)
    grid, persistent = host.launch_grid(dev, *tiles, T)
    partial = torch.zeros((T, tiles[0] * tiles[1]), dtype=torch.float64, device=dev)
    counter = host.counter(dev)
    slope = host.scalar(negative_slope, sdt, dev)
    host.run(rnn_bwd_kernel, "rnn_bwd", cfg, grid, T,
         lambda s0, s1, phases, sync: (
             dy, y, w_hh, lens, dxp, dzbuf, dhbuf, partial, slope, counter, T, B, H, s0, s1,
             int(bool(reverse)), int(activation), sync),
         False, persistent, dev)
    dh0 = host.last_dh(dzbuf, dhbuf, w_hh, lens, T, reverse)
    return dxp, dh0.to(y.dtype), host.norms_from_partials(partial)
