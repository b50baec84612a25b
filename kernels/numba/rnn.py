"""Elman RNN recurrence on the CPU (numba): forward and backprop through time.

Equations, for each step t in processing order (t = 0..T-1, or T-1..0 when reverse)::

    h_t = act(xp_t + h_{t-1} @ W_hh^T)            xp = x @ W_ih^T + b_ih + b_hh (torch)
    dz_t = (dy_t + dh_t^rec) * act'(h_t)           dh_{t-1}^rec = dz_t @ W_hh
    dxp_t = dz_t                                   dW_hh, dW_ih, db, dx: GEMMs (torch)

Dimensions: T time steps, B batch rows, H hidden units (G = H gate columns).
Sequence b is active at time t iff t < lengths[b]; an inactive row keeps its state,
writes y = 0 and passes its gradient through unchanged (PackedSequence semantics, in
both time directions).

Rows of the batch never interact, so the parallel drivers give each thread its own
slice of rows for the whole time loop: no barrier per step, no shared writes. A batch
of one to three rows with a W_hh too big for one core's L2 splits the hidden units
instead (the column split, as lstm.py's: _host.recurrence_columns), one parallel
region per step, with bitwise the row kernels' results. The per-step product is the
register-tile GEMM of gemm.py against W_hh packed once per call, on the active rows
only when a thread's rows are sorted by length (packed.py); the pointwise step runs on
the one-register vectors of vec.py.
"""

import math

import numpy as np
import torch
from numba import njit, prange

from .. import LEAKY_RELU, RELU
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
def _activate(z, activation, slope):
    """act(z) lane-wise; NaN stays NaN (a NaN fails ``z <= 0``), as in torch."""
    if activation == RELU:
        return V.where_le0(z, V.zero(z), z)
    if activation == LEAKY_RELU:
        return V.where_le0(z, z * slope, z)
    return V.tanh(z)


@njit(**INLINE)
def _activate_backward(g, h, activation, slope):
    """dL/dz = g * act'(z) from g = dL/dh and the output h = act(z), as torch's backward
    functions compute it from the output: relu, threshold_backward's select, 0 where
    h <= 0, else g (an Inf or NaN g at a unit that is off gives 0, not 0 * g = NaN; a
    NaN unit passes g on); leaky_relu, leaky_relu_backward's g if h > 0 else g * slope
    (valid as slope >= 0, which the launchers enforce); tanh, tanh_backward's
    g * (1 - h^2)."""
    if activation == RELU:
        return V.where_le0(h, V.zero(h), g)
    if activation == LEAKY_RELU:
        return V.where_gt0(h, g, g * slope)
    return g * (1.0 - h * h)


@njit(**INLINE)
def _rnn_cell(xp, z, h, y, xo, zo, ho, n, activation, slope):
    """The step at n units: h_t = act(xp_t + z) (flat offsets xo of xp and y, zo of z,
    ho of h), written to h and y. xp may be y: it is read first."""
    v = _activate(V.load(xp, xo, n) + V.load(z, zo, n), activation, slope)
    V.store(h, ho, n, v)
    V.store(y, xo, n, v)


@njit(**INLINE)
def _rnn_cell_bwd(dh, dy, y, sq, dz, dxp, ho, ro, so, n, activation, slope):
    """BPTT's step at n units: g = dh + dy (the total gradient reaching h_t), its
    squares added to sq[so:], and dz = dxp = g * act'(z) (flat offsets ho of dh and dz,
    ro of dy, y and dxp)."""
    g = V.load(dh, ho, n) + V.load(dy, ro, n)
    V.add_squares(sq, so, n, g)
    d = _activate_backward(g, V.load(y, ro, n), activation, slope)
    V.store(dz, ho, n, d)
    V.store(dxp, ro, n, d)


