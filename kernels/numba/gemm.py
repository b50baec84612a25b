"""Matrix products of the CPU backend, on the register tile of :mod:`simd`.

* :func:`mm_into` - C (+)= A @ B for C-contiguous 2-D arrays: the kernels' per-step
  product ([rows, H] @ [H, 4H] forward, [rows, 4H] @ [4H, H] backward), and the serial
  core of the layer GEMMs.
* :func:`matmul` / :func:`matmul_tn` - the layer's GEMMs over all time steps at once
  (input projection and dx; the weight gradients, a^T @ b summed over T * B rows), with
  parallel variants that split the output rows across threads.

Blocking: columns in panels of NV vectors, the reduction in chunks of KC terms (a
[KC, 64] float32 panel of B is 64 KiB and stays in L2 while the row tiles pass over it),
rows in tiles of MR. Each output element is the sum of its KC-chunks, each chunk summed
in registers by fused multiply-adds in k order: a fixed order that does not depend on
the thread split, so results are bitwise reproducible across thread counts.
"""

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import overload

from .config import JIT, JIT_PARALLEL
from .simd import MR, NV, lanes_of, tile

KC = 256  # reduction chunk: terms summed in registers before C is updated
MC = 32 * MR  # row block: a [MC, K <= 512] float32 block of A (384 KiB) stays in L2
# matmul_tn sums blocks of this many rows in the input dtype and adds the blocks in
# float64: one float32 sum over 10^4+ rows drifts past torch.nn's per-step sums.
CHUNK_ROWS = 4096

_INLINE = dict(JIT, inline="always")


def _lanes(c):
    pass


@overload(_lanes, jit_options=dict(cache=JIT["cache"]))
def _lanes_impl(c):
    n = lanes_of(c.dtype)
    return lambda c: n


