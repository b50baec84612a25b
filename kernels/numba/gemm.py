"""Matrix products of the CPU backend, on the register tile of :mod:`tile`.

* :func:`mm_into` - C = A @ B for C-contiguous 2-D arrays: the kernels' per-step
  product ([rows, H] @ [H, 4H] forward, [rows, 4H] @ [4H, H] backward), and the serial
  core of the layer GEMMs.
* :func:`project`, :func:`layer_grads`, :func:`matmul_tn` - the backend's layer-GEMM
  entry points (torch tensors in and out): a layer's GEMMs over all time steps at once
  (the input projection; dW_ih, dW_hh, db and dx in one call; dW_hr). Their compiled
  ``*_kernel`` / ``*_kernel_parallel`` bodies split the output rows across threads.
  :func:`project` and :func:`layer_grads` hand big problems to torch.mm instead where
  it measures faster on this CPU (:func:`layer_gemm_provider`).

Blocking: columns in panels of NV vectors, the reduction in chunks of KC terms (a
[KC, 64] float32 panel of B is 64 KiB and stays in L2 while the row tiles pass over it),
rows in tiles of MR. Each output element is the sum of its KC-chunks, each chunk summed
in registers by fused multiply-adds in k order: a fixed order that does not depend on
the thread split, so results are bitwise reproducible across thread counts. (On the
torch provider, repeated calls with the same thread count give the same bits; across
thread counts that is up to torch's BLAS.)
"""

import contextlib
import math
import threading
import time

import numpy as np
import torch
from numba import njit, prange

from .._env import setting
from . import _host
from .config import ISA, JIT, JIT_PARALLEL
from .tile import MR, NV, RP, tile
from .vec import lanes, transpose_block

KC = 256  # reduction chunk: terms summed in registers before C is updated
# Row block of _gemm: as many whole MR-row tiles of A's KC-chunk as fit this many
# bytes (:func:`_block_rows`), so that the block's chunk stays in L2 while the panels of
# B pass over it, even with L2 shared (half of a 256 KiB L2; a quarter of Zen 2's 512 KiB,
# whose SMT sibling or a neighbouring VM may hold the rest). A fixed 192-row block
# (384 KiB at K = 512 float32) ran the [6400 x 512] @ [512 x 2048] projection at 77-130
# GFLOP/s in the slow spells of the 2-core Zen 2 VM, 96 rows at 122-156 and 48 rows at
# 92-152; in its quiet spells every block size from 64 to 384 KiB ran at 160-170.
A_BLOCK_BYTES = 128 << 10
# matmul_tn sums blocks of this many rows in the input dtype and adds the blocks in
# float64: one float32 sum over 10^4+ rows drifts past torch.nn's per-step sums.
CHUNK_ROWS = 4096

_INLINE = dict(JIT, inline="always")

# The per-step product packs A (the running h, or the gate gradients) into tile-major
# panels before the product where the ISA gains by it (config.Isa.pack_a) and A has
# this many rows: each tile then broadcasts from one contiguous stream instead of MR
# rows. At 16 rows it measured even.
PACK_A = ISA.pack_a
PACK_A_MIN_ROWS = 24
# The weight-gradient sums (_gemm_tn) copy A's columns into panels first, or not
# (config.Isa.tn_pack_a).
TN_PACK_A = ISA.tn_pack_a


@njit(**JIT)
def pack_b_into(b, out):
    """b [K, N] -> panels out [ceil(N / W), K, W], W = NV vectors of columns, zero-padded:
    the tile then reads B as one contiguous stream (row k of a panel right after row
    k - 1). Unpacked, a [512, 2048] float32 B has an 8 KiB stride between the tile's
    consecutive loads: a new page every k, past the reach of the hardware prefetchers."""
    K, N = b.shape
    W = NV * lanes(b)
    for p in range(out.shape[0]):
        n0 = p * W
        nn = min(W, N - n0)
        for k in range(K):
            row, dst = b[k, n0:n0 + nn], out[p, k]  # slices: see _col_sums
            for j in range(nn):
                dst[j] = row[j]
            for j in range(nn, W):
                dst[j] = 0


@njit(**JIT)
def pack_bt_into(w, out):
    """w [N, K] -> out = pack_b(w.T)'s panels [ceil(N / W), K, W], read from w in place:
    a weight [G, I] used as W^T needs no transposed copy first. Square blocks of one
    vector's lanes are transposed in registers (vec.transpose_block), the ragged edges
    one element at a time; the blocks go along S rows of w at a time (S read streams).
    Measured (float32, into a buffer, best of 50, AMD EPYC Zen 4, 2026-12-06): [512, 128]
    5.5-8.5 us, [1024, 256] 28-38, [2048, 512] 102-160, as fast as the plain pack_b of
    the transposed copy (5.5-7.6, 25-31, 98-128), where 8 x 8 blocks copied an element
    at a time (LLVM kept them scalar) took 19.5-19.7, 77-79 and 315-319 us; held to
    AVX2 27 -> 6.5 us, 115 -> 32, 409 -> 139; to SSE2 19.5 -> 7.8, 79 -> 35, 310 -> 136."""
    N, K = w.shape
    W = NV * lanes(w)
    S = lanes(w)
    Ks = K // S * S
    for p in range(out.shape[0]):
        n0 = p * W
        nn = min(W, N - n0)
        Js = nn // S * S
        for j0 in range(0, Js, S):  # S rows of w, read along: S streams
            for k0 in range(0, Ks, S):
                transpose_block(w, (n0 + j0) * K + k0, K, out, (p * K + k0) * W + j0, W)
        for k in range(Ks):
            for j in range(Js, nn):
                out[p, k, j] = w[n0 + j, k]
        for k in range(Ks, K):
            for j in range(nn):
                out[p, k, j] = w[n0 + j, k]
        if nn < W:  # the last panel's padding columns
            for k in range(K):
                for j in range(nn, W):
                    out[p, k, j] = 0


@njit(**_INLINE)
def _panels_room(buf, n, k, like):
    """Room for the panels of n columns by k terms ([ceil(n / W), k, W], like's dtype):
    ``buf`` when it has that shape (a pooled buffer: _host.weight_panels), else a new
    array (buf None or of another shape, such as the empty stand-in)."""
    W = NV * lanes(like)
    P = (n + W - 1) // W
    if buf is None:
        return np.empty((P, k, W), dtype=like.dtype)
    if buf.shape[0] == P and buf.shape[1] == k and buf.shape[2] == W:
        return buf
    return np.empty((P, k, W), dtype=like.dtype)


@njit(**JIT)
def pack_b(b, buf=None):
    """b [K, N] -> its panels (:func:`pack_b_into`), in ``buf`` where it has their shape,
    else in a new array."""
    out = _panels_room(buf, b.shape[1], b.shape[0], b)
    pack_b_into(b, out)
    return out


@njit(**JIT)
def pack_bt(w, buf=None):
    """w [N, K] -> the panels of w^T (:func:`pack_bt_into`), in ``buf`` where it has
    their shape, else in a new array."""
    out = _panels_room(buf, w.shape[0], w.shape[1], w)
    pack_bt_into(w, out)
    return out


# A zero initial state (hx=None's) makes the first step's product h0 @ W_hh^T known
# without a GEMM: :func:`zero_state_product`. Knowing it needs a pass over W_hh (is it
# finite?), about what packing W_hh costs; the product it replaces costs B times a pass
# of multiply-adds. So it is taken from this many batch rows up, or for a single step
# at any batch (there W_hh then needs no packing at all: the pass replaces the pack).
ZERO_STATE_MIN_ROWS = 4


@njit(**_INLINE)
def _all_zero(h0):
    """Whether every element of the state h0 [B, K] is 0 (the state torch.nn makes for
    hx=None); returns at the first one that is not."""
    for b in range(h0.shape[0]):
        for k in range(h0.shape[1]):
            if h0[b, k] != 0:
                return False
    return True


