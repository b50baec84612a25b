"""The dropout between stacked layers (``dropout=p`` of nn.RNN / nn.LSTM / nn.GRU) on the
CPU: its mask, from a counter-based generator (Philox4x32-10).

Why not torch's: on CPU, ``F.dropout`` draws its mask with ``bernoulli_``, which runs
the Mersenne Twister one element at a time on non-Intel CPUs (torch takes MKL's
vectorized generator only on Intel): ~7 ns per element on a Zen 4, 1.0-1.1 ms for the
[35, 20, 200] activations of PyTorch's word-language-model example, about a tenth of
that 2-layer stack's forward+backward in rnnfast. cuDNN likewise draws its RNN dropout
with its own generator (cudnnDropoutDescriptor).

The generator: Philox4x32 with 10 rounds (Salmon, Moraes, Dror, Shaw, "Parallel random
numbers: as easy as 1, 2, 3", SC 2011; the generator torch's and TensorFlow's CUDA
dropout use). Element i of a call takes 32-bit word i % 4 of the block for counter
(i // 4, 0) under the 64-bit key ``seed``; it is kept when that word is below
round((1 - p) 2^32), so P(keep) = 1 - p to within 2^-32. Counter-based: the mask
depends on (seed, i) only, never on the thread count or the ISA. The known-answer
vectors of the Random123 distribution are checked in tests/test_cpu_math.py, and every
mask against ``rnnfast.reference.dropout_mask`` (the same rounds in torch's int64 ops),
which rnnfast's layers use where this kernel is not compiled yet.

The rounds run on blocks of ``_NL`` counters held in arrays, one round at a time over
the block, so LLVM vectorizes them (32 x 32 -> 64-bit products on vpmuludq): 1.1 ns
per element on one Zen 4 core (AVX-512), 2.3 held to AVX2, against 7 for torch's
bernoulli_ there.
"""

import numpy as np
import torch
from numba import njit, prange

from . import _host
from .config import JIT, JIT_PARALLEL