@njit(**JIT)
def _rnn_fwd_rows(xp, w_hh_t, z0, h0, lengths, off, dense, reverse, activation, slope, y, h_n,
                  b0, b1):
    """Forward recurrence for batch rows [b0, b1): writes their rows of y and h_n[b0:b1].
    xp and y are row arrays [R, H] (row off[t] + b holds step t of batch row b; see
    PACKED_ROWS in kernels/__init__.py); ``dense``: every (t, b) has a row (a padded
    batch: an inactive one gets y = 0), else only the active ones (packed rows). All
    arrays C-contiguous; the pointwise step runs on one-register vectors."""
    T, H = off.shape[0], xp.shape[1]
    L = V.lanes(xp)  # vector lanes: 16 float32 / 8 float64
    nb = b1 - b0
    h = np.empty((nb, H), dtype=xp.dtype)  # [nb, H] running state
    h_pk = a_scratch(h)  # h packed for the product (gemm.mm_into)
    z = np.empty((nb, H), dtype=xp.dtype)  # [nb, H] h_{t-1} @ W_hh^T
    copy_rows(h, 0, h0, b0, b1 - b0)
    prefix = is_sorted(lengths, b0, b1)  # the active rows are a prefix (packed.py)
    for s in range(T):
        t = T - 1 - s if reverse else s
        na = active_rows(lengths, b0, b1, t, prefix)
        step_product(s, h, w_hh_t, z, h_pk, z0, na)
        for r in range(nb):
            b = b0 + r
            row = off[t] + b
            if t < lengths[b]:
                for j in range(0, H, L):
                    _rnn_cell(xp, z, h, y, row * H + j, r * H + j, r * H + j,
                              min(L, H - j), activation, slope)
            elif dense:
                for j in range(H):
                    y[row, j] = 0
    copy_rows(h_n, b0, h, 0, b1 - b0)


@njit(**JIT)
def _rnn_bwd_rows(dy, dh_n, y, w_hh, lengths, off, dense, reverse, activation, slope,
                  dxp, dh0, sqsum, b0, b1):
    """BPTT for rows [b0, b1): writes their rows of dxp (row arrays as
    :func:`_rnn_fwd_rows`), dh0[b0:b1] and sqsum[t] = ||dL/dh_t||^2 over those rows
    (float64; the total gradient reaching h_t)."""
    T, H = off.shape[0], dy.shape[1]
    L = V.lanes(dy)
    nb = b1 - b0
    dh = np.empty((nb, H), dtype=dy.dtype)  # [nb, H] gradient reaching h_t
    dz = np.empty((nb, H), dtype=dy.dtype)  # [nb, H] gradient of the pre-activation
    dz_pk = a_scratch(dz)
    back = np.empty((nb, H), dtype=dy.dtype)  # [nb, H] dz @ W_hh
    # Per-unit sums of squares keep the norm's inner loop free of a serial reduction.
    sq = np.empty(H, dtype=np.float64)  # [H] (per step: a sum over this thread's rows)
    copy_rows(dh, 0, dh_n, b0, b1 - b0)
    prefix = is_sorted(lengths, b0, b1)  # the active rows are a prefix (packed.py)
    for s in range(T):
        t = s if reverse else T - 1 - s
        na = active_rows(lengths, b0, b1, t, prefix)
        sq[:] = 0.0
        for r in range(nb):
            b = b0 + r
            row = off[t] + b
            if t < lengths[b]:
                for j in range(0, H, L):
                    _rnn_cell_bwd(dh, dy, y, sq, dz, dxp, r * H + j, row * H + j, j,
                                  min(L, H - j), activation, slope)
            else:
                for j in range(H):
                    dz[r, j] = 0
                if dense:
                    for j in range(H):
                        dxp[row, j] = 0
        sqsum[t] = sum_of_squares(sq)
        if s == T - 1 and dh0.shape[0] == 0:
            break  # no dh_0 asked for: the last product would feed nothing else
        mm_into(dz[:na], w_hh, back[:na], dz_pk)
        for r in range(na):
            if t < lengths[b0 + r]:
                for j in range(H):
                    dh[r, j] = back[r, j]
    if dh0.shape[0] > 0:
        copy_rows(dh0, b0, dh, 0, b1 - b0)


