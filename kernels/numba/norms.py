"""The per-step gradient norms ||dL/dh_t|| that every BPTT kernel returns (rnn.py,
lstm.py, gru.py; the study's measure, ``last_grad_norms``): one float64 sum of squares
per step, each term summed in a fixed order, so the norms are deterministic whatever the
thread count.

A step's BPTT keeps per-unit sums of squares (``sq`` [H] float64, summed over its rows
as the pointwise step goes, each square taken in float64: vec.add_squares), which keeps
the step's inner loop free of a serial reduction; :func:`sum_of_squares` folds them in
unit order. (Squared in float32, a float32 kernel's norms read 0 below ~1e-19 and inf
above ~2e19, where torch's norm of the same float32 gradients sums in double.) The
batch-split kernels give each thread's rows a row of a [nchunks, T] buffer, folded in
chunk order by
:func:`chunk_norms`."""

import math

import numpy as np
from numba import njit

from .config import INLINE


@njit(**INLINE)
def sum_of_squares(sq):
    """The float64 sum of sq's entries, in index order (sq: one step's per-unit sums of
    squares, float64)."""
    acc = 0.0
    for p in range(sq.shape[0]):
        acc += np.float64(sq[p])
    return acc


@njit(**INLINE)
def chunk_norms(sq, norms):
    """norms[t] = sqrt(sum over c of sq[c, t]), the chunks in order (sq: [nchunks, T]
    float64, each chunk's squared norms of its rows)."""
    for t in range(norms.shape[0]):
        acc = 0.0
        for c in range(sq.shape[0]):
            acc += sq[c, t]
        norms[t] = math.sqrt(acc)


@njit(**INLINE)
def sqrt_in_place(norms):
    """norms[t] = sqrt(norms[t]): a serial kernel's sums of squares into norms."""
    for t in range(norms.shape[0]):
        norms[t] = math.sqrt(norms[t])
