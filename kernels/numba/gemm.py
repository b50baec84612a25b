"""The CPU's large GEMMs (input projection, weight and input gradients), on the same
BLAS as the kernels' per-step product (scipy's OpenBLAS through numba's ``np.dot``)."""

import numpy as np
from numba import njit, prange

from .config import JIT, JIT_PARALLEL

CHUNK_ROWS = 1024


@njit(**JIT)
def matmul(a, b):
    """a [M, K] @ b [K, N] -> new C-contiguous [M, N]; a, b C- or F-contiguous."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    np.dot(a, b, out)
    return out


@njit(**JIT)
def matmul_tn(a, b):
    """a [N, G]^T @ b [N, K] -> [G, K]: a sum over N rows (the weight gradients).

    Beyond 2 * CHUNK_ROWS rows, chunks of CHUNK_ROWS rows are multiplied in the input
    dtype and their partial products added in float64: one float32 GEMM with a 10^4-long
    reduction drifts further from the float64 result than torch.nn's per-step sums do.
    """
    N, G = a.shape
    K = b.shape[1]
    out = np.empty((G, K), dtype=a.dtype)
    if N <= 2 * CHUNK_ROWS:
        np.dot(a.T, b, out)
        return out
    acc = np.zeros((G, K), dtype=np.float64)
    for s in range(0, N, CHUNK_ROWS):
        e = min(s + CHUNK_ROWS, N)
        np.dot(a[s:e].T, b[s:e], out)
        acc += out
    for g in range(G):
        for k in range(K):
            out[g, k] = acc[g, k]
    return out


@njit(**JIT_PARALLEL)
def matmul_tn_parallel(a, b, nparts):
    """matmul_tn with the N rows split into ``nparts`` contiguous ranges, one thread
    each (single-threaded BLAS inside), each range summed in CHUNK_ROWS chunks into its
    own float64 partial; the partials are added in range order (deterministic)."""
    N, G = a.shape
    K = b.shape[1]
    parts = np.zeros((nparts, G, K), dtype=np.float64)
    for p in prange(nparts):
        s0 = p * N // nparts
        s1 = (p + 1) * N // nparts
        tmp = np.empty((G, K), dtype=a.dtype)
        for s in range(s0, s1, CHUNK_ROWS):
            e = min(s + CHUNK_ROWS, s1)
            np.dot(a[s:e].T, b[s:e], tmp)
            parts[p] += tmp
    out = np.empty((G, K), dtype=a.dtype)
    acc = parts[0]
    for p in range(1, nparts):
        acc += parts[p]
    for g in range(G):
        for k in range(K):
            out[g, k] = acc[g, k]
    return out