@njit(**JIT)
def _rnn_fwd_cols(xp, w_hh_t, z0, h, hn, z, lengths, off, dense, t, s, na, u0, u1,
                  activation, slope, y):
    """One step of the column-split forward (:func:`rnn_fwd_kernel_parallel`): hidden
    units [u0, u1) of every row (whole panels of w_hh_t). Reads h [B, H] (h_{t-1} of
    every row: the other threads' units too), writes hn [B, H] (h_t, these units; an
    inactive row's carried over), z [B, H] and y at these units. Each element is
    computed as :func:`_rnn_fwd_rows` computes it: bitwise its results."""
    H = xp.shape[1]
    L = V.lanes(xp)
    gate_columns_product(s, h, na, w_hh_t, z0, z, 1, u0, u1)
    for b in range(h.shape[0]):
        row = off[t] + b
        if t < lengths[b]:
            for j in range(u0, u1, L):
                _rnn_cell(xp, z, hn, y, row * H + j, b * H + j, b * H + j, min(L, u1 - j),
                          activation, slope)
        else:
            for j in range(u0, u1):
                hn[b, j] = h[b, j]
            if dense:
                for j in range(u0, u1):
                    y[row, j] = 0


@njit(**JIT)
def _rnn_bwd_cols(dy, y, lengths, off, dense, t, dh, dz, sq, dxp, u0, u1, activation,
                  slope):
    """One step of the column-split BPTT (:func:`rnn_bwd_kernel_parallel`) at units
    [u0, u1) of every row: sq[u0:u1] (the step's per-unit sums of squares), dz [B, H]
    and dxp there; each element as :func:`_rnn_bwd_rows` computes it, in the same
    order."""
    H = dy.shape[1]
    L = V.lanes(dy)
    for p in range(u0, u1):
        sq[p] = 0.0
    for b in range(dh.shape[0]):
        row = off[t] + b
        if t < lengths[b]:
            for j in range(u0, u1, L):
                _rnn_cell_bwd(dh, dy, y, sq, dz, dxp, b * H + j, row * H + j, j,
                              min(L, u1 - j), activation, slope)
        else:
            for j in range(u0, u1):
                dz[b, j] = 0
                if dense:
                    dxp[row, j] = 0


@njit(**JIT)
def rnn_fwd_kernel(x, w_ih, b_ih, b_hh, xp, w_hh, h0, lengths, off, dense, reverse,
                   activation, slope, y, h_n, nproj, nchunks, ncols, wih_p, whh_p):
    """Writes y and h_n (:func:`_rnn_fwd_rows`). x [R, I] with w_ih [H, I] and b_ih,
    b_hh [H] (or [0]: no bias): the layer's input projection x @ W_ih^T + b_ih + b_hh is
    written into xp first (xp may be y: each step reads its xp before writing y there);
    x [0, 0]: xp holds it already. w_hh [H, H] as torch stores it. nproj, nchunks, ncols:
    the parallel kernel's splits (ncols > 1: the column split). wih_p, whh_p: room for
    the weights' panels (_host.panel_buffer; or empty stand-ins)."""
    if x.shape[0] > 0:
        project_part(x, pack_bt(w_ih, wih_p), projection_bias(b_ih, b_hh, b_hh.shape[0]),
                     xp, 0, 1)
    b0, _ = _plain_ints(h0.shape[0])  # as the parallel kernel's bounds are typed
    w_hh_t, z0 = recurrent_operands(h0, w_hh, whh_p, off.shape[0])
    _rnn_fwd_rows(xp, w_hh_t, z0, h0, lengths, off, dense, reverse, activation, slope, y,
                  h_n, b0, h0.shape[0])