@njit(**_INLINE)
def zero_state_product(h0, w, steps):
    """The first step's product h0 @ w^T (h0 [B, K] C-contiguous, w [N, K] as torch
    stores a recurrent weight) where it is known without a GEMM: every element of h0 is
    0 (the state torch.nn makes for hx=None), at a batch of ZERO_STATE_MIN_ROWS rows or
    more or a single step. Returns it as the one row [N] every batch row shares, IEEE's
    sum over k of 0 * w[n, k]: 0 where w's row n is finite, NaN where it holds an Inf or
    a NaN (as the product gives it; a zero's sign may differ from the GEMM's, which no
    result shows: it only ever meets a sum). Else an empty [0] array: compute the
    product."""
    B, K = h0.shape
    N = w.shape[0]
    none = np.empty(0, dtype=w.dtype)
    if N == 0 or (B < ZERO_STATE_MIN_ROWS and steps > 1) or not _all_zero(h0):
        return none
    out = np.zeros(N, dtype=w.dtype)
    flat = w.reshape(w.size)
    finite = True
    for i in range(flat.size):  # vectorized by LLVM (an and-reduction): ~memory speed
        finite &= abs(flat[i]) < np.inf
    if not finite:
        for n in range(N):
            acc = out[n]
            for k in range(K):
                acc += w[n, k] * 0
            out[n] = acc
    return out


@njit(**_INLINE)
def recurrent_operands(h0, w, buf, steps):
    """What a recurrence of ``steps`` steps from state h0 [B, K] needs of its recurrent
    weight w [N, K]: (w^T's panels, pack_bt into buf, for the per-step products; z0,
    the first step's product where :func:`zero_state_product` knows it, else [0]). The
    panels are empty where no step needs them: a single step whose product z0 gives."""
    z0 = zero_state_product(h0, w, steps)
    if z0.shape[0] > 0 and steps == 1:
        return np.empty((0, 0, 0), dtype=w.dtype), z0
    return pack_bt(w, buf), z0


@njit(**_INLINE)
def step_product(s, h, w_t, z, h_pk, z0, na):
    """z[:na] = h[:na] @ W^T for processing step s of a recurrence (w_t: W^T's panels;
    h_pk: mm_into's scratch), or, at step 0 with a zero state, the rows of z0
    (:func:`zero_state_product`)."""
    if s == 0 and z0.shape[0] > 0:
        for r in range(na):
            for n in range(z0.shape[0]):
                z[r, n] = z0[n]
    else:
        mm_into(h[:na], w_t, z[:na], h_pk)


