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
    return math.tanh(z)


@njit(**_INLINE)
def activate_grad(h, activation, slope):
    """d act(z) / dz, from the output h = act(z)."""
    if activation == RELU:
        return 1.0 if h > 0 else 0.0
    if activation == LEAKY_RELU:
        return 1.0 if h > 0 else slope
    return 1.0 - h * h


@njit(**_INLINE)
def sigmoid(z):
    # exp(-z) overflows to inf for very negative z: 1 / inf = 0, never NaN.
    return 1.0 / (1.0 + math.exp(-z))