@njit(**JIT)
def rnn_bwd_kernel(dy, dh_n, y, w_hh, lengths, off, dense, reverse, activation, slope,
                   dxp, dh0, norms, ncols):
    """BPTT (:func:`_rnn_bwd_rows`): dxp, dh0 ([0, H]: not asked for) and the per-step
    gradient norms [T]; ncols: the parallel kernel's column split (unused here)."""
    b0, _ = _plain_ints(dh_n.shape[0])  # as the parallel kernel's bounds are typed
    _rnn_bwd_rows(dy, dh_n, y, w_hh, lengths, off, dense, reverse, activation, slope,
                  dxp, dh0, norms, b0, dh_n.shape[0])
    sqrt_in_place(norms)


@njit(**JIT_PARALLEL)
def rnn_fwd_kernel_parallel(x, w_ih, b_ih, b_hh, xp, w_hh, h0, lengths, off, dense,
                            reverse, activation, slope, y, h_n, nproj, nchunks, ncols,
                            wih_p, whh_p):
    """:func:`rnn_fwd_kernel` on threads: the projection's rows in ``nproj`` parts, then
    chunk c of the batch rows (packed.chunk_bounds) runs the whole time loop on its own
    thread (rows never interact); or, ncols > 1, every row on every thread, each a
    block of hidden units, one parallel region per step (the column split)."""
    if x.shape[0] > 0:
        wp = pack_bt(w_ih, wih_p)
        bias = projection_bias(b_ih, b_hh, b_hh.shape[0])
        for p in prange(nproj):
            project_part(x, wp, bias, xp, p, nproj)
    w_hh_t, z0 = recurrent_operands(h0, w_hh, whh_p, off.shape[0])
    if ncols > 1:
        T = off.shape[0]
        B, H = h0.shape
        panel = NV * V.lanes(xp)  # units per panel of W_hh^T
        hb = np.empty((2, B, H), dtype=xp.dtype)  # h_{t-1}, h_t by the step's parity
        z = np.empty((B, H), dtype=xp.dtype)
        copy_rows(hb[0], 0, h0, 0, B)
        prefix = is_sorted(lengths, 0, B)
        for s in range(T):
            t = T - 1 - s if reverse else s
            na = active_rows(lengths, 0, B, t, prefix)
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, H, panel)
                _rnn_fwd_cols(xp, w_hh_t, z0, hb[s % 2], hb[1 - s % 2], z, lengths, off,
                              dense, t, s, na, u0, u1, activation, slope, y)
        copy_rows(h_n, 0, hb[T % 2], 0, B)
        return
    bounds = chunk_bounds(lengths, nchunks)
    for c in prange(nchunks):
        _rnn_fwd_rows(xp, w_hh_t, z0, h0, lengths, off, dense, reverse, activation, slope,
                      y, h_n, bounds[c], bounds[c + 1])


