"""Vector math for the kernels' pointwise cell functions, on the vectors of :mod:`.vec`
(any ISA: the same code at every vector width): exp, expm1, sigmoid, tanh.

Accurate to a few ulp of the vector's precision (tests/test_cpu_math.py), finite for
every finite input (exp's argument is clamped, so sigmoid and tanh saturate cleanly to
0 / 1 / -1), NaN in -> NaN out. The kernels reach these as ``vec.sigmoid`` etc.
"""

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .vec import KINDS, VecType, clamp, fma, full, ir_splat, one


@intrinsic
def _pow2_of_rounded(typingctx, t):
    """2 ** k for t = k + MAGIC (k integral and in the exponent range): the low bits of
    t hold k, so (bits(t) + bias) << mantissa_bits are the bits of 2^k. Integer ops on
    the bits (a float -> int conversion would be scalarized for 8 x float64)."""
    if not isinstance(t, VecType):
        return None

    def codegen(context, builder, sig, args):
        vi = ir.VectorType(t.ir_int, t.lanes)
        bias, shift = (1023, 52) if t.dtype == types.float64 else (127, 23)
        bits = builder.bitcast(args[0], vi)
        bits = builder.shl(builder.add(bits, ir_splat(builder, t.ir_int(bias), vi)),
                           ir_splat(builder, t.ir_int(shift), vi))
        return builder.bitcast(bits, t.ir_type)

    return t(t), codegen


def _exp_parts(x):
    pass


@overload(_exp_parts, inline="always")
def _exp_parts_impl(x):
    """(s, m) with exp(x) = s + s * m and expm1(x) = (s - 1) + s * m, both without
    cancellation: s = 2^k, k = round(x / ln 2) (the MAGIC trick: 1.5 * 2^52 or 2^23
    added rounds to an integer held in the low bits), m = exp(r) - 1 = r * p(r) for
    r = x - k ln 2 (ln 2 split in a part exact in k * hi and a correction, Cody-Waite),
    |r| <= ln(2) / 2, p the Taylor series of (e^r - 1) / r evaluated by Estrin's scheme
    (a tree, not a chain of dependent FMAs: the LSTM step is latency-bound). float64:
    p of degree 11 (truncation < 2e-16), x clamped to [-700, 700]; float32: degree 6
    (< 6e-9), x clamped to [-87, 88] (2^k stays normal). The clamps keep exp finite,
    so sigmoid and tanh built on it saturate cleanly; NaN stays NaN."""
    if x == KINDS[types.float64]:
        def parts64(x):
            x = clamp(x, -700.0, 700.0)
            t = x * 1.4426950408889634 + 6755399441055744.0
            k = t - 6755399441055744.0
            r = (x - k * 0.693147180369123816490) - k * 1.90821492927058770002e-10
            r2 = r * r
            r4 = r2 * r2
            q0 = fma(r, full(r, 0.5), one(r))
            q1 = fma(r, full(r, 4.16666666666666666667e-02), full(r, 1.66666666666666666667e-01))
            q2 = fma(r, full(r, 1.38888888888888888889e-03), full(r, 8.33333333333333333333e-03))
            q3 = fma(r, full(r, 2.48015873015873015873e-05), full(r, 1.98412698412698412698e-04))
            q4 = fma(r, full(r, 2.75573192239858906526e-07), full(r, 2.75573192239858906526e-06))
            q5 = fma(r, full(r, 2.08767569878680989792e-09), full(r, 2.50521083854417187751e-08))
            u0 = fma(fma(q3, r2, q2), r4, fma(q1, r2, q0))
            u1 = fma(q5, r2, q4)
            return _pow2_of_rounded(t), r * fma(u1, r4 * r4, u0)
        return parts64
    if x == KINDS[types.float32]:
        def parts32(x):
            x = clamp(x, -87.0, 88.0)
            t = x * 1.44269504 + 12582912.0
            k = t - 12582912.0
            r = (x - k * 0.693359375) + k * 2.12194440e-4
            r2 = r * r
            q0 = fma(r, full(r, 0.5), one(r))
            q1 = fma(r, full(r, 4.16666667e-02), full(r, 1.66666667e-01))
            q2 = fma(r, full(r, 1.38888889e-03), full(r, 8.33333333e-03))
            q3 = full(r, 1.98412698e-04)
            return _pow2_of_rounded(t), r * fma(fma(q3, r2, q2), r2 * r2, fma(q1, r2, q0))
        return parts32
    return None


@njit(inline="always")
def exp(x):
    s, m = _exp_parts(x)
    return fma(s, m, s)


@njit(inline="always")
def expm1(x):
    s, m = _exp_parts(x)
    return fma(s, m, s - 1.0)


@njit(inline="always")
def sigmoid(x):
    return 1.0 / (1.0 + exp(-x))


@njit(inline="always")
def tanh(x):
    """e / (e + 2) with e = expm1(2x): a few ulp everywhere, near 0 too (1 - 2 / (e^2x
    + 1) loses tanh(1e-4) to cancellation: 6e-4 relative in float32), and exactly
    +-1 when saturated."""
    e = expm1(x + x)
    return e / (e + 2.0)
