"""Active rows of a batch sorted by length (a PackedSequence's order), for the recurrence
kernels of rnn.py, lstm.py and gru.py.

Row b is active at step t iff t < lengths[b]. When lengths are non-increasing over a
thread's rows [b0, b1), the rows active at any step are a prefix [b0, b0 + n) of them,
in either time direction: the per-step product then runs on those n rows only (each
row of the tile's product is its own sum, in a fixed k order, so the active rows'
results are bitwise the same as in a product over all rows), and a packed batch costs
its tokens, not its padded size. With lengths in any other order every step runs all
the rows, as before.

The batch-parallel drivers split a sorted batch so that each thread gets about the same
number of tokens (a split by rows would hand the first thread the longest sequences);
any other batch is split by rows.
"""

import numpy as np
from numba import njit

from .config import INLINE


@njit(**INLINE)
def is_sorted(lengths, b0, b1):
    """True when lengths[b0:b1] is non-increasing (the active rows are then a prefix)."""
    for b in range(b0 + 1, b1):
        if lengths[b] > lengths[b - 1]:
            return False
    return True


@njit(**INLINE)
def active_rows(lengths, b0, b1, t, prefix):
    """How many of the rows [b0, b1) the step t's product runs on: the active prefix
    when ``prefix`` (:func:`is_sorted` of these rows), else all of them."""
    if not prefix:
        return b1 - b0
    n = 0
    while b0 + n < b1 and lengths[b0 + n] > t:
        n += 1
    return n


@njit(**INLINE)
def chunk_bounds(lengths, nchunks):
    """Row bounds [nchunks + 1] of the batch-parallel split: about equal tokens per chunk
    when the whole batch is sorted (at least one row each while B >= nchunks), else
    about equal rows (c * B // nchunks)."""
    B = lengths.shape[0]
    bounds = np.empty(nchunks + 1, dtype=np.int64)
    for c in range(nchunks + 1):
        bounds[c] = c * B // nchunks
    if nchunks < 2 or B < nchunks or not is_sorted(lengths, 0, B):
        return bounds
    total = 0
    for b in range(B):
        total += lengths[b]
    b = 0
    done = 0  # tokens in rows [0, b)
    for c in range(1, nchunks):
        # the first row bound whose prefix holds at least c / nchunks of the tokens
        while b < B and done * nchunks < c * total:
            done += lengths[b]
            b += 1
        bounds[c] = min(max(b, bounds[c - 1] + 1), B - (nchunks - c))
    return bounds


@njit(**INLINE)
def copy_rows(dst, d0, src, s0, n):
    """dst[d0 + r, :] = src[s0 + r, :] for r < n (2-D arrays of the same width).

    An explicit loop, not ``dst[d0:d0 + n] = src[s0:s0 + n]``: numba's slice assignment
    brings its broadcasting checks and their error-message formatting, ~8 s of compile on
    a cold cache, paid once per process by the first kernel that uses it."""
    for r in range(n):
        for j in range(dst.shape[1]):
            dst[d0 + r, j] = src[s0 + r, j]


@njit(**INLINE)
def unit_bounds(q, ncols, H, panel):
    """Hidden units [u0, u1) of thread q of ``ncols`` in a column-split recurrence (the
    ``*_kernel_parallel`` of rnn.py, lstm.py and gru.py): whole panels of ``panel``
    units (H a multiple of it), as even as they split."""
    npan = H // panel
    return q * npan // ncols * panel, (q + 1) * npan // ncols * panel