@njit(**JIT_PARALLEL)
def rnn_bwd_kernel_parallel(dy, dh_n, y, w_hh, lengths, off, dense, reverse, activation,
                            slope, dxp, dh0, norms, ncols, nchunks):
    """Batch-parallel BPTT; each chunk's squared norms land in its own row of a
    [nchunks, T] buffer, summed afterwards in chunk order (deterministic). ncols > 1:
    the column split instead, every row on every thread, each thread a block of hidden
    units, one parallel region per step (the product for the previous step's dz, then
    the step's own pointwise work)."""
    T = off.shape[0]
    if ncols > 1:
        B, H = dh_n.shape
        panel = NV * V.lanes(dy)  # units per panel of W_hh
        dh = np.empty((B, H), dtype=dy.dtype)
        copy_rows(dh, 0, dh_n, 0, B)
        dzb = np.empty((2, B, H), dtype=dy.dtype)  # the step's dz, the previous step's
        back = np.empty((B, H), dtype=dy.dtype)
        sq = np.empty(H, dtype=np.float64)
        prefix = is_sorted(lengths, 0, B)
        t_prev = 0
        na_prev = 0
        for s in range(T):
            t = s if reverse else T - 1 - s
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, H, panel)
                if s > 0:
                    bptt_columns_product(dzb[1 - s % 2], na_prev, w_hh, back, dh,
                                         lengths, t_prev, u0, u1)
                _rnn_bwd_cols(dy, y, lengths, off, dense, t, dh, dzb[s % 2], sq, dxp, u0,
                              u1, activation, slope)
            norms[t] = math.sqrt(sum_of_squares(sq))
            t_prev = t
            na_prev = active_rows(lengths, 0, B, t, prefix)
        if dh0.shape[0] > 0 and T > 0:
            for q in prange(ncols):
                u0, u1 = unit_bounds(q, ncols, H, panel)
                bptt_columns_product(dzb[1 - T % 2], na_prev, w_hh, back, dh, lengths,
                                     t_prev, u0, u1)
            copy_rows(dh0, 0, dh, 0, B)
        return
    bounds = chunk_bounds(lengths, nchunks)
    sq = np.zeros((nchunks, T), dtype=np.float64)
    for c in prange(nchunks):
        _rnn_bwd_rows(dy, dh_n, y, w_hh, lengths, off, dense, reverse, activation, slope,
                      dxp, dh0, sq[c], bounds[c], bounds[c + 1])
    chunk_norms(sq, norms)


# ---------------------------------------------------------------- launchers

DTYPES = (torch.float32, torch.float64)


