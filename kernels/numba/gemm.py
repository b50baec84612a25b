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
def _gemm(a, a_off, a_rs, a_ks, M, K, b, b_off, ldb, N, c, c_off, ldc, beta):
    """C[M, N] (= or, beta != 0, +=) A[M, K] @ B[K, N], each operand given by its array,
    element offset and strides (see simd.tile). Columns, then KC-chunks, then row tiles."""
    L = _lanes(c)
    W = NV * L
    for n0 in range(0, N, W):
        nn = min(W, N - n0)
        nv = (nn + L - 1) // L
        nlast = nn - (nv - 1) * L
        if K == 0 and beta == 0:  # an empty sum: zeros (the tile with k_len 0 stores 0)
            for r0 in range(0, M, MR):
                tile(a, 0, 0, 0, b, 0, 0, c, c_off + r0 * ldc + n0, ldc, 0,
                     min(MR, M - r0), nv, nlast, 0)
        for k0 in range(0, K, KC):
            kk = min(KC, K - k0)
            add = 1 if beta != 0 or k0 > 0 else 0
            for r0 in range(0, M, MR):
                tile(a, a_off + r0 * a_rs + k0 * a_ks, a_rs, a_ks,
                     b, b_off + k0 * ldb + n0, ldb,
                     c, c_off + r0 * ldc + n0, ldc, kk, min(MR, M - r0), nv, nlast, add)


@njit(**_INLINE)
def mm_into(a, b, c, beta=0):
    """c (=, or beta != 0: +=) a @ b; a [M, K], b [K, N], c [M, N], all C-contiguous."""
    M, K = a.shape
    N = b.shape[1]
    _gemm(a, 0, K, 1, M, K, b, 0, N, N, c, 0, N, beta)


@njit(**_INLINE)
def _part(M, p, nparts):
    """Rows [r0, r1) of part p: whole MR-row tiles, as even as they split."""
    tiles = (M + MR - 1) // MR
    r0 = min(M, (p * tiles // nparts) * MR)
    r1 = min(M, ((p + 1) * tiles // nparts) * MR)
    return r0, r1


@njit(**JIT)
def matmul(a, b):
    """a [M, K] @ b [K, N] -> new [M, N]; a, b C-contiguous."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    mm_into(a, b, out)
    return out


@njit(**JIT_PARALLEL)
def matmul_parallel(a, b, nparts):
    """:func:`matmul` with the rows of the result split into ``nparts`` threads."""
    M, K = a.shape
    N = b.shape[1]
    out = np.empty((M, N), dtype=a.dtype)
    for p in prange(nparts):
        r0, r1 = _part(M, p, nparts)
        _gemm(a, r0 * K, K, 1, r1 - r0, K, b, 0, N, N, out, r0 * N, N, 0)
    return out


@njit(**_INLINE)
def _tn_rows(a, b, out, acc, g0, g1):
    """out[g0:g1] = (a^T @ b)[g0:g1] for a [N, G], b [N, K]: the sum over N rows in
    CHUNK_ROWS blocks, each block's product added into the float64 acc [G, K] (only
    when there is more than one block)."""
    N, G = a.shape
    K = b.shape[1]
    if N <= CHUNK_ROWS:
        _gemm(a, g0, 1, G, g1 - g0, N, b, 0, K, K, out, g0 * K, K, 0)
        return
    for s in range(0, N, CHUNK_ROWS):
        e = min(s + CHUNK_ROWS, N)
        _gemm(a, s * G + g0, 1, G, g1 - g0, e - s, b, s * K, K, K, out, g0 * K, K, 0)
        for g in range(g0, g1):
            for k in range(K):
                acc[g, k] += out[g, k]
    for g in range(g0, g1):
        for k in range(K):
            out[g, k] = acc[g, k]


@njit(**JIT)
def matmul_tn(a, b):
    """a [N, G]^T @ b [N, K] -> new [G, K]: a sum over N rows (the weight gradients);
    a, b C-contiguous. Blocks of CHUNK_ROWS rows are summed in float64."""
    G = a.shape[1]
    K = b.shape[1]
    out = np.empty((G, K), dtype=a.dtype)
    acc = np.zeros((G if a.shape[0] > CHUNK_ROWS else 0, K), dtype=np.float64)
    _tn_rows(a, b, out, acc, 0, G)
    return out


@njit(**JIT_PARALLEL)
def matmul_tn_parallel(a, b, nparts):
    """:func:`matmul_tn` with the G rows of the result split into ``nparts`` threads."""
    G = a.shape[1]
    K = b.shape[1]
    out = np.empty((G, K), dtype=a.dtype)
    acc = np.zeros((G if a.shape[0] > CHUNK_ROWS else 0, K), dtype=np.float64)
    for p in prange(nparts):
        g0, g1 = _part(G, p, nparts)
        _tn_rows(a, b, out, acc, g0, g1)
    return out
