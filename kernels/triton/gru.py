"""GRU recurrence in Triton (torch.nn.GRU's cell, gate order r, z, n): forward and BPTT.

Equations, for each step t in processing order (t = 0..T-1, or T-1..0 when reverse)::

    gh_t = h_{t-1} @ W_hh^T                    xp = x @ W_ih^T + b_ih + [b_hr, b_hz, 0] (torch)
    r = sigmoid(xp_r + gh_r);  z = sigmoid(xp_z + gh_z)
    hn = gh_n + b_hn;  n = tanh(xp_n + r * hn)
    h_t = (1 - z) * n + z * h_{t-1}  (computed as n + z * (h_{t-1} - n), as torch does)

Backward (g = dh_t + dy_t: the total gradient reaching h_t)::

    dn = (g - g z) (1 - n^2);  dz = g (h_{t-1} - n) z (1 - z);  dr = dn hn r (1 - r)
    dxp_t = [dr, dz, dn];  dgh_t = [dr, dz, dn r]   (dgh: gradient of gh_t + [0, 0, b_hn])
    dh_{t-1} = g z + dgh_t @ W_hh

(g - g z: torch's autograd of n + z (h_{t-1} - n), NaN for an infinite g as there.)

Dimensions: T steps, B rows, H hidden units, G = 3H gate columns; HP >= H the padded
(power of two) reduction width. Forward tiles: program (i_h, j) owns units
[i_h*BH, i_h*BH + BH) and their three gate rows of W_hh, held unit-major and padded to
four, row r = 4u + q (unit u, gate q; q = 3 is zero), so one [BB, HP] x [HP, 4BH]
product gives every gate of its units and a reshape to [BB, BH, 2, 2] splits it.
Backward tiles: program (i_h, j) owns units [i_h*BH, i_h*BH + BH), i.e. columns of
W_hh in all three gate blocks, [3 x HP, BH], one product per block. Every step the
programs run the batch tiles i_b = j, j + grid[1], ... (rows [i_b*BB, i_b*BB + BB)).

Exchange between programs: forward, h_{t-1} through a ping-pong buffer (``hx[s % 2]``
read, ``hx[(s + 1) % 2]`` written at step s); backward, dgh of the previous BPTT step,
read straight from the dgh output (written at a different time index than the one read,
so no ping-pong is needed). The own units' direct-path gradient g z (or, where the row
is inactive, the gradient passing through unchanged) is carried in ``dhbuf``. Between
steps programs meet at a barrier: the end of the launch (one step per launch,
``sync=0``) or the atomic grid barrier (all steps in one launch, ``sync=1``).

Sequence b is active at t iff t < lengths[b]; an inactive row keeps its state, writes
y = 0, gates = 0, dxp = dgh = 0 and passes its gradient through unchanged. Saved for
backward: gates [T, B, 4H] = (r, z, n, hn) and y (h_{t-1} of an active step is y at
the previous processing step, or h0 at the row's first step).
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
    """[BB, 4BH] unit-major gate block -> r, z, n, each [BB, BH] (the fourth is padding)."""
    b_z4 = tl.reshape(b_z, [BB, BH, 2, 2])  # (row, unit, q // 2, q % 2)
    b_rn, b_zp = tl.split(b_z4)  # q % 2 == 0: (r, n); == 1: (z, padding)
    b_r, b_n = tl.split(b_rn)
    b_zz, b_pad = tl.split(b_zp)
    return b_r, b_zz, b_n


@triton.jit
def _gru_fwd_step(s, xp, w_hh, bias_hn, y, gates, hbuf, hx, b_w, b_len, o_b, o_j, o_r, T, B,
                  H, reverse, HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr,
                  NK: tl.constexpr, PRECISION: tl.constexpr, RESIDENT: tl.constexpr):
    """One forward step for this program's [BB, BH] tile: reads h_{t-1} (all units) from
    the exchange buffer hx[s % 2] (input dtype: the product's operand) and its own units'
    state from hbuf[s % 2] (state dtype); writes y_t, gates_t, and h_t to both buffers
    at (s + 1) % 2."""
    t = step_time(s, T, reverse, False).to(tl.int64)
    G = 3 * H
    m_b = o_b < B
    m_j = o_j < H
    m_bj = m_b[:, None] & m_j[None, :]  # [BB, BH]
    cur = (s % 2) * B * H
    nxt = ((s + 1) % 2) * B * H
    o_own = o_b[:, None] * H + o_j[None, :]
    b_h = tl.load(hbuf + cur + o_own, mask=m_bj, other=0.0)  # [BB, BH] own h_{t-1}
    # [BB, 4BH] h_{t-1} @ W_hh[rows]^T (the exchange buffer read from L2: other SMs wrote it)
    if RESIDENT:
        b_gh = resident_dot(tl.zeros([BB, 4 * BH], dtype=b_h.dtype), hx + cur, H, o_b, m_b,
                            b_w, H, 0, NK, HP // NK, HP, PRECISION)
    else:
        b_gh = streamed_dot(tl.zeros([BB, 4 * BH], dtype=b_h.dtype), hx + cur, H, o_b, m_b,
                            w_hh, 1, ((o_r % 4) * H + o_r // 4) * H,
                            (o_r // 4 < H) & (o_r % 4 < 3), H, 0, 0, 1, HP, STREAM_BK,
                            w_hh.dtype.element_ty, PRECISION)
    b_gr, b_gz, b_hn = _split_gates(b_gh, BB, BH)  # [BB, BH] each
    o_x = t * B * G + o_b[:, None] * G + o_j[None, :]
    b_xr = tl.load(xp + o_x, mask=m_bj, other=0.0).to(b_h.dtype)
    b_xz = tl.load(xp + o_x + H, mask=m_bj, other=0.0).to(b_h.dtype)
    b_xn = tl.load(xp + o_x + 2 * H, mask=m_bj, other=0.0).to(b_h.dtype)
    b_hn += tl.load(bias_hn + o_j, mask=m_j, other=0.0).to(b_h.dtype)[None, :]
    b_r = sigmoid(b_xr + b_gr)
    b_z = sigmoid(b_xz + b_gz)
    b_n = tanh(b_xn + b_r * b_hn)
    active = (t < b_len)[:, None]  # [BB, 1]
    b_h = tl.where(active, b_n + b_z * (b_h - b_n), b_h)
    o_g = t * B * 4 * H + o_b[:, None] * (4 * H) + o_j[None, :]
    dt = gates.dtype.element_ty
    tl.store(gates + o_g, tl.where(active, b_r, 0.0).to(dt), mask=m_bj)
    tl.store(gates + o_g + H, tl.where(active, b_z, 0.0).to(dt), mask=m_bj)
    tl.store(gates + o_g + 2 * H, tl.where(active, b_n, 0.0).to(dt), mask=m_bj)
    tl.store(gates + o_g + 3 * H, tl.where(active, b_hn, 0.0).to(dt), mask=m_bj)
    tl.store(y + t * B * H + o_own, tl.where(active, b_h, 0.0).to(y.dtype.element_ty),
             mask=m_bj)
    tl.store(hbuf + nxt + o_own, b_h, mask=m_bj)
    tl.store(hx + nxt + o_own, b_h.to(hx.dtype.element_ty), mask=m_bj)


@triton.jit(do_not_specialize=["T", "B", "s_begin", "s_end", "reverse", "sync"])
def gru_fwd_kernel(
    # pointers
    xp, w_hh, bias_hn, lengths, y, gates, hbuf, hx, counter,
    # sizes
    T, B, H,
    # steps [s_begin, s_end) of this launch; sync=1: grid barrier between steps
    s_begin, s_end, reverse, sync,
    # meta-parameters
    HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, PRECISION: tl.constexpr,
    RESIDENT: tl.constexpr, NK: tl.constexpr,
):
    i_h = tl.program_id(0).to(tl.int64)
    n_grid = tl.num_programs(0) * tl.num_programs(1)
    n_bt = tl.cdiv(B, BB)  # batch tiles, visited i_b = program_id(1) + k * num_programs(1)
    o_j = i_h * BH + tl.arange(0, BH)  # [BH] own units
    o_r = i_h * 4 * BH + tl.arange(0, 4 * BH)  # [4BH] own gate rows, unit-major, padded
    # Own gate rows of W_hh, transposed ([HP, 4BH], the padding rows zero), as NK
    # reduction chunks: on chip for every step (RESIDENT) or streamed from L2 every step.
    if RESIDENT:
        b_w = load_weights(w_hh, 1, ((o_r % 4) * H + o_r // 4) * H,
                           (o_r // 4 < H) & (o_r % 4 < 3), H, 0, NK, HP // NK, HP)
    else:
        b_w = tl.zeros([16, 16], dtype=w_hh.dtype.element_ty)  # unused placeholder
    for s in range(s_begin, s_end):
        for i_b in range(tl.program_id(1), n_bt, tl.num_programs(1)):
            o_b = i_b * BB + tl.arange(0, BB)  # [BB] rows of this tile
            b_len = tl.load(lengths + o_b, mask=o_b < B, other=0)  # [BB]
            _gru_fwd_step(s, xp, w_hh, bias_hn, y, gates, hbuf, hx, b_w, b_len, o_b, o_j, o_r,
                          T, B, H, reverse, HP, BH, BB, NK, PRECISION, RESIDENT)
        if sync:
            grid_barrier(counter, (s - s_begin + 1) * n_grid)


@triton.jit
def _gru_bwd_step(s, dy, y, gates, h0, w_hh, dxp, dgh, dhbuf, norms, b_w0, b_w1, b_w2,
                  b_len, o_b, o_j, n_prog, i_prog, T, B, H, reverse, HP: tl.constexpr,
                  BH: tl.constexpr, BB: tl.constexpr, NK: tl.constexpr,
                  PRECISION: tl.constexpr, RESIDENT: tl.constexpr):
    """One BPTT step for this program's [BB, BH] tile: reads dgh of the previous BPTT
    step (all units, from the dgh output) and the carried gradient (own units) from
    dhbuf[s % 2]; writes dxp_t, dgh_t, this program's partial sum of squares of g to
    norms[t, i_prog] (one slot per tile pair), and the carried gradient to dhbuf[(s+1) % 2]."""
    t = step_time(s, T, reverse, True).to(tl.int64)
    tb = t + 1  # the step BPTT processed just before t (none at s = 0)
    tf = t - 1  # the step the forward pass processed just before t
    if reverse:
        tb = t - 1
        tf = t + 1
    G = 3 * H
    m_b = o_b < B
    m_bj = m_b[:, None] & (o_j < H)[None, :]  # [BB, BH]
    o_own = o_b[:, None] * H + o_j[None, :]
    b_dh = tl.load(dhbuf + (s % 2) * B * H + o_own, mask=m_bj, other=0.0)  # [BB, BH]
    # [BB, BH] += dgh_{tb} @ W_hh[:, j], one product per gate block (dgh_{tb} is 0 where
    # that step was inactive, and nothing is read at s = 0)
    p_g = dgh + tl.minimum(tl.maximum(tb, 0), T - 1) * B * G
    m_g = m_b & (s > 0)
    if RESIDENT:
        b_dh = resident_dot(b_dh, p_g, G, o_b, m_g, b_w0, H, 0, NK, HP // NK, HP, PRECISION)
        b_dh = resident_dot(b_dh, p_g + H, G, o_b, m_g, b_w1, H, 0, NK, HP // NK, HP,
                            PRECISION)
        b_dh = resident_dot(b_dh, p_g + 2 * H, G, o_b, m_g, b_w2, H, 0, NK, HP // NK, HP,
                            PRECISION)
    else:
        b_dh = streamed_dot(b_dh, p_g, G, o_b, m_g, w_hh, H, o_j, o_j < H, H, H, H, 3, HP,
                            STREAM_BK, w_hh.dtype.element_ty, PRECISION)
    active = (t < b_len)[:, None]  # [BB, 1]
    o_t = t * B * H + o_own
    b_g = tl.where(active, b_dh + tl.load(dy + o_t, mask=m_bj, other=0.0).to(b_dh.dtype),
                   0.0)
    tl.store(norms + t * n_prog + i_prog, sum_of_squares(b_g))
    o_g = t * B * 4 * H + o_b[:, None] * (4 * H) + o_j[None, :]
    b_r = tl.load(gates + o_g, mask=m_bj, other=0.0).to(b_dh.dtype)
    b_z = tl.load(gates + o_g + H, mask=m_bj, other=0.0).to(b_dh.dtype)
    b_n = tl.load(gates + o_g + 2 * H, mask=m_bj, other=0.0).to(b_dh.dtype)
    b_hn = tl.load(gates + o_g + 3 * H, mask=m_bj, other=0.0).to(b_dh.dtype)
    # h_{t-1}: y at the previous forward step while the row was active there, else h0
    # (both loaded, the index clamped into range, then one is selected).
    has_prev = ((tf >= 0) & (tf < b_len))[:, None]
    tfc = tl.minimum(tl.maximum(tf, 0), T - 1)
    b_hp = tl.where(has_prev, tl.load(y + tfc * B * H + o_own, mask=m_bj, other=0.0),
                    tl.load(h0 + o_own, mask=m_bj, other=0.0)).to(b_dh.dtype)
    b_dn = tl.where(active, (b_g - b_g * b_z) * (1.0 - b_n * b_n), 0.0)
    b_dz = tl.where(active, b_g * (b_hp - b_n) * b_z * (1.0 - b_z), 0.0)
    b_dr = b_dn * b_hn * b_r * (1.0 - b_r)
    tl.store(dhbuf + ((s + 1) % 2) * B * H + o_own, tl.where(active, b_g * b_z, b_dh),
             mask=m_bj)
    o_x = t * B * G + o_b[:, None] * G + o_j[None, :]
    dt = dxp.dtype.element_ty
    tl.store(dxp + o_x, b_dr.to(dt), mask=m_bj)
    tl.store(dxp + o_x + H, b_dz.to(dt), mask=m_bj)
    tl.store(dxp + o_x + 2 * H, b_dn.to(dt), mask=m_bj)
    dt = dgh.dtype.element_ty
    tl.store(dgh + o_x, b_dr.to(dt), mask=m_bj)
    tl.store(dgh + o_x + H, b_dz.to(dt), mask=m_bj)
    tl.store(dgh + o_x + 2 * H, (b_dn * b_r).to(dt), mask=m_bj)


@triton.jit(do_not_specialize=["T", "B", "s_begin", "s_end", "reverse", "sync"])
def gru_bwd_kernel(
    # pointers
    dy, y, gates, h0, w_hh, lengths, dxp, dgh, dhbuf, norms, counter,
    # sizes
    T, B, H,
    # steps [s_begin, s_end) of this launch; sync=1: grid barrier between steps
    s_begin, s_end, reverse, sync,
    # meta-parameters
    HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, PRECISION: tl.constexpr,
    RESIDENT: tl.constexpr, NK: tl.constexpr,
):
    i_h = tl.program_id(0).to(tl.int64)
    n_grid = tl.num_programs(0) * tl.num_programs(1)
    n_bt = tl.cdiv(B, BB)  # batch tiles, visited i_b = program_id(1) + k * num_programs(1)
    n_slot = tl.num_programs(0) * n_bt  # norm partials: one per (unit tile, batch tile)
    o_j = i_h * BH + tl.arange(0, BH)  # [BH] own units
    # Columns of W_hh for own units in each gate block ([HP, BH] each, as NK reduction
    # chunks): on chip for every step (RESIDENT) or streamed from L2 every step.
    if RESIDENT:
        b_w0 = load_weights(w_hh, H, o_j, o_j < H, H, 0, NK, HP // NK, HP)
        b_w1 = load_weights(w_hh + H * H, H, o_j, o_j < H, H, 0, NK, HP // NK, HP)
        b_w2 = load_weights(w_hh + 2 * H * H, H, o_j, o_j < H, H, 0, NK, HP // NK, HP)
    else:
        b_w0 = tl.zeros([16, 16], dtype=w_hh.dtype.element_ty)  # unused placeholders
        b_w1 = b_w0
        b_w2 = b_w0
    for s in range(s_begin, s_end):
        for i_b in range(tl.program_id(1), n_bt, tl.num_programs(1)):
            o_b = i_b * BB + tl.arange(0, BB)  # [BB] rows of this tile
            b_len = tl.load(lengths + o_b, mask=o_b < B, other=0)  # [BB]
            _gru_bwd_step(s, dy, y, gates, h0, w_hh, dxp, dgh, dhbuf, norms, b_w0, b_w1,
                          b_w2, b_len, o_b, o_j, n_slot, i_b * tl.num_programs(0) + i_h,
                          T, B, H, reverse, HP, BH, BB, NK, PRECISION, RESIDENT)
        if sync:
            grid_barrier(counter, (s - s_begin + 1) * n_grid)


# ---------------------------------------------------------------- launchers

def gru_fwd(xp, w_hh, b_hn, h0, lengths=None, reverse=False, reuse_xp=False, train=True):
    """Forward recurrence of a GRU (torch.nn.GRU's cell, gate order r, z, n).

    Parameters
    ----------
    xp : Tensor [T, B, 3H]   input projection x @ W_ih^T + b_ih + [b_hr, b_hz, 0]
    w_hh : Tensor [3H, H]
    b_hn : Tensor [H] or None   the n gate's recurrent bias (inside r * (...)); None: 0
    h0 : Tensor [B, H]
    lengths : int64 Tensor [B] or None   sequence b is active for t < lengths[b]
    reverse : bool          process t = T-1 .. 0
    reuse_xp : bool         accepted for the common launcher signature; the gates (4H
                            columns) do not fit in xp (3H): xp is never written
    train : bool            False for a forward that will not be differentiated: the
                            gates come back empty (the kernel still writes them to a
                            scratch buffer)

    All tensors share one dtype: float32, float64, float16 or bfloat16 on CUDA (state in
    float32, float64 for float64), float32 or float64 on the CPU under TRITON_INTERPRET=1.
    H at most :data:`config.MAX_WIDTH`.

    Returns
    -------
    y : Tensor [T, B, H]  (0 where t >= lengths[b]),  h_n : Tensor [B, H],
    gates : Tensor [T, B, 4H]  (r, z, n, hn = h_{t-1} W_hn^T + b_hn; 0 where inactive),
    saved for :func:`gru_bwd`; with train=False an empty [0] tensor of xp's dtype

    Raises ValueError on a bad shape, dtype, device or width, or lengths outside [1, T].
    """
    T, B, G = check_recurrence_args("gru", xp, w_hh, h0, None, None, lengths,
                                    0, 0.0, DTYPES, "triton", b_hn=b_hn)
    host.check_device("gru_fwd[triton]", xp)
    H = G // 3
    host.check_width("gru_fwd[triton]", H, H)
    dev = xp.device
    sdt = host.state_dtype(xp.dtype)
    xp, w_hh = host.dense(xp), host.dense(w_hh)
    b_hn = xp.new_zeros(H) if b_hn is None else host.dense(b_hn)
    lens = full_lengths(lengths, T, B, dev)
    y = xp.new_empty((T, B, H))
    gates = xp.new_empty((T, B, 4 * H))
    hbuf = host.ping_pong(h0, (H,), sdt, dev, B)
    hx = host.ping_pong(h0, (H,), xp.dtype, dev, B)
    if T > 0 and B > 0:
        cfg = pick("gru_fwd", H, H, xp.dtype)
        grid, persistent = host.launch_grid(dev, *grid_size(cfg, H, H, B), T)
        counter = host.counter(dev)
        host.run(gru_fwd_kernel, "gru_fwd", cfg, grid, T,
                 lambda s0, s1, phases, sync: (
                     xp, w_hh, b_hn, lens, y, gates, hbuf, hx, counter, T, B, H, s0, s1,
                     int(bool(reverse)), sync),
                 False, persistent, dev)
    if not train:
        gates = xp.new_empty((0,))
    return y, host.final(hbuf, T).to(xp.dtype), gates


def gru_bwd(dy, dh_n, y, gates, h0, w_hh, lengths=None, reverse=False, need_dh0=True):
    """BPTT of a GRU.

    Parameters
    ----------
    dy : Tensor [T, B, H]    gradient of y;  dh_n : Tensor [B, H]  gradient of h_n
    y, gates : from :func:`gru_fwd`;  h0, w_hh, lengths, reverse: as in the forward

    Returns
    -------
    dxp : Tensor [T, B, 3H]   gradient of xp
    dgh : Tensor [T, B, 3H]   gradient of the recurrent product h_{t-1} W_hh^T + b_hh
                              (= dxp in the r and z blocks, dxp_n * r in the n block;
                              0 where inactive): pass it as ``layer_grads(dgh=...)``
    dh0 : Tensor [B, H]
    norms : float64 Tensor [T]   ||dL/dh_t|| over batch and units, t = input position

    ``need_dh0`` is accepted for the numba launchers' signature; the Triton kernel
    computes dh0 either way (rnnfast.ops drops it where it is not needed).

    Raises ValueError on a bad shape, dtype, device or width.
    """
    T, B, H = y.shape
    check_backward_args("gru_bwd[triton]", y,
                        (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)),
                         ("gates", gates, (T, B, 4 * H)), ("h0", h0, (B, H)),
                         ("w_hh", w_hh, (3 * H, H))))
    host.check_device("gru_bwd[triton]", y)
    host.check_width("gru_bwd[triton]", H, H)
    dev = y.device
    sdt = host.state_dtype(y.dtype)
    dy, y, gates = host.dense(dy), host.dense(y), host.dense(gates)
    h0, w_hh = host.dense(h0), host.dense(w_hh)
    lens = full_lengths(lengths, T, B, dev)
    dxp = y.new_empty((T, B, 3 * H))
    dgh = y.new_empty((T, B, 3 * H))
    dhbuf = host.ping_pong(dh_n, (H,), sdt, dev, B)
    if T == 0 or B == 0:
        return dxp, dgh, dh_n.clone(), torch.zeros(T, dtype=torch.float64, device=dev)
    cfg = pick("gru_bwd", H, H, y.dtype)
    tiles = grid_size(cfg, H, H, B)
    grid, persistent = host.launch_grid(dev, *tiles, T)
    partial = torch.zeros((T, tiles[0] * tiles[1]), dtype=torch.float64, device=dev)
    counter = host.counter(dev)
    host.run(gru_bwd_kernel, "gru_bwd", cfg, grid, T,
             lambda s0, s1, phases, sync: (
                 dy, y, gates, h0, w_hh, lens, dxp, dgh, dhbuf, partial, counter, T, B, H,
                 s0, s1, int(bool(reverse)), sync),
             False, persistent, dev)
    # dh0 = the carried gradient + the last BPTT step's dgh @ W_hh (0 where inactive).
    t_last = T - 1 if reverse else 0
    dh0 = host.final(dhbuf, T) + dgh[t_last].to(sdt) @ w_hh.to(sdt)
    return dxp, dgh, dh0.to(y.dtype), host.norms_from_partials(partial)