def rnn_fwd(xp, w_hh, h0, lengths=None, reverse=False, activation=0, negative_slope=0.01,
            reuse_xp=False, train=True, offsets=None):
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
    train : bool            accepted for the common launcher signature: y is all the
                            RNN's backward reads, so it is the same either way
    offsets : int64 Tensor [T] or None   packed rows: xp is a PackedSequence's data
                            [M, H] (step t's rows start at offsets[t]) with its sorted
                            lengths; y is then [M, H] too (kernels._check.check_packed_rows)

    Returns
    -------
    y : Tensor [T, B, H]  (0 where t >= lengths[b]),  h_n : Tensor [B, H]

    Raises ValueError on a bad shape, dtype or device (kernels._check).
    """
    T, B, H = check_recurrence_args("rnn", xp, w_hh, h0, None, None, lengths,
                                    activation, negative_slope, DTYPES, "numba",
                                    offsets=offsets)
    y = xp if reuse_xp and xp.is_contiguous() else _host.empty(xp, xp.shape)
    return _forward(None, None, None, None, xp, y, w_hh, h0, lengths, reverse, activation,
                    negative_slope, offsets, T, B)


def rnn_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, lengths=None, reverse=False, activation=0,
                  negative_slope=0.01, train=True, offsets=None):
    """A whole Elman RNN layer direction's forward: the input projection x @ W_ih^T +
    b_ih + b_hh (written into y) and the recurrence, in one compiled call where the
    projection runs on the tile (:func:`gemm.layer_gemm_provider`; else torch.mm's
    projection, then the recurrence): as lstm.lstm_layer_fwd.

    x [T, B, I] (or, with ``offsets``, a PackedSequence's rows [M, I]: y is then [M, H]),
    w_ih [H, I], b_ih and b_hh [H] or both None; the rest and the returns as
    :func:`rnn_fwd` (train: accepted for the common signature). Bitwise the same results
    as :func:`gemm.project` then :func:`rnn_fwd`.

    Raises ValueError on a bad shape, dtype or device (kernels._check)."""
    check_layer_args("rnn", x, w_ih, b_ih, b_hh, w_hh, h0, None, None, lengths, activation,
                     negative_slope, DTYPES, "numba", offsets)
    return rnn_layer_fwd_unchecked(x, w_ih, b_ih, b_hh, w_hh, h0, lengths, reverse,
                                   activation, negative_slope, train, offsets)


def rnn_layer_fwd_unchecked(x, w_ih, b_ih, b_hh, w_hh, h0, lengths=None, reverse=False,
                            activation=0, negative_slope=0.01, train=True, offsets=None):
    """:func:`rnn_layer_fwd` without its checks, for a caller that made them already
    (a module's own checks cover every operand: rnnfast.ops' eager path)."""
    lead = tuple(x.shape[:-1])  # (T, B) padded, (M,) packed
    T, B = _host.steps_and_batch(x, lengths, offsets)
    I, H = x.shape[-1], w_hh.shape[1]
    if layer_gemm_provider(x.dtype, math.prod(lead) * I * H) == "torch":
        xp = project(x, w_ih, b_ih + b_hh if b_ih is not None else None)
        return _forward(None, None, None, None, xp, xp, w_hh, h0, lengths, reverse,
                        activation, negative_slope, offsets, T, B)
    y = _host.empty(x, (*lead, H))
    return _forward(x, w_ih, b_ih, b_hh, y, y, w_hh, h0, lengths, reverse, activation,
                    negative_slope, offsets, T, B)


def _forward(x, w_ih, b_ih, b_hh, xp, y, w_hh, h0, lengths, reverse, activation,
             negative_slope, offsets, T, B):
    """:func:`rnn_fwd` (x None: xp holds the projection) or :func:`rnn_layer_fwd` (the
    kernel projects x into xp first)."""
    H = h0.shape[1]
    h_n = h0.new_empty(h0.shape)  # contiguous, as torch.nn's, whatever h0's strides
    off, dense = _host.row_layout(offsets, T, B)
    nchunks = _host.recurrence_chunks(B, B * H * H, T)
    ncols = _host.recurrence_columns(B, H, H, h0.element_size(), T)
    if ncols > 1:
        nchunks = 1
    x_np, w_ih_np, b_ih_np, b_hh_np, nproj = _host.layer_input(x, w_ih, b_ih, b_hh, xp, H)
    y_np = _host.rows(y)
    w_hh_np = _host.as_numpy(w_hh)
    _host.launch(rnn_fwd_kernel, rnn_fwd_kernel_parallel, nchunks,
                 x_np, w_ih_np, b_ih_np, b_hh_np, y_np if xp is y else _host.rows(xp),
                 w_hh_np, _host.as_numpy(h0),
                 _host.lengths_array(lengths, T, B), off, dense, bool(reverse),
                 int(activation), float(negative_slope), y_np, h_n.numpy(), nproj, nchunks,
                 ncols, *_host.transposed_panels(h0, w_ih_np, w_hh_np),
                 threads=max(nproj, nchunks, ncols))
    return y, h_n


def rnn_bwd(dy, dh_n, y, w_hh, lengths=None, reverse=False, activation=0,
            negative_slope=0.01, offsets=None, need_dh0=True):
    """BPTT of an Elman RNN.

    Parameters: dy [T, B, H] (gradient of y), dh_n [B, H] (gradient of h_n), y [T, B, H]
    (the forward output), the rest as :func:`rnn_fwd` (with ``offsets``: dy, y and dxp
    are packed rows [M, H]).

    Returns
    -------
    dxp : Tensor [T, B, H], dh0 : Tensor [B, H],
    norms : float64 Tensor [T]   ||dL/dh_t|| over batch and units, t = input position

    ``need_dh0`` False (h_0 needs no gradient): dh0 is not computed (the last
    step's product h-gradient x W_hh is skipped) and comes back as [0, H].
    """
    T, B, lead = backward_dims("rnn_bwd[numba]", y, dh_n, lengths, offsets)
    H = y.shape[-1]
    check_backward_args("rnn_bwd[numba]", y, (("dy", dy, (*lead, H)), ("dh_n", dh_n, (B, H)),
                                              ("w_hh", w_hh, (H, H))))
    dxp_np, dh0, norms = _bwd(_host.rows(dy), dh_n, _host.rows(y), w_hh, lengths, offsets,
                              reverse, activation, negative_slope, T, B, need_dh0)
    return torch.from_numpy(dxp_np).view(y.shape), dh0, norms


def _bwd(dy_np, dh_n, y_np, w_hh, lengths, offsets, reverse, activation, negative_slope, T,
         B, need_dh0=True):
    """The launch of :func:`rnn_bwd` on checked operands (dy and y as numpy rows [R, H])
    -> (dxp as numpy rows [R, H], dh0, norms)."""
    H = y_np.shape[1]
    dxp_np = _host.pool_array(y_np.shape, y_np.dtype)
    dh0 = dh_n.new_empty((B if need_dh0 else 0, H))
    norms, norms_np = _host.scratch(dh0, (T,), torch.float64)
    off, dense = _host.row_layout(offsets, T, B)
    ncols = _host.recurrence_columns(B, H, H, dh0.element_size(), T)
    _host.launch(rnn_bwd_kernel, rnn_bwd_kernel_parallel,
                 ncols if ncols > 1 else _host.recurrence_chunks(B, B * H * H, T),
                 dy_np, _host.as_numpy(dh_n), y_np, bwd_panels(w_hh, dh0, T, need_dh0),
                 _host.lengths_array(lengths, T, B), off, dense, bool(reverse),
                 int(activation), float(negative_slope), dxp_np, dh0.numpy(), norms_np,
                 ncols)
    return dxp_np, dh0, norms


def rnn_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y, reverse=False, activation=0,
                  negative_slope=0.01, has_bias=True, need_dx=True, need_dh0=True):
    """A whole Elman RNN layer direction's backward in one launcher: :func:`rnn_bwd`,
    then :func:`gemm.layer_grads` on its dxp, for a padded layer without lengths; as
    lstm.lstm_layer_bwd (bitwise the two launchers' results, less host work).

    dy [T, B, H], dh_n [B, H], x [T, B, I], w_ih [H, I], w_hh [H, H], h0 [B, H],
    y [T, B, H]. Returns (dx [T, B, I] (or [0]), dW_ih, dW_hh, db_ih, db_hh ([0]
    without bias), dh0 ([0, H] when not need_dh0, as :func:`rnn_bwd`), norms float64
    [T]), or None where the layer GEMMs go to torch.mm (:func:`gemm.layer_gemm_provider`).

    Raises ValueError on a bad shape, dtype or device (kernels._check)."""
    if y.dim() != 3 or x.dim() != 3:
        return None  # the two launchers' own checks and messages
    T, B, H = y.shape
    I = x.shape[2]
    check_backward_args("rnn_layer_bwd[numba]", y, (
        ("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H)), ("w_hh", w_hh, (H, H)),
        ("x", x, (T, B, I)), ("w_ih", w_ih, (H, I)), ("h0", h0, (B, H))))
    return rnn_layer_bwd_unchecked(dy, dh_n, x, w_ih, w_hh, h0, y, reverse, activation,
                                   negative_slope, has_bias, need_dx, need_dh0)


def rnn_layer_bwd_unchecked(dy, dh_n, x, w_ih, w_hh, h0, y, reverse=False, activation=0,
                            negative_slope=0.01, has_bias=True, need_dx=True,
                            need_dh0=True):
    """:func:`rnn_layer_bwd` on padded operands of the shapes it checks (dy may be any
    strides), without the checks (rnnfast.ops' eager path: the forward's own operands)."""
    T, B, H = y.shape
    I = x.shape[2]
    if layer_gemm_provider(y.dtype, layer_grads_macs(T * B, 1, H, I, H, need_dx)) \
            != "numba":
        return None
    y_np = _host.as_numpy(y).reshape(T * B, H)
    dxp, dh0, norms = _bwd(_host.as_numpy(dy).reshape(T * B, H), dh_n, y_np, w_hh, None,
                           None, reverse, activation, negative_slope, T, B, need_dh0)
    return (*layer_grads_padded(dxp, None, x, y_np, h0, w_ih, reverse, has_bias, need_dx),
            dh0, norms)
