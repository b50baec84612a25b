"""Pointwise cell math for the numba kernels, written once and inlined by numba.

Each function works on scalars so the recurrence drivers fuse it into their row loops.
Scalars are evaluated in float64 (numba promotes the literals) and rounded once when
stored, which keeps float32 results at or under torch's own float32 error.

The derivative of every RNN activation is taken from the activation's *output* h, as
torch does for tanh: relu'(z) = [h > 0]; leaky_relu'(z) = 1 if h > 0 else slope (valid
because slope >= 0, which the launchers enforce); tanh'(z) = 1 - h^2. NaN inputs stay
NaN (``not z <= 0`` is true for NaN), as in torch.
"""

import math

import numpy as np
from numba import njit

from .. import LEAKY_RELU, RELU
from .config import JIT

_INLINE = dict(JIT, inline="always")


@njit(**_INLINE)
def activate(z, activation, slope):
    if activation == RELU:
        return z if not z <= 0 else 0.0
    if activation == LEAKY_RELU:
        return z if not z <= 0 else z * slope
    return math.tanh(z)  # unused on the hot path: rnn_fwd takes the vexp route


@njit(**_INLINE)
def activate_grad(h, activation, slope):
    """d act(z) / dz, from the output h = act(z)."""
    if activation == RELU:
        return 1.0 if h > 0 else 0.0
    if activation == LEAKY_RELU:
        return 1.0 if h > 0 else slope
    return 1.0 - h * h


@njit(**JIT)
def vexp(u, sb, ib):
    """u <- exp(u) in place, float64 [n], written so LLVM vectorizes it (math.exp does not:
    no SVML in llvmlite's wheels). sb: float64 scratch [>= n]; ib = sb.view(int64).

    exp(x) = 2^k * exp(r), k = round(x / ln 2), |r| <= ln(2)/2, exp(r) by its degree-12
    Taylor polynomial (truncation < 2e-16 relative), 2^k built from its IEEE bits.
    x is clamped to [-700, 700] (exp stays finite: sigmoid and tanh built on it saturate
    correctly); NaN stays NaN (it passes both clamps and poisons r).
    """
    n = u.shape[0]
    for j in range(n):
        x = u[j]
        x = 700.0 if x > 700.0 else x
        x = -700.0 if x < -700.0 else x
        k = math.floor(x * 1.4426950408889634 + 0.5)
        # ln 2 split in a high part exact in k * hi and a low correction (Cody-Waite)
        r = (x - k * 0.693147180369123816490) - k * 1.90821492927058770002e-10
        p = 2.08767569878680989792e-09  # 1/12!
        p = p * r + 2.50521083854417187751e-08
        p = p * r + 2.75573192239858906526e-07
        p = p * r + 2.75573192239858906526e-06
        p = p * r + 2.48015873015873015873e-05
        p = p * r + 1.98412698412698412698e-04
        p = p * r + 1.38888888888888888889e-03
        p = p * r + 8.33333333333333333333e-03
        p = p * r + 4.16666666666666666667e-02
        p = p * r + 1.66666666666666666667e-01
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        u[j] = p
        ib[j] = (np.int64(k) + 1023) << 52
    for j in range(n):
        u[j] = u[j] * sb[j]


@njit(**_INLINE)
def tanh_from_exp2(e):
    """tanh(x) given e = exp(2x): 1 - 2 / (e + 1) (absolute error ~1e-16)."""
    return 1.0 - 2.0 / (e + 1.0)