@njit(**JIT)
def pack_b(b):
    """b [K, N] -> panels [ceil(N / W), K, W], W = NV vectors of columns, zero-padded:
    the tile then reads B as one contiguous stream (row k of a panel right after row
    k - 1). Unpacked, a [512, 2048] float32 B has an 8 KiB stride between the tile's
    consecutive loads: a new page every k, past the reach of the hardware prefetchers."""
    K, N = b.shape
    W = NV * _lanes(b)
    out = np.zeros(((N + W - 1) // W, K, W), dtype=b.dtype)
    for p in range(out.shape[0]):
        n0 = p * W
        for k in range(K):
            for j in range(min(W, N - n0)):
                out[p, k, j] = b[k, n0 + j]
    return out


@njit(**JIT)
def _gemm(a, a_off, a_rs, a_ks, M, K, bp, N, c, c_off, ldc, beta):
    """C[M, N] (= or, beta != 0, +=) A[M, K] @ B[K, N]: A and C given by array, element
    offset and strides (see simd.tile), B as packed panels (:func:`pack_b`).

    Loops: row blocks of MC (A's block stays in L2 while every panel of B passes), column
    panels, KC-chunks (the [KC, W] slice of a panel stays in L1), row tiles of MR."""
    L = _lanes(c)
    W = NV * L
    for m0 in range(0, max(M, 1), MC):
        m1 = min(m0 + MC, M)
        for n0 in range(0, N, W):
            nn = min(W, N - n0)
            nv = (nn + L - 1) // L
            nlast = nn - (nv - 1) * L
            b_off = (n0 // W) * K * W
            if K == 0 and beta == 0:  # an empty sum: zeros (a tile with k_len 0 stores 0)
                for r0 in range(m0, m1, MR):
                    tile(a, 0, 0, 0, bp, 0, 0, c, c_off + r0 * ldc + n0, ldc, 0,
                         min(MR, m1 - r0), nv, nlast, 0)
            for k0 in range(0, K, KC):
                kk = min(KC, K - k0)
                add = 1 if beta != 0 or k0 > 0 else 0
                for r0 in range(m0, m1, MR):
                    tile(a, a_off + r0 * a_rs + k0 * a_ks, a_rs, a_ks,
                         bp, b_off + k0 * W, W,
                         c, c_off + r0 * ldc + n0, ldc, kk, min(MR, m1 - r0), nv, nlast,
                         add)


@njit(**_INLINE)
def mm_into(a, bp, c, beta=0):
    """c (=, or beta != 0: +=) a @ b; a [M, K], c [M, N] C-contiguous, b packed by
    :func:`pack_b` from [K, N]."""
    M, K = a.shape
    N = c.shape[1]
    _gemm(a, 0, K, 1, M, K, bp, N, c, 0, N, beta)


@njit(**_INLINE)
def _part(M, p, nparts):
    """Rows [r0, r1) of part p: whole MR-row tiles, as even as they split."""
    tiles = (M + MR - 1) // MR
    r0 = min(M, (p * tiles // nparts) * MR)
    r1 = min(M, ((p + 1) * tiles // nparts) * MR)
    return r0, r1


@njit(**JIT)
def matmul(a, b, out):
    """out [M, N] = a [M, K] @ b [K, N]; all C-contiguous."""
    mm_into(a, pack_b(b), out)


@njit(**JIT_PARALLEL)
def matmul_parallel(a, b, out, nparts):
    """:func:`matmul` with the rows of the result split into ``nparts`` threads."""
    M, K = a.shape
    N = b.shape[1]
    bp = pack_b(b)
    for p in prange(nparts):
        r0, r1 = _part(M, p, nparts)
        _gemm(a, r0 * K, K, 1, r1 - r0, K, bp, N, out, r0 * N, N, 0)


@njit(**JIT)
def _gemm_tn(a, s0, s1, b, out, g0, g1):
    """out[g0:g1] = sum over rows n in [s0, s1) of a[n, g0:g1]^T b[n, :] (a [N, G],
    b [N, K], out [G, K], C-contiguous). A^T is read down a's columns (each k a new row
    of a): each MR x KC tile of it is copied once into a small contiguous buffer and
    reused by every column panel; b's KC x K chunk is read in place (row stride K) and
    stays in L2 while the row tiles pass."""
    G = a.shape[1]
    K = b.shape[1]
    L = _lanes(out)
    W = NV * L
    for k0 in range(s0, s1, KC):
        kk = min(KC, s1 - k0)
        add = 1 if k0 > s0 else 0
        for r0 in range(g0, g1, MR):
            mr = min(MR, g1 - r0)
            for n0 in range(0, K, W):
                nn = min(W, K - n0)
                nv = (nn + L - 1) // L
                tile(a, k0 * G + r0, 1, G, b, k0 * K + n0, K, out, r0 * K + n0, K, kk, mr,
                     nv, nn - (nv - 1) * L, add)
    if s1 == s0:
        out[g0:g1] = 0


@njit(**_INLINE)
def _tn_rows(a, b, out, acc, g0, g1):
    """out[g0:g1] = (a^T @ b)[g0:g1] for a [N, G], b [N, K]: the sum over N rows in
    blocks of CHUNK_ROWS, each block's product added into the float64 acc [G, K] (only
    when there is more than one block)."""
    N = a.shape[0]
    K = b.shape[1]
    for s in range(0, N, CHUNK_ROWS):
        _gemm_tn(a, s, min(s + CHUNK_ROWS, N), b, out, g0, g1)
        if N > CHUNK_ROWS:
            for g in range(g0, g1):
                for k in range(K):
                    acc[g, k] += out[g, k]
    if N == 0:
        out[g0:g1] = 0
    if N > CHUNK_ROWS:
        for g in range(g0, g1):
            for k in range(K):
                out[g, k] = acc[g, k]


@njit(**JIT)
def matmul_tn(a, b, out):
    """out [G, K] = a [N, G]^T @ b [N, K]: a sum over N rows (the weight gradients); all
    C-contiguous. Blocks of CHUNK_ROWS rows are summed in float64."""
    G = a.shape[1]
    acc = np.zeros((G if a.shape[0] > CHUNK_ROWS else 0, b.shape[1]), dtype=np.float64)
    _tn_rows(a, b, out, acc, 0, G)


@njit(**JIT_PARALLEL)
def matmul_tn_parallel(a, b, out, nparts):
    """:func:`matmul_tn` with the G rows of the result split into ``nparts`` threads."""
    G = a.shape[1]
    acc = np.zeros((G if a.shape[0] > CHUNK_ROWS else 0, b.shape[1]), dtype=np.float64)
    for p in prange(nparts):
        g0, g1 = _part(G, p, nparts)
        _tn_rows(a, b, out, acc, g0, g1)