_M0 = np.uint64(0xD2511F53)  # Philox4x32's round multipliers
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)  # its key increments (Weyl sequence)
_W1 = np.uint64(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_NL = 64  # counters per block (vector lanes x unroll)


@njit(**JIT)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """One Philox4x32-10 block: counter (c0, c1, c2, c3), key (k0, k1), each a 32-bit
    word held in a uint64 -> four 32-bit words (as uint64). For tests and reference;
    the mask kernels run the same rounds on blocks of counters."""
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _LO, (p0 >> _S32) ^ c3 ^ k1, p0 & _LO
        k0 = (k0 + _W0) & _LO
        k1 = (k1 + _W1) & _LO
    return c0, c1, c2, c3


@njit(**JIT)
def _mask_blocks(out, seed, keep_below, scale, g0, g1):
    """out[4 g0 : 4 g1] (clipped to out's length): scale where element i's word is below
    ``keep_below``, else 0 (see the module docstring). out: 1-D, C-contiguous."""
    n = out.shape[0]
    k0s = np.uint64(seed) & _LO
    k1s = (np.uint64(seed) >> _S32) & _LO
    c0 = np.empty(_NL, np.uint32)
    c1 = np.empty(_NL, np.uint32)
    c2 = np.empty(_NL, np.uint32)
    c3 = np.empty(_NL, np.uint32)
    zero = scale - scale  # 0 in out's dtype (scale is finite)
    for gb in range(g0, g1, _NL):
        for lane in range(_NL):
            g = np.uint64(gb + lane)
            c0[lane] = np.uint32(g & _LO)
            c1[lane] = np.uint32(g >> _S32)
            c2[lane] = 0
            c3[lane] = 0
        k0 = k0s
        k1 = k1s
        for _ in range(10):
            for lane in range(_NL):  # vectorized: lanes are independent
                p0 = _M0 * np.uint64(c0[lane])
                p1 = _M1 * np.uint64(c2[lane])
                a = np.uint64(p1 >> _S32) ^ np.uint64(c1[lane]) ^ k0
                b = np.uint64(p0 >> _S32) ^ np.uint64(c3[lane]) ^ k1
                c1[lane] = np.uint32(p1 & _LO)
                c3[lane] = np.uint32(p0 & _LO)
                c0[lane] = np.uint32(a)
                c2[lane] = np.uint32(b)
            k0 = (k0 + _W0) & _LO
            k1 = (k1 + _W1) & _LO
        base = 4 * gb
        if base + 4 * _NL <= n:
            for lane in range(_NL):
                i = base + 4 * lane
                out[i] = scale if np.uint64(c0[lane]) < keep_below else zero
                out[i + 1] = scale if np.uint64(c1[lane]) < keep_below else zero
                out[i + 2] = scale if np.uint64(c2[lane]) < keep_below else zero
                out[i + 3] = scale if np.uint64(c3[lane]) < keep_below else zero
        else:
            for i in range(base, min(n, 4 * g1)):
                lane = (i - base) // 4
                w = i % 4
                word = c0[lane] if w == 0 else c1[lane] if w == 1 else \
                    c2[lane] if w == 2 else c3[lane]
                out[i] = scale if np.uint64(word) < keep_below else zero


@njit(**JIT)
def dropout_mask_kernel(out, seed, keep_below, scale):
    """The whole mask on one thread."""
    _mask_blocks(out, seed, keep_below, scale, 0, (out.shape[0] + 3) // 4)


@njit(**JIT_PARALLEL)
def dropout_mask_kernel_parallel(out, seed, keep_below, scale, nparts):
    """The mask in ``nparts`` runs of whole blocks: the same values as the serial
    kernel (each element's word depends on its index only)."""
    ngroups = (out.shape[0] + 3) // 4
    nblocks = (ngroups + _NL - 1) // _NL
    for p in prange(nparts):
        g0 = min(ngroups, p * nblocks // nparts * _NL)
        g1 = min(ngroups, (p + 1) * nblocks // nparts * _NL)
        _mask_blocks(out, seed, keep_below, scale, g0, g1)


PARALLEL_MIN_ELEMENTS = 1 << 16  # below this one thread draws the whole mask


def dropout_mask(like, p, seed):
    """The inter-layer dropout mask for a tensor shaped like ``like``.

    Parameters
    ----------
    like : CPU Tensor, float32 or float64, any shape (its values are not read)
    p : float in [0, 1], the probability of an element being zeroed
    seed : int in [0, 2^64), the generator's key (rnnfast draws it from torch's default
        CPU generator, so ``torch.manual_seed`` fixes the masks)

    Returns
    -------
    A new tensor of like's shape and dtype: 1 / (1 - p) (computed in like's dtype, as
    torch's dropout scales its mask) where an element is kept, 0 where it is dropped;
    ``x * mask`` is the dropout of x, its gradient ``dy * mask``. With p = 1 all zeros.

    Raises ValueError for a p outside [0, 1], a seed outside [0, 2^64), a non-CPU
    tensor or a dtype other than float32 / float64."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"dropout_mask: seed must lie in [0, 2^64), got {seed}")
    if like.device.type != "cpu" or like.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dropout_mask[numba]: like must be a float32 or float64 CPU "
                         f"tensor, got {like.dtype} on {like.device}")
    out = torch.empty(like.shape, dtype=like.dtype, device="cpu")
    n = out.numel()
    if n == 0:
        return out
    dt = np.float32 if like.dtype == torch.float32 else np.float64
    scale = dt(1.0) / dt(1.0 - p) if p < 1.0 else dt(0.0)
    keep_below = np.uint64(min(round((1.0 - p) * 2.0 ** 32), 2 ** 32))
    parts = _host.elementwise_threads(n, PARALLEL_MIN_ELEMENTS)
    _host.launch(dropout_mask_kernel, dropout_mask_kernel_parallel, parts,
                 out.view(-1).numpy(), np.uint64(seed), keep_below, scale)
    return out
