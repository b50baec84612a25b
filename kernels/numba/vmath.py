"""Vector math for the kernels' pointwise cell functions, on the vectors of :mod:`.vec`
(any ISA: the same formulas at every vector width): exp, expm1, sigmoid, tanh.

Accurate to a few ulp of the vector's precision (tests/test_cpu_math.py), finite for
every finite input (exp's argument is clamped, so sigmoid and tanh saturate cleanly to
0 / 1 / -1; sigmoid is exactly 0 where torch's is, below the log of the largest finite
value), NaN in -> NaN out. The kernels reach these as ``vec.sigmoid`` etc.

Each function is one intrinsic that emits its whole formula as LLVM IR (vec.IRVec):
numba types it once per vector kind and inlines nothing, where the same formulas
written as numba functions over overloaded operators were re-typed and inlined at
every use (most of an LSTM kernel's compile time).
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .vec import IRVec, VecType, ir_splat


def _pow2_of_rounded(t):
    """2 ** k for t = k + MAGIC (k integral and in the exponent range): the low bits of
    t hold k, so (bits(t) + bias) << mantissa_bits are the bits of 2^k. Integer ops on
    the bits (a float -> int conversion would be scalarized for float64 lanes)."""
    b, kind = t.b, t.kind
    vi = ir.VectorType(kind.ir_int, kind.lanes)
    bias, shift = (1023, 52) if kind.dtype == types.float64 else (127, 23)
    bits = b.bitcast(t.v, vi)
    bits = b.shl(b.add(bits, ir_splat(b, kind.ir_int(bias), vi)),
                 ir_splat(b, kind.ir_int(shift), vi))
    return t._new(b.bitcast(bits, kind.ir_type))


def _exp_parts(x):
    """(s, m) with exp(x) = s + s * m and expm1(x) = (s - 1) + s * m, both without
    cancellation: s = 2^k, k = round(x / ln 2) (the MAGIC trick: 1.5 * 2^52 or 2^23
    added rounds to an integer held in the low bits), m = exp(r) - 1 = r * p(r) for
    r = x - k ln 2 (ln 2 split in a part exact in k * hi and a correction, Cody-Waite),
    |r| <= ln(2) / 2 (t and r by fused multiply-adds: one rounding each, three ops fewer
    per exp than a multiply then an add; where the ISA has no FMA they are exactly the
    multiply and add they replace), p the Taylor series of (e^r - 1) / r evaluated by
    Estrin's scheme (a tree, not a chain of dependent FMAs: the LSTM step is
    latency-bound). float64:
    p of degree 11 (truncation < 2e-16), x clamped to [-700, 700]; float32: degree 6
    (< 6e-9), x clamped to [-87, 88] (2^k stays normal). The clamps keep exp finite,
    so sigmoid and tanh built on it saturate cleanly; NaN stays NaN."""
    if x.kind.dtype == types.float64:
        x = x.clamp(-700.0, 700.0)
        t = x.fma(1.4426950408889634, 6755399441055744.0)
        k = t - 6755399441055744.0
        r = k.fma(-1.90821492927058770002e-10, k.fma(-0.693147180369123816490, x))
        r2 = r * r
        r4 = r2 * r2
        q0 = r.fma(0.5, 1.0)
        q1 = r.fma(4.16666666666666666667e-02, 1.66666666666666666667e-01)
        q2 = r.fma(1.38888888888888888889e-03, 8.33333333333333333333e-03)
        q3 = r.fma(2.48015873015873015873e-05, 1.98412698412698412698e-04)
        q4 = r.fma(2.75573192239858906526e-07, 2.75573192239858906526e-06)
        q5 = r.fma(2.08767569878680989792e-09, 2.50521083854417187751e-08)
        u0 = q3.fma(r2, q2).fma(r4, q1.fma(r2, q0))
        u1 = q5.fma(r2, q4)
        return _pow2_of_rounded(t), r * u1.fma(r4 * r4, u0)
    x = x.clamp(-87.0, 88.0)
    t = x.fma(1.44269504, 12582912.0)
    k = t - 12582912.0
    r = k.fma(2.12194440e-4, k.fma(-0.693359375, x))
    r2 = r * r
    q0 = r.fma(0.5, 1.0)
    q1 = r.fma(4.16666667e-02, 1.66666667e-01)
    q2 = r.fma(1.38888889e-03, 8.33333333e-03)
    u = r2.fma(1.98412698e-04, q2)
    return _pow2_of_rounded(t), r * u.fma(r2 * r2, q1.fma(r2, q0))


def _exp(x):
    s, m = _exp_parts(x)
    return s.fma(m, s)


def _expm1(x):
    s, m = _exp_parts(x)
    return s.fma(m, s - 1.0)


# Below these, exp(-x) overflows (log of the largest finite value): sigmoid is exactly 0
# there, as 1 / (1 + inf) is in torch, so a saturated gate's derivative s (1 - s) is 0
# and 0 * inf gives torch's NaN (exp's clamp alone left 1e-38 / 1e-304 there).
_SIGMOID_ZERO = {types.float32: -88.72283935546875, types.float64: -709.782712893384}


def _sigmoid(x):
    s = 1.0 / (1.0 + _exp(-x))
    zero = x.b.fcmp_ordered("<", x.v, x._ir(_SIGMOID_ZERO[x.kind.dtype]))  # NaN: False
    return x._new(x.b.select(zero, x._ir(0.0), s.v))


def _tanh(x):
    """e / (e + 2) with e = expm1(2x): a few ulp everywhere, near 0 too (1 - 2 / (e^2x
    + 1) loses tanh(1e-4) to cancellation: 6e-4 relative in float32), and exactly
    +-1 when saturated."""
    e = _expm1(x + x)
    return e / (e + 2.0)


def _unary(formula, doc):
    @intrinsic
    def fn(typingctx, x):
        if not isinstance(x, VecType):
            return None

        def codegen(context, builder, sig, args):
            return formula(IRVec(builder, x, args[0])).v

        return x(x), codegen

    fn.__doc__ = doc
    return fn


exp = _unary(_exp, "exp(v) lane-wise, a few ulp; finite for finite v.")
expm1 = _unary(_expm1, "exp(v) - 1 lane-wise, without cancellation near 0.")
sigmoid = _unary(_sigmoid, "1 / (1 + exp(-v)) lane-wise; exactly 0 where exp(-v) overflows.")
tanh = _unary(_tanh, "tanh(v) lane-wise; exactly +-1 when saturated.")