@njit(**_INLINE)
def columns_product(a, na, bp, c, n0, n1):
    """c[:na, n0:n1] = a[:na] @ B[:, n0:n1] for B packed by :func:`pack_b` (bp), n0 and
    n1 on its panels' bounds: the column split's share of a per-step product (every row,
    some columns; each element as the whole product computes it)."""
    K = a.shape[1]
    W = bp.shape[2]
    zero, one = _plain_ints(na)
    _gemm(a[:na], zero, K, one, K, na, K, bp[n0 // W:n1 // W], n1 - n0, c, n0, c.shape[1],
          zero, c[:0])


@njit(**_INLINE)
def gate_columns_product(s, h, na, w_t, z0, z, ngates, u0, u1):
    """:func:`step_product` for units [u0, u1) of each of the ``ngates`` gate blocks of
    z [B, ngates * H] (the column split): z0's columns at step 0 with a zero state,
    else :func:`columns_product` per block."""
    H = z.shape[1] // ngates
    for k in range(ngates):
        n0 = k * H + u0
        if s == 0 and z0.shape[0] > 0:
            for r in range(na):
                for n in range(n0, n0 + u1 - u0):
                    z[r, n] = z0[n]
        else:
            columns_product(h, na, w_t, z, n0, n0 + u1 - u0)


@njit(**JIT)
def bptt_columns_product(dz, na, w_p, back, dh, lengths, t, u0, u1):
    """The column-split BPTT's product for units [u0, u1) (on panel bounds of w_p, the
    panels of W_hh [G, H] by :func:`pack_b`): back[:na, u0:u1] = dz[:na] @ W_hh[:, u0:u1]
    (dz [B, G]: every row's gate gradients of step t, all G columns), then dh = back
    there for the rows active at t (t < lengths[b]), as the Elman and LSTM row kernels
    set dh after their step. (The GRU adds the product to dh instead.)"""
    columns_product(dz, na, w_p, back, u0, u1)
    for b in range(na):
        if t < lengths[b]:
            for p in range(u0, u1):
                dh[b, p] = back[b, p]


@njit(**_INLINE)
def _block_rows(K, itemsize):
    """Rows of A per L2 block (A_BLOCK_BYTES of K-long rows, K the chunk's terms; whole
    MR-row tiles, at least one)."""
    return max(1, A_BLOCK_BYTES // (max(K, 1) * itemsize * MR)) * MR


@njit(**JIT)
def _gemm(a, a_off, a_rs, a_ks, a_ts, M, K, bp, N, c, c_off, ldc, beta, bias):
    """C[M, N] (= or, beta != 0, +=) A[M, K] @ B[K, N] (+ the bias row when bias is
    [1, N]; else bias is any 2-D array of C's type without one, such as c[:0]: a
    reshape, numba's only way to a 1-D view, cost ~45 ns per call, a sixth of a step of
    a batch-of-one recurrence at H = 32): A and C given by array, element offset and strides
    (see tile.tile), B as packed panels (:func:`pack_b`). A's row-tile starting at row
    r0 begins at a_off + r0 * a_ts (a_ts = a_rs for a plain matrix; K for A packed by
    :func:`pack_a`, whose rows within a tile are 1 apart and terms MR apart).

    Loops (GotoBLAS's order): row blocks of MC, KC-chunks (the block's [MC, KC] slice of A
    stays in L2 while every panel of B's chunk passes), column panels (up to RP at once
    for one row, RP // 2 for two: tile.py's row arms; the [KC, W] slice of a panel stays
    in L1 / L2 while the row tiles pass), row tiles of up to MR. The bias starts the
    accumulators of each tile's first chunk: no pass of its own over C. Every element
    of C is its k-sum in the same order whatever the tile: bitwise the same C for any
    split of the rows.

    Why chunks outside panels: the block's rows are sized by the chunk (KC terms), not
    by all of K, so a long reduction (an LSTM's dx = dz @ W_ih, K = 4H) still runs many
    rows per pass of B. With the panels outside (the block sized by K), K = 2048 made
    12-row blocks and B's 4 MiB (H = 512) passed once per 12 rows: [6400 x 2048] @
    [2048 x 512] float32 ran at 154 GFLOP/s against 227-297 at K = 512 .. 1536 (Intel
    Xeon, AVX-512, two threads, 2026-12-07), 257-286 after; an LSTM layer at (B, H) =
    (64, 512), T = 100: its BPTT kernel (per step [32 x 2048] @ [2048 x 512] per thread,
    3 blocks before, 1 after) 75-81 -> 62-66 ms, its dx 67-71 -> 52-54 ms. The C block is
    read and written once per chunk either way, and each element's sum runs in the same
    order: the same bits as before."""
    L = lanes(c)
    W = NV * L
    has_bias = bias.shape[0] == 1 and bias.shape[1] == N and N > 0
    packed = a_ts != a_rs  # A packed by pack_a (for K = 1 both layouts are the same)
    # One block of up to MR rows (a recurrence's per-step product of a small batch)
    # takes no integer division: 10-16 ns of a 118-195 ns step of the ReLU-RNN forward
    # kernel at B = 1, H = 8..32 (against the same loops with the divisions, Zen 2).
    MC = MR if M <= MR else _block_rows(min(K, KC), a.itemsize)
    m0 = 0
    while m0 < M or m0 == 0:
        m1 = min(m0 + MC, M)
        # one row runs up to RP panels at once, two rows RP // 2 (tile.py: the row
        # arms) where at least two panels remain; no rows (M = 0), one panel per step
        rows = m1 - m0
        rp = RP if rows == 1 else (RP // 2 if rows == 2 else 1)
        group = rp * W
        # Row tiles: MR rows each where A is packed (its tiles are MR rows apart), else
        # as even as they split: 8 rows are 4 + 4 (8 accumulators each), not 6 + 2
        # (the 2-row tile's 4 dependent chains take as long per k as the 6-row tile)
        nt = (m1 - m0 + MR - 1) // MR
        for k0 in range(0, max(K, 1), KC):
            if K == 0 and beta != 0:
                break
            kk = min(KC, K - k0)  # K == 0, beta == 0: one empty sum (zeros + bias)
            add = 1 if beta != 0 or k0 > 0 else 0
            n0 = 0
            while n0 < N:
                step = group if n0 + W < N else W
                nn = min(step, N - n0)
                nv = (nn + L - 1) // L
                nlast = nn - (nv - 1) * L
                b_off = (n0 // W) * K * W
                for t in range(nt):
                    if nt == 1:
                        r0, r1 = m0, m1
                    else:
                        r0 = m0 + t * MR if packed else m0 + t * (m1 - m0) // nt
                        r1 = min(r0 + MR, m1) if packed else m0 + (t + 1) * (m1 - m0) // nt
                    co = c_off + r0 * ldc + n0
                    # The bias seeds the accumulators of each tile's first chunk. Without
                    # one, the tile is pointed at its own C region (valid memory; the
                    # values it loads there are discarded).
                    use = 1 if has_bias and k0 == 0 else 0
                    tile(a, a_off + r0 * a_ts + k0 * a_ks, a_rs, a_ks,
                         bp, b_off + k0 * W, W, K * W,
                         c, co, ldc, kk, r1 - r0, nv, nlast, add,
                         bias if use else c, n0 if use else co, use)
                n0 += step
        m0 += MC


@njit(**_INLINE)
def _plain_ints(n):
    """0 and 1 typed as plain integers: a literal 0 or 1 in a call makes numba compile
    the callee once more for that literal. _gemm and _gemm_tn (with their tiles), the
    weight-gradient part and the recurrences' row loops are the costliest functions to
    compile; their callers pass these (the serial kernels as a first row or part) so
    that each compiles once (tests/test_kernels.py)."""
    zero = n - n
    return zero, zero + 1


@njit(**_INLINE)
def a_scratch(a):
    """The buffer :func:`mm_into` packs a [M, K] (or any first M rows of it) into:
    [ceil(M / MR) * MR, K] of a's dtype where the ISA packs and M is large enough, else
    [0, K]. Allocate it once, outside the time loop. (2-D like a, so that the packed
    product compiles the same _gemm specialisation as the plain one.)"""
    M, K = a.shape
    rows = (M + MR - 1) // MR * MR if PACK_A and M >= PACK_A_MIN_ROWS else 0
    return np.empty((rows, K), dtype=a.dtype)


@njit(**_INLINE)
def pack_a(a, ap):
    """a [M, K] -> ap (C-contiguous, >= ceil(M / MR) * MR * K elements), tile-major:
    rows r0 .. r0 + MR - 1 (r0 = t * MR) as [K, MR] from flat offset r0 * K, so A[r, k]
    is at (r - r % MR) * K + k * MR + r % MR. The last tile's rows past M are not
    written (the tile reads only its mr rows)."""
    M, K = a.shape
    flat = ap.reshape(ap.size)
    for r0 in range(0, M, MR):
        mr = min(MR, M - r0)
        base = r0 * K
        for k in range(K):
            for r in range(mr):
                flat[base + k * MR + r] = a[r0 + r, k]


@njit(**_INLINE)
def mm_into(a, bp, c, ap):
    """c = a @ b; a [M, K], c [M, N] C-contiguous, b packed by :func:`pack_b` from
    [K, N]; ap: :func:`a_scratch` of a or of an array with more rows (a is packed into
    it first where that pays, else it is not touched). The same products in the same
    order either way: bitwise the same c."""
    M, K = a.shape
    N = c.shape[1]
    zero, one = _plain_ints(M)
    packed = False
    if PACK_A:  # a constant: pruned where the ISA does not pack
        packed = M >= PACK_A_MIN_ROWS and K > 0 and ap.shape[0] * ap.shape[1] >= \
            (M + MR - 1) // MR * MR * K
        if packed:
            pack_a(a, ap)
    if packed:
        _gemm(ap, zero, one, one * MR, K, M, K, bp, N, c, zero, N, zero, c[:0])
    else:
        _gemm(a, zero, K, one, K, M, K, bp, N, c, zero, N, zero, c[:0])


@njit(**_INLINE)
def _part(M, p, nparts):
    """Rows [r0, r1) of part p: whole MR-row tiles, as even as they split."""
    tiles = (M + MR - 1) // MR
    r0 = min(M, (p * tiles // nparts) * MR)
    r1 = min(M, ((p + 1) * tiles // nparts) * MR)
    return r0, r1


@njit(**JIT)
def _gemm_tn(a, a0, b, b0, n, out, g0, g1, bidx, b2):
    """out[g0:g1] = sum over k < n of a[a0 + k, g0:g1]^T b[b0 + k, :] (a [*, G],
    b [*, K], out [G, K], C-contiguous): the weight gradients' sums over the T * B rows.

    Per chunk of KC rows both operands are packed, as a BLAS packs them: b's rows
    into column panels [KC, W] first (zero-padded, so any K; each panel one contiguous
    stream), and each row tile's MR columns of a into one [KC, MR] buffer just before
    that tile runs over the panels (one contiguous stream, in L1 while it is read once
    per panel). Packing all of a's tiles first, row by row of a (k outer: each row's
    MR-column pieces written to nt buffers 6 KiB apart), cost up to a third of the sum
    on AVX2: [N x G]^T [N x K] float32 at (N, G, K) = (3200, 512, 128), (3200, 384,
    128), (3200, 768, 256), (3200, 1024, 256), (6400, 1536, 512), AMD EPYC Zen 4 held to
    AVX2, two threads, two alternated rounds: 152-178, 147-180, 180-184, 175-181,
    186-197 GFLOP/s before, 191-192, 187-193, 161-198, 197-199, 203-208 after (bitwise
    the same sums; 203-213 with a's packing skipped altogether). Read in place, a
    tile's k loop stepped G elements through a and K through b, a new 4 KiB page every
    k or two, and ran at 49-62 GFLOP/s against _gemm's 99-108 on the same machine
    (LSTM B = 64, H = 512 weight gradients). Where the ISA's tile has 4 vectors of B
    per broadcast of A (AVX-512: ``config.Isa.tn_pack_a`` False) a is read in place
    instead (its row stride apart per k; b still packed): 7-18% faster on a Zen 4, the
    same sums bitwise.

    bidx int64 [*] (or [0]: b's rows in order): b's row k is row bidx[b0 + k] of b when
    that is >= 0, else row -1 - bidx[b0 + k] of b2 (the packing copies b's rows anyway,
    so a gather of them costs nothing here: h_{t-1} of a packed batch's rows, from y or
    h0; see :func:`layer_grads`)."""
    K = b.shape[1]
    gather = bidx.shape[0] > 0
    L = lanes(out)
    W = NV * L
    P = (K + W - 1) // W
    ng = max(g1 - g0, 0)
    nt = (ng + MR - 1) // MR
    bp = np.empty((P, KC, W), dtype=b.dtype)
    ap = np.empty((KC * MR if TN_PACK_A else 0), dtype=a.dtype)  # one tile's A
    flat_out = out.reshape(out.size)
    lda = a.strides[0] // a.itemsize
    for k0 in range(0, n, KC):
        kk = min(KC, n - k0)
        add = 1 if k0 > 0 else 0
        for p in range(P):
            c0 = p * W
            cn = min(W, K - c0)
            for k in range(kk):
                r = b0 + k0 + k
                src = b
                if gather:
                    r = bidx[r]
                    if r < 0:
                        src = b2
                        r = -1 - r
                row, dst = src[r, c0:c0 + cn], bp[p, k]
                for j in range(cn):
                    dst[j] = row[j]
                for j in range(cn, W):
                    dst[j] = 0
        # tile-outer: a tile's packed A stays in L1 and its row of C is written in
        # order while the panels of B stream past. (Blocks of ~21 tiles with each B
        # panel passing over a block read the weight gradient at (B, H) = (64, 512)
        # at a median 151 GFLOP/s against this order's 167, seven alternated rounds on
        # the Zen 2: each panel then walks a strip of C with rows 2 KiB apart.)
        for t in range(nt):
            mr = min(MR, ng - t * MR)
            gt = g0 + t * MR
            if TN_PACK_A:  # a constant: pruned where A stays in place
                # this tile's columns of a, k by k: [kk, MR], contiguous for the tile
                if mr == MR:  # a constant trip count: unrolled
                    for k in range(kk):
                        src = a[a0 + k0 + k, gt:gt + MR]
                        for r in range(MR):
                            ap[k * MR + r] = src[r]
                else:
                    for k in range(kk):
                        src = a[a0 + k0 + k, gt:gt + mr]
                        for r in range(mr):
                            ap[k * MR + r] = src[r]
            for p in range(P):
                c0 = p * W
                cn = min(W, K - c0)
                nv = (cn + L - 1) // L
                if TN_PACK_A:
                    tile(ap, 0, 1, MR, bp, p * KC * W, W, KC * W,
                         out, (g0 + t * MR) * K + c0, K, kk, mr, nv, cn - (nv - 1) * L,
                         add, flat_out, 0, 0)
                else:
                    tile(a, (a0 + k0) * lda + g0 + t * MR, 1, lda, bp, p * KC * W, W,
                         KC * W, out, (g0 + t * MR) * K + c0, K, kk, mr, nv,
                         cn - (nv - 1) * L, add, flat_out, 0, 0)
    if n == 0:  # explicit loops: numba's slice fill costs ~1 s of compile per process
        for g in range(g0, g1):
            for j in range(K):
                out[g, j] = 0


@njit(**_INLINE)
def _tn_rows(a, a0, b, b0, n, out, acc, g0, g1, bidx, b2):
    """out[g0:g1] = (a[a0:a0+n]^T @ b[b0:b0+n])[g0:g1]: the sum over n rows in blocks of
    CHUNK_ROWS, each block's product added into the float64 acc [g1 - g0, K] (only when
    there is more than one block: :func:`_f64_acc`; the first block's sets it, so it
    needs no zeroing). bidx, b2: b's rows gathered, as :func:`_gemm_tn`."""
    K = b.shape[1]
    for s in range(0, max(n, 1), CHUNK_ROWS):  # n == 0: one empty sum, zeros
        _gemm_tn(a, a0 + s, b, b0 + s, min(CHUNK_ROWS, n - s), out, g0, g1, bidx, b2)
        if n > CHUNK_ROWS:
            for g in range(g0, g1):
                ar, orow = acc[g - g0], out[g]
                if s == 0:
                    for k in range(K):
                        ar[k] = orow[k]
                else:
                    for k in range(K):
                        ar[k] += orow[k]
    if n > CHUNK_ROWS:
        for g in range(g0, g1):
            ar, orow = acc[g - g0], out[g]
            for k in range(K):
                orow[k] = ar[k]


@njit(**_INLINE)
def _no_index():
    """The empty row index of :func:`_gemm_tn`: b's rows in order."""
    return np.empty(0, dtype=np.int64)


@njit(**_INLINE)
def _f64_acc(n, rows, cols):
    """The float64 accumulator _tn_rows needs for an n-row sum into ``rows`` rows of the
    result (empty when n fits one block). Allocated by each thread for its own rows and
    not zeroed: one [G, K] array zeroed by the launching thread before the parallel
    part (2 x 2 MiB at an RNN's (B, H) = (64, 512), fresh pages every call) cost 3.5 ms
    of its 39 ms weight gradients, against 35.7 ms with no accumulator at all."""
    return np.empty((rows if n > CHUNK_ROWS else 0, cols), dtype=np.float64)


@njit(**JIT)
def matmul_tn_kernel(a, b, out):
    """out [G, K] = a [N, G]^T @ b [N, K]: a sum over N rows (the weight gradients); all
    C-contiguous. Blocks of CHUNK_ROWS rows are summed in float64."""
    N, G = a.shape
    _tn_rows(a, 0, b, 0, N, out, _f64_acc(N, G, b.shape[1]), 0, G, _no_index(), b)


@njit(**JIT_PARALLEL)
def matmul_tn_kernel_parallel(a, b, out, nparts):
    """:func:`matmul_tn_kernel` with the G rows of the result split into ``nparts``
    threads."""
    N, G = a.shape
    idx = _no_index()
    for p in prange(nparts):
        g0, g1 = _part(G, p, nparts)
        _tn_rows(a, 0, b, 0, N, out, _f64_acc(N, g1 - g0, b.shape[1]), g0, g1, idx, b)


# ---------------------------------------------------------------- one layer's GEMMs

@njit(**_INLINE)
def _project_part(x, wp, bias, xp, p, nparts):
    """Rows of part p of xp [N, G] = x [N, I] @ W_ih^T (+ bias [G], when it has G)."""
    N, I = x.shape
    G = xp.shape[1]
    r0, r1 = _part(N, p, nparts)
    zero, one = _plain_ints(N)
    _gemm(x, r0 * I, I, one, I, r1 - r0, I, wp, G, xp, r0 * G, G, zero,
          bias.reshape(1, bias.shape[0]))


@njit(**_INLINE)
def projection_bias(b_ih, b_hh, n_hh):
    """A layer's projection bias [G]: b_ih + b_hh on the first n_hh gate columns, b_ih
    alone on the rest (the GRU keeps its n gate's b_hn for the recurrence); [0] (no
    bias) when b_ih is [0]. The same float additions as torch's b_ih + b_hh."""
    G = b_ih.shape[0]
    bias = np.empty(G, dtype=b_ih.dtype)
    for g in range(G):
        bias[g] = b_ih[g] + b_hh[g] if g < n_hh else b_ih[g]
    return bias


@njit(**_INLINE)
def project_part(x, wp, bias, xp, p, nparts):
    """Rows of part p of xp [N, G] = x [N, I] @ W_ih^T + bias, W_ih^T packed by
    :func:`pack_bt` (the recurrence kernels' own projection, before their time loop)."""
    _project_part(x, wp, bias, xp, p, nparts)


@njit(**JIT)
def project_kernel(x, w_ih, bias, xp, w_p):
    """The input projection of a layer: xp [N, G] = x [N, I] @ w_ih [G, I]^T + bias
    (bias [G], or [0] for none), in the input dtype. w_p: room for w_ih's panels
    (_host.panel_buffer; or an empty stand-in)."""
    _project_part(x, pack_bt(w_ih, w_p), bias, xp, 0, 1)


@njit(**JIT_PARALLEL)
def project_kernel_parallel(x, w_ih, bias, xp, w_p, nparts):
    wp = pack_bt(w_ih, w_p)
    for p in prange(nparts):
        _project_part(x, wp, bias, xp, p, nparts)


# Columns per block of :func:`_col_sums`: 8 vectors of float64 accumulators (8 of the
# 32 registers on AVX-512, half of AVX2's 16), summed in registers while rows stream.
COL_SUM_BLOCK = 8 * ISA.lanes(8)


@njit(**_INLINE)
def _col_sums(a, out, g0, g1):
    """out[g] = sum_n a[n, g] for g in [g0, g1), in float64, n in order.

    In blocks of COL_SUM_BLOCK columns, each block's sums held in registers while the
    rows pass: one float64 accumulator array over all g1 - g0 columns, updated in
    memory row after row, did not vectorize and took 2.4 ms for [3200, 256] of a
    float32 [3200, 512] on one Zen 4 core (an LSTM's db at (B, H) = (32, 128), ~1 ms
    of its 8 ms layer gradients on two threads); the blocks take 0.23 ms, bitwise the
    same sums (each column's order is unchanged). Each row is read through a slice, so
    that the inner loop's index starts at 0: indexed as a[n, c0 + j], numba's check
    for a negative index stays in the loop and it ran 6x slower."""
    W = COL_SUM_BLOCK
    acc = np.empty(W, dtype=np.float64)  # zeroed per block below
    for c0 in range(g0, g1, W):
        cn = min(W, g1 - c0)
        for j in range(cn):
            acc[j] = 0.0
        for n in range(a.shape[0]):
            row = a[n, c0:c0 + cn]
            for j in range(cn):
                acc[j] += row[j]
        for j in range(cn):
            out[c0 + j] = acc[j]


@njit(**_INLINE)
def _zero_state_term(first, h0, g0, g1):
    """Whether dW_hh's first-step term, columns [g0, g1) of first^T h0 (first [B, G],
    h0 [B, P]), is zero without computing it: every element of h0 is 0 (hx=None's
    state) and first's columns hold no Inf or NaN (IEEE 0 * Inf is NaN, which the
    product then adds, as torch's does). The mirror of :func:`zero_state_product`: its
    B * G * P multiply-adds are all of dW_hh's at a single step. Skipping the zero
    leaves a -0 of the other steps' sum as -0 (the sum of +0 would make it +0), which no
    comparison of values tells apart."""
    if not _all_zero(h0):
        return False
    finite = True
    for b in range(first.shape[0]):
        for g in range(g0, g1):
            finite &= abs(first[b, g]) < np.inf
    return finite


@njit(**JIT)
def _layer_grads_part(dxp, dgh, x, y, h0, first, h_rows, w_p, forward, dw_ih, dw_hh,
                      db_ih, db_hh, dx, h0_term, p, nparts):
    """Part p of :func:`layer_grads_kernel`: rows [g0, g1) of dW_ih, dW_hh and the bias
    gradients, and rows [r0, r1) of dx (skipped when dx has no rows). Its scratch (the
    float64 block sums) is its own; the first step's product goes to rows [g0, g1) of
    h0_term [G, P] (shared by the parts), or of an array of its own when h0_term has
    another shape."""
    N, G = dxp.shape
    B = h0.shape[0]
    P = h0.shape[1]
    g0, g1 = _part(G, p, nparts)
    none = _no_index()
    _tn_rows(dxp, 0, x, 0, N, dw_ih, _f64_acc(N, g1 - g0, x.shape[1]), g0, g1, none, x)
    if h_rows.shape[0] > 0:  # each row's h_{t-1} named: y's row, or -1 - its h0 row
        _tn_rows(dgh, 0, y, 0, N, dw_hh, _f64_acc(N, g1 - g0, P), g0, g1, h_rows, h0)
    else:
        # dW_hh = sum_t dgh_t^T h_{t-1}: h_{t-1} is y one step back in processing order
        # (a shift of B rows), except at each row's first step, whose h_{t-1} is h0.
        acc_hh = _f64_acc(N - B, g1 - g0, P)
        if forward:
            _tn_rows(dgh, B, y, 0, N - B, dw_hh, acc_hh, g0, g1, none, y)
        else:
            _tn_rows(dgh, 0, y, B, N - B, dw_hh, acc_hh, g0, g1, none, y)
        if not _zero_state_term(first, h0, g0, g1):
            tmp = h0_term if h0_term.shape[0] == G and h0_term.shape[1] == P else \
                np.empty((G, P), dtype=dxp.dtype)  # rows g0..g1 written, then read
            zero, _ = _plain_ints(B)  # not a literal 0: _gemm_tn's one specialisation
            _gemm_tn(first, zero, h0, zero, B, tmp, g0, g1, none, h0)
            for g in range(g0, g1):
                for k in range(P):
                    dw_hh[g, k] += tmp[g, k]
    if db_ih.shape[0] == G:
        _col_sums(dxp, db_ih, g0, g1)
    if db_hh.shape[0] == G:
        _col_sums(dgh, db_hh, g0, g1)
    if dx.shape[0] == N:
        I = dx.shape[1]
        r0, r1 = _part(N, p, nparts)
        zero, one = _plain_ints(N)
        _gemm(dxp, r0 * G, G, one, G, r1 - r0, G, w_p, I, dx, r0 * I, I, zero, dx[:0])


@njit(**_INLINE)
def _dx_panels(w_ih, w_p, dx):
    """W_ih's panels for dx = dxp @ W_ih (pack_b into w_p), or none when dx is not
    wanted (dx [0, 0]: a first layer's input that needs no gradient)."""
    if dx.shape[0] > 0:
        return pack_b(w_ih, w_p)
    return np.empty((0, 0, NV * lanes(w_ih)), dtype=w_ih.dtype)


@njit(**JIT)
def layer_grads_kernel(dxp, dgh, x, y, h0, first, h_rows, w_ih, forward, dw_ih, dw_hh,
                       db_ih, db_hh, dx, w_p, h0_term):
    """The weight and input gradients of one layer direction, from the kernel's
    gradients of the input projection (dxp) and of the recurrent product (dgh)::

        dW_ih = sum_n dxp[n]^T x[n]      dW_hh = sum_t dgh_t^T h_{t-1}
        db_ih = sum_n dxp[n]             db_hh = sum_n dgh[n]      dx = dxp @ W_ih

    dxp, dgh [N, G] (the same array for the RNN and the LSTM; the GRU's differ in the
    n block), x [N, I], y [N, P] (N = T * B rows, time-major), h0 [B, P]; first [B, G]
    holds each row's dgh at its first processed step (whose h_{t-1} is h0); forward:
    time runs t = 0.. (else backwards). db_ih, db_hh are [G] or [0] (not computed),
    dx [N, I] or [0, 0] (not needed). Long sums go through float64 as in
    :func:`matmul_tn_kernel`.

    h_rows int64 [N] (or [0]: the time-major layout above): row n's h_{t-1} is y's row
    h_rows[n] when that is >= 0, else h0's row -1 - h_rows[n] (any row order: a packed
    batch's rows; y [R, P] any rows; first unused). w_p: room for w_ih's panels
    (_host.weight_panels; or an empty stand-in); h0_term: room [G, P] for the first
    step's product first^T h0 (time-major layout only; or an empty stand-in)."""
    zero, one = _plain_ints(dxp.shape[0])  # the parallel kernel's specialisation
    _layer_grads_part(dxp, dgh, x, y, h0, first, h_rows, _dx_panels(w_ih, w_p, dx),
                      forward, dw_ih, dw_hh, db_ih, db_hh, dx, h0_term, zero, one)


@njit(**JIT_PARALLEL)
def layer_grads_kernel_parallel(dxp, dgh, x, y, h0, first, h_rows, w_ih, forward, dw_ih,
                                dw_hh, db_ih, db_hh, dx, w_p, h0_term, nparts):
    """:func:`layer_grads_kernel`, each of ``nparts`` threads taking a share of the rows
    of every result."""
    w_pk = _dx_panels(w_ih, w_p, dx)
    for p in prange(nparts):  # p is unsigned here: typed as the serial kernel's 0
        _layer_grads_part(dxp, dgh, x, y, h0, first, h_rows, w_pk, forward, dw_ih, dw_hh,
                          db_ih, db_hh, dx, h0_term, np.int64(p), nparts)


# ---------------------------------------------------------------- entry points (torch)

def bwd_panels(w_hh, dh0, T, need_dh0):
    """The panels of w_hh for BPTT's products dz @ W_hh (:func:`panels`), or empty
    stand-ins where no step runs one: a single step whose dh0 is not asked for
    (need_dh0 False; dh0 is then the [0, P] stand-in, like whose dtype they are)."""
    if T == 1 and not need_dh0:
        return _host.no_weight(dh0)
    return panels(w_hh)


def panels(w, transpose=False):
    """A weight tensor as the tile reads it (:func:`pack_b`): w^T or w, in column panels,
    in a pooled buffer where it is big (_host.panel_buffer)."""
    a = _host.as_numpy(w)
    buf = _host.weight_panels(w, a, transpose)
    return pack_bt(a, buf) if transpose else pack_b(a, buf)


def matmul_tn(a, b):
    """a^T @ b for 2-D CPU tensors a [N, G], b [N, K] -> new [G, K]: a sum over N rows
    (float64 across blocks of rows), the G rows of the result split across threads."""
    N, G = a.shape
    out = _host.empty(a, (G, b.shape[1]))
    _host.launch(matmul_tn_kernel, matmul_tn_kernel_parallel,
                 _host.gemm_threads(G, N * G * b.shape[1]),
                 _host.as_numpy(a), _host.as_numpy(b), out.numpy())
    return out


def project(x, w_ih, bias=None, scratch=False):
    """A layer's input projection: x [T, B, I] (or rows [N, I]) @ w_ih^T [I, G]
    (+ bias [G]) -> [T, B, G] (or [N, G]). ``scratch``: the result is read only by
    rnnfast's kernels (never returned to the user), so it may come from the scratch
    pool (_host.scratch).

    Both providers write into a buffer made here: torch.addmm's own result of
    [6400, 2048] float32 (52 MiB, above glibc's 32 MiB mmap ceiling) came fresh from
    the OS on every call and faulted each 4 KiB page on first write: 12,801 faults per
    LSTM forward at (T, B, H) = (100, 64, 512), none now. On a 2-core Zen 3 EPYC
    (2026-12-08) the projection alone took 93 ms against 78 ms into a written buffer in
    one run, and 110 against 107 ms (medians of 10) inside the LSTM's forward: the
    faults' cost moves with the machine's state. Below 32 MiB glibc reuses the memory
    and both measured the same."""
    *lead, I = x.shape
    N = math.prod(lead)
    G = w_ih.shape[0]
    xp = _host.scratch(x, (*lead, G))[0] if scratch else _host.empty(x, (*lead, G))
    if layer_gemm_provider(x.dtype, N * I * G) == "torch":
        with _plain_torch():  # no autograd, no autocast
            x2, out = x.reshape(N, I), xp.view(N, G)
            if bias is None:
                torch.mm(x2, w_ih.t(), out=out)
            else:
                torch.addmm(bias, x2, w_ih.t(), out=out)
        return xp
    xn, wn = _host.as_numpy(x), _host.as_numpy(w_ih)
    _host.launch(project_kernel, project_kernel_parallel,
                 _host.gemm_threads(N, N * I * G), xn.reshape(N, I), wn,
                 _host.as_numpy(bias) if bias is not None else np.empty(0, dtype=xn.dtype),
                 xp.numpy().reshape(N, G), _host.weight_panels(x, wn))
    return xp


def layer_grads(dxp, x, y, h0, w_ih, lengths=None, reverse=False, has_bias=True,
                need_dx=True, dgh=None, h_rows=None):
    """One layer direction's weight and input gradients, in one call (see
    :func:`layer_grads_kernel` for the sums).

    dxp [T, B, G] (gradient of the input projection), dgh [T, B, G] (gradient of the
    recurrent product h_{t-1} W_hh^T + b_hh; None: the same as dxp), x [T, B, I],
    y [T, B, P] (the layer's output: h_{t-1} is y one step back in processing order, or
    h0 [B, P] at a row's first step). Returns dx [T, B, I] (or [0] when not need_dx),
    dW_ih [G, I], dW_hh [G, P], db_ih [G], db_hh [G] (both [0] without bias).

    Or any N rows, each naming its own h_{t-1} (a packed batch's active rows): dxp, dgh
    [N, G], x [N, I], y [R, P] (or [T, B, P], as its T * B rows), and ``h_rows`` int64
    [N] (CPU): row n's h_{t-1} is y's row h_rows[n] when that is >= 0, else h0's row
    -1 - h_rows[n]; lengths and reverse are then unused, and dx is [N, I]. The tile
    gathers those rows while it packs them (no copy of h_{t-1} is made).
    """
    G = dxp.shape[-1]
    I = x.shape[-1]
    P = y.shape[-1]
    same = dgh is None
    dgh = dxp if same else dgh
    if h_rows is not None:
        N = dxp.shape[0]
        first = None
    else:
        T, B, _ = dxp.shape
        N = T * B
        if not reverse:
            first = dgh[0]
        elif lengths is None:
            first = dgh[T - 1]
        else:  # a reversed row starts at its own last step
            first = dgh[lengths.to(torch.int64) - 1, torch.arange(B)]
    args = (dxp.reshape(N, G), dgh.reshape(N, G), first, x.reshape(N, I),
            y.reshape(-1, P), h0, h_rows, w_ih, reverse, has_bias, need_dx, same)
    if layer_gemm_provider(dxp.dtype, layer_grads_macs(N, 1, G, I, P, need_dx)) == "torch":
        with _plain_torch():
            dx, *rest = _layer_grads_torch(*args)
    else:
        dx, *rest = _layer_grads_numba(*args)
    return (dx.view(x.shape) if need_dx else dx, *rest)


def layer_grads_macs(T, B, G, I, P, need_dx=True):
    """Multiply-adds of :func:`layer_grads`: dW_ih, dW_hh (and dx) over T * B rows."""
    return T * B * G * (I + P + (I if need_dx else 0))


_ORDERED = np.empty(0, dtype=np.int64)  # layer_grads_kernel's h_rows: the time-major rows


def _layer_grads_numba(d, dg, first, x, y, h0, h_rows, w_ih, reverse, has_bias, need_dx,
                       same):
    """:func:`layer_grads` in one launch of :func:`layer_grads_kernel`, on 2-D rows: d,
    dg [N, G], x [N, I], y [R, P]; first [B, G] (None with h_rows); dx [N, I]."""
    d_n = _host.as_numpy(d)
    return _layer_grads_launch(
        d, d_n, d_n if same else _host.as_numpy(dg),
        _host.as_numpy(first) if first is not None else d_n[:0], _host.as_numpy(x),
        _host.as_numpy(y), _host.as_numpy(h0),
        _ORDERED if h_rows is None else _host.as_numpy(h_rows), _host.as_numpy(w_ih),
        reverse, has_bias, need_dx, same)


def _layer_grads_launch(like, d, dg, first, x, y, h0, h_rows, w_ih, reverse, has_bias,
                        need_dx, same):
    """The launch of :func:`layer_grads_kernel` on numpy operands (d, dg [N, G], dg is d
    when ``same``; first [B, G] or [0, G]; x [N, I]; y [R, P]; h0; h_rows int64 or
    _ORDERED; w_ih [G, I]) -> torch tensors like ``like``: dx [N, I] (or [0]), dW_ih,
    dW_hh, db_ih, db_hh."""
    N, G = d.shape
    I = x.shape[1]
    P = y.shape[1]
    dw_ih = _host.empty(like, (G, I))
    dw_hh = _host.empty(like, (G, P))
    # What is not computed is returned as a fresh [0] tensor (a custom op's returns may
    # not alias each other); the kernel gets a shared empty stand-in (never written).
    none_np = _host.no_vector(like)
    db_ih = like.new_empty((G,) if has_bias else (0,))
    db_hh = like.new_empty((G,) if has_bias and not same else (0,))
    dx = _host.empty(like, (N, I)) if need_dx else like.new_empty((0,))
    _host.launch(layer_grads_kernel, layer_grads_kernel_parallel,
                 _host.gemm_threads(G, layer_grads_macs(N, 1, G, I, P, need_dx)),
                 d, dg, x, y, h0, first, h_rows, w_ih, not reverse, dw_ih.numpy(),
                 dw_hh.numpy(), db_ih.numpy() if has_bias else none_np,
                 db_hh.numpy() if has_bias and not same else none_np,
                 dx.numpy().reshape(N, I) if need_dx else _host.no_rows(like),
                 _host.weight_panels(like, w_ih, False) if need_dx else
                 _host.no_weight(like),
                 _host.pool_rows(like, G, P) if h_rows is _ORDERED else _host.no_rows(like))
    if has_bias and same:
        db_hh = db_ih.clone()
    return dx, dw_ih, dw_hh, db_ih, db_hh


def layer_grads_padded(d, dg, x, y, h0, w_ih, reverse, has_bias, need_dx):
    """:func:`layer_grads` for the one-call layer backwards (``rnn_layer_bwd``, ...): a
    padded layer without lengths whose gate gradients are numpy rows already, d and dg
    [T * B, G] (dg None: d, as layer_grads' ``dgh=None``), x [T, B, I], y the forward's
    output as numpy rows [T * B, P], h0 [B, P], w_ih [G, I] (shapes checked by the
    caller), on the tile (the caller asked :func:`layer_gemm_provider`). The same launch
    as layer_grads, without its torch views and copies of d and dg."""
    T, B, I = x.shape
    same = dg is None
    dg = d if same else dg
    first = dg[(T - 1) * B:] if reverse else dg[:B]  # h_{t-1} = h0 at these rows
    dx, *rest = _layer_grads_launch(
        x, d, dg, first, _host.as_numpy(x).reshape(T * B, I), y, _host.as_numpy(h0),
        _ORDERED, _host.as_numpy(w_ih), reverse, has_bias, need_dx, same)
    return (dx.view(x.shape) if need_dx else dx, *rest)


# ---------------------------------------------------------------- who runs the big layer GEMMs

LAYER_GEMM_ENV = "RNNFAST_LAYER_GEMM"
LAYER_GEMM_MODES = ("auto", "numba", "torch")
# Below this many multiply-adds a layer's gradient GEMMs stay in one compiled launch:
# torch's five ops cost ~5 us each on the host, more than the whole sum at (1, 32).
TORCH_GEMM_MIN_MACS = 1 << 22
# Rows per torch.mm block of the weight-gradient sums (see _mm_tn_blocked).
TORCH_BLOCK_ROWS = 1024
# Calls of at least this many multiply-adds are a size class of their own, timed at a
# large shape: which library is faster changes with the size on some CPUs. On the Intel
# Xeon of 2026-12-07 (AVX-512 on two 512-bit FMA pipes) the tile won the mid-size
# calibration (2.7 against 3.2 ms) while torch.mm ran an LSTM layer's gradient GEMMs at
# (B, H) = (64, 512), T = 100 in ~135 ms against the tile's ~165 (fwd+bwd 333 against
# 360 ms; torch.nn 381).
LARGE_GEMM_MACS = 1 << 31
# (N rows, G gate columns, K = I = P) of each size class's calibration (_calibrate)
CALIBRATION_SHAPES = {"mid": (1024, 512, 128), "large": (2048, 2048, 512)}
_CHOICE = {}  # (torch dtype, size class) -> (provider, {provider: seconds}) in this process
_CHOICE_LOCK = threading.RLock()  # one calibration per dtype, whichever thread asks first


def layer_gemm_provider(dtype, macs):
    """Who computes a layer's GEMMs over all time steps, the input projection
    (:func:`project`) and the weight and input gradients (:func:`layer_grads`: dW_ih,
    dW_hh, db, dx): "numba" (``*_kernel``, the register tile) or "torch" (torch.mm:
    oneDNN / MKL / OpenBLAS, the library torch.nn itself uses). The per-step products
    inside the time loops are always the tile's.

    These GEMMs run once per layer, outside the time loop, so they are plain BLAS work:
    whichever library is faster on this CPU should do them. Which one is, is a fact of
    the machine: on a 2 GHz Xeon (AVX-512) torch.mm ran [6400 x 1536]^T [6400 x 512]
    at 107-112 GFLOP/s against the tile's 75; held to AVX2, 63-85 against 50-53; an
    earlier AMD EPYC (Zen 4) ran the tile at 2x torch.mm; on an AMD EPYC Zen 2 (AVX2)
    the tile ran an LSTM layer's gradient sums at 0.94-1.25x torch.mm's speed and its
    projection at 1.16-1.63x, (B, H) = (16, 64) .. (64, 512), T = 100 (one process,
    2026-12-02); and the answer can change with the size (LARGE_GEMM_MACS). So ``auto``
    (the default) times both once per process, dtype and size class (one thread times,
    others wait), on the first call of the class, and keeps the faster: calls of
    TORCH_GEMM_MIN_MACS multiply-adds up to LARGE_GEMM_MACS, and larger ones
    (:data:`CALIBRATION_SHAPES`); smaller calls stay in one compiled launch. Under
    ``torch.use_deterministic_algorithms(True)`` ``auto`` is the tile, untimed: where
    the two timed within a few percent the choice, and with it the result's last bits,
    changed from one run of a program to the next (1 run in 6 under load).
    ``RNNFAST_LAYER_GEMM=numba|torch`` forces either.

    Raises ValueError for any other value of RNNFAST_LAYER_GEMM."""
    mode = setting(LAYER_GEMM_ENV, "auto")
    if mode != "auto":
        if mode not in LAYER_GEMM_MODES:
            raise ValueError(f"{LAYER_GEMM_ENV} must be one of {LAYER_GEMM_MODES}, "
                             f"got {mode!r}")
        return mode
    if macs < TORCH_GEMM_MIN_MACS or torch.are_deterministic_algorithms_enabled():
        return "numba"
    key = (dtype, size_class(macs))
    choice = _CHOICE.get(key)
    if choice is None:
        # threads making a process's first calls together wait for one calibration
        # (each timing both providers under the others' load could pick differently,
        # and its first call then differ from its repeats by rounding)
        with _CHOICE_LOCK:
            choice = _CHOICE.get(key)
            if choice is None:
                with _outside_torch_modes(), _plain_torch():
                    choice = _CHOICE[key] = _calibrate(dtype, *CALIBRATION_SHAPES[key[1]])
    return choice[0]


def size_class(macs):
    """The calibration class of a layer GEMM call of ``macs`` multiply-adds (at least
    TORCH_GEMM_MIN_MACS): 'mid' or 'large' (LARGE_GEMM_MACS)."""
    return "large" if macs >= LARGE_GEMM_MACS else "mid"


def layer_gemm_choice(dtype, macs=TORCH_GEMM_MIN_MACS):
    """(provider, {provider: seconds per call}) as measured by ``auto`` in this process
    for dtype and the size class of a call of ``macs`` multiply-adds, or None when no
    call has needed that choice yet."""
    return _CHOICE.get((dtype, size_class(macs)))


def layer_gemm_choices(dtype):
    """{size class: :func:`layer_gemm_choice`} for the classes ``auto`` has timed in
    this process for dtype (empty when none)."""
    return {c: _CHOICE[(dtype, c)] for c in CALIBRATION_SHAPES if (dtype, c) in _CHOICE}


def _calibrate(dtype, N=1024, G=512, K=128, reps=5, budget=0.6):
    """Time both providers on one layer's projection and gradients at a shape of its
    size class (N rows, G gate columns, I = P = K; the mid class ~0.5 GFLOP per call,
    the large one ~17) as a layer's backward runs them: right after a compiled kernel on
    numba's threads, and followed by one. After one warm-up call each (which may
    compile), ``reps`` rounds alternating the two (at least two, no more once ``budget``
    seconds have gone), the best round of each, so that a burst of load on a shared
    machine hits both alike.

    Each round is (untimed) a projection on the tile, then (timed) the provider's
    projection and gradients and the tile's projection once more. numba's kernels and
    torch's ops run on two OpenMP thread pools (two copies of libgomp), and each pool's
    threads spin for a while after their work (libgomp's GOMP_SPINCOUNT), taking a core
    from the other: on a 2-core AMD EPYC Zen 2 torch.mm alone ran these sums at ~0.9x
    the tile's speed, and alternating with the tile's kernels the torch provider made an
    LSTM layer's fwd+bwd at (B, H) = (32, 256) 81.6 ms against the tile's 68.9 ms
    (layer gradients 41.8 against 33.1 ms; the recurrences unchanged). Timed alone and
    back to back, the two measured even there, and ``auto`` picked either."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    T, B = N // 16, 16
    dxp, x, y, h0, w = r(T, B, G), r(T, B, K), r(T, B, K), r(B, K), r(G, K)
    xp_n = np.empty((N, G), dtype=x.numpy().dtype)
    args = (dxp.view(N, G), dxp.view(N, G), dxp[0], x.view(N, K), y.view(N, K), h0, None, w,
            False, True, True, True)
    bias_n = w.numpy()[:, 0].copy()

    def tile_projection():
        _host.launch(project_kernel, project_kernel_parallel,
                     _host.gemm_threads(N, N * K * G), x.numpy().reshape(N, K),
                     w.numpy(), bias_n, xp_n, _host.weight_panels(w, w.numpy()))

    def numba_():
        tile_projection()
        _layer_grads_numba(*args)

    def torch_():
        torch.addmm(w[:, 0], x.view(N, K), w.t())
        _layer_grads_torch(*args)

    calls = {"numba": numba_, "torch": torch_}
    for fn in calls.values():
        fn()
    times = dict.fromkeys(calls, float("inf"))
    start = time.perf_counter()
    for rep in range(reps):
        if rep >= 2 and time.perf_counter() - start > budget:
            break  # the large class: ~0.2 s a round
        for name, fn in calls.items():
            tile_projection()
            t0 = time.perf_counter()
            fn()
            tile_projection()
            times[name] = min(times[name], time.perf_counter() - t0)
    return min(times, key=times.get), times


_NULL_CONTEXT = contextlib.nullcontext()


def _plain_torch():
    """The torch provider's ops run without autograd and without autocast: a backward
    called inside ``torch.autocast("cpu")`` must not turn these GEMMs to bfloat16."""
    if not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
        return _NULL_CONTEXT  # the common case (a backward): no context to enter
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(torch.autocast("cpu", enabled=False))
    return stack


def _outside_torch_modes():
    """No TorchDispatchMode or TorchFunctionMode of the caller's sees the calibration's
    ops (they are not the user's work: torch.utils.flop_counter.FlopCounterMode counted
    2.4 GFLOP of them in a ReLU-RNN's first backward at T = 50, B = 16, H = 64, 93x the
    layer's own; and under ``torch.set_default_device`` or a ``torch.device`` context,
    function modes, its tensors would be made on that device): the dispatch modes are
    taken off torch's stack while it runs and put back after; torch functions skip
    their modes meanwhile."""
    from torch.utils import _python_dispatch
    stack = contextlib.ExitStack()
    disable = getattr(_python_dispatch, "_disable_current_modes", None)
    if disable is not None:
        stack.enter_context(disable())
    no_functions = getattr(torch._C, "DisableTorchFunction", None)
    if no_functions is not None:
        stack.enter_context(no_functions())
    return stack


def _mm_tn_blocked(a, b, a0=None, b0=None):
    """a^T b (+ a0^T b0) for float32 / float64 [N, *] operands: torch.mm over blocks of
    TORCH_BLOCK_ROWS rows, the blocks' products added pairwise (a float32 sum over
    thousands of rows in one torch.mm drifts past torch.nn's error, whose autograd adds
    T per-step products). ``RNNFAST_LAYER_GEMM=torch python -m bench --only fidelity
    --cells gru,rnn_tanh`` (T = 100, B = 16, H = 64, 2026-12-01): dW_hh's float32 error
    was 1.44-1.46x torch.nn's with one torch.mm, 1.30x with 1024-row blocks added in
    float64 (1.26x with 512, 1.27-1.28x on the numba tile).

    The blocks' products are added in the operands' dtype, pairwise (a binary counter:
    at most log2(blocks) partial sums alive), which adds log2(blocks) roundings to each
    entry where the float64 sum added one: on [6400 x 1536]^T [6400 x 512] the
    relative error (against float64) went 3.385e-7 -> 3.416e-7 (one torch.mm: 3.561e-7),
    and the call 235 -> 197 ms; [64000 x 256]^T [64000 x 64] 2.83e-7 -> 2.91e-7 and
    172 -> 100 ms (/tmp/tb/pair.py, 2 GHz Xeon, 2026-12-01): torch's float32 + float64
    adds, the float64 zeros and the cast back were the cost. Up to TORCH_BLOCK_ROWS rows
    the sum is one torch.mm (the a0^T b0 term added by addmm_): an LSTM layer's
    gradients at T = 35, B = 20, H = 200 (680 rows) took 12 ms with the float64
    accumulator and 7.4 ms without."""
    N = a.shape[0]
    out = torch.mm(a0.t(), b0) if a0 is not None else None
    if N <= TORCH_BLOCK_ROWS:
        return torch.mm(a.t(), b) if out is None else out.addmm_(a.t(), b)
    partial = []  # (level, the sum of 2^level consecutive blocks' products)
    for r in range(0, N, TORCH_BLOCK_ROWS):
        s = torch.mm(a[r:r + TORCH_BLOCK_ROWS].t(), b[r:r + TORCH_BLOCK_ROWS])
        level = 0
        while partial and partial[-1][0] == level:
            s = partial.pop()[1].add_(s)
            level += 1
        partial.append((level, s))
    s = partial.pop()[1]
    while partial:
        s = partial.pop()[1].add_(s)
    return s if out is None else s.add_(out)


def _layer_grads_torch(d, dg, first, x, y, h0, h_rows, w_ih, reverse, has_bias, need_dx,
                       same):
    """:func:`layer_grads` through torch.mm, on 2-D rows as :func:`_layer_grads_numba`:
    the same sums, in the same grouping (the h_{t-1} of a row's first step is h0; past a
    row's length dgh is 0 and y is 0)."""
    N, G = d.shape
    dw_ih = _mm_tn_blocked(d, x)
    if h_rows is not None:  # the rows' h_{t-1} gathered from y and h0
        R = y.shape[0]
        src = torch.cat([y, h0])
        dw_hh = _mm_tn_blocked(dg, src.index_select(
            0, torch.where(h_rows >= 0, h_rows, R - 1 - h_rows)))
    else:
        B = h0.shape[0]
        if reverse:
            dw_hh = _mm_tn_blocked(dg[:N - B], y[B:], first, h0)
        else:
            dw_hh = _mm_tn_blocked(dg[B:], y[:N - B], first, h0)
    if has_bias:
        db_ih = d.sum(0)
        db_hh = db_ih.clone() if same else dg.sum(0)
    else:
        db_ih = db_hh = d.new_empty((0,))
    dx = torch.mm(d, w_ih) if need_dx else d.new_empty((0,))
    return dx, dw_ih, dw_hh, db_ih, db_hh
