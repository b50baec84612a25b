"""8-lane float64 vectors for the kernels' pointwise cell math (AVX-512: one zmm each).

Why: LLVM's loop vectorizer gives up on a fused LSTM step (it reads and writes too
many arrays to check them for aliasing at run time), and one small vectorizable loop
per operation costs a pass over memory each: the split loops measured 7-14 ns per
hidden unit per step, more than the step's GEMM. With an explicit vector type the step
is one pass, 8 units at a time, whatever LLVM's cost model thinks.

Every value is float64 whatever the arrays hold: :func:`load` widens float32 and
:func:`store` rounds once, so float32 kernels keep float64 intermediate precision (the
gradient-fidelity budget is spent on the GEMMs, not here).

API (all inlined into the caller; ``off`` is an element offset into a C-contiguous
array, ``n`` the number of valid lanes, 1..8, so any H works: lanes >= n load 0 and
are not stored)::

    load(arr, off, n) -> Vec      store(arr, off, n, v)      splat(x) -> Vec
    rounded_like(arr, v) -> v rounded to arr's dtype, as a store then a load would give
    v + w, v - w, v * w, v / w, -v   (either side may be a float)
    fma(a, b, c) = a * b + c (one rounding)      where_le0(v, a, b), where_gt0(v, a, b)
    clamp(v, lo, hi)  (NaN stays NaN)             pow2_of_rounded(k + MAGIC) = 2.0 ** k
    lane_sum(v)  (lanes added in order 0..7: deterministic)
    exp(v, like), sigmoid(v, like), tanh(v, like)   (njit, inlined; ``like``: an array
        whose dtype sets the accuracy needed, float64 when omitted)
"""

import operator

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

LANES = 8
_F64 = ir.DoubleType()
_VT = ir.VectorType(_F64, LANES)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


class Vec(types.Type):
    def __init__(self):
        super().__init__(name="f64x8")


vec = Vec()


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


def _decl(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _splat(builder, x, vt=_VT):
    undef = ir.Constant(vt, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, x, _I32(0)), undef,
                                  ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))


def _mask(builder, n):
    lanes = ir.Constant(ir.VectorType(_I64, LANES), list(range(LANES)))
    return builder.icmp_signed("<", lanes, _splat(builder, n, ir.VectorType(_I64, LANES)))


def _elem_ptr(context, builder, aryty, ary, off, vt):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [off]), vt.as_pointer())


def _float_array(arr):
    return isinstance(arr, types.Array) and arr.dtype in (types.float32, types.float64)


def _full(builder, n):
    return builder.icmp_signed(">=", n, _I64(LANES))


@intrinsic
def load(typingctx, arr, off, n):
    if not _float_array(arr):
        return None
    sig = vec(arr, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        et = _F64 if arr.dtype == types.float64 else ir.FloatType()
        vt = ir.VectorType(et, LANES)
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], vt)
        align = et.get_abi_size(context.target_data)
        # A full vector takes a plain load; only a tail pays for the mask (a masked
        # load with a run-time mask measured 2-4x slower in the LSTM step).
        with builder.if_else(_full(builder, args[2]), likely=True) as (full, tail):
            with full:
                v_full = builder.load(ptr, align=align)
                bb_full = builder.block
            with tail:
                suffix = f"v{LANES}{'f64' if et == _F64 else 'f32'}"
                fn = _decl(builder, f"llvm.masked.load.{suffix}.p0", vt,
                           [vt.as_pointer(), _I32, ir.VectorType(ir.IntType(1), LANES), vt])
                v_tail = builder.call(fn, [ptr, _I32(align), _mask(builder, args[2]),
                                           ir.Constant(vt, [0.0] * LANES)])
                bb_tail = builder.block
        v = builder.phi(vt)
        v.add_incoming(v_full, bb_full)
        v.add_incoming(v_tail, bb_tail)
        return v if et == _F64 else builder.fpext(v, _VT)

    return sig, codegen


@intrinsic
def store(typingctx, arr, off, n, v):
    if not _float_array(arr) or not isinstance(v, Vec):
        return None
    sig = types.void(arr, types.intp, types.intp, vec)

    def codegen(context, builder, sig, args):
        et = _F64 if arr.dtype == types.float64 else ir.FloatType()
        vt = ir.VectorType(et, LANES)
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], vt)
        val = args[3] if et == _F64 else builder.fptrunc(args[3], vt)
        align = et.get_abi_size(context.target_data)
        with builder.if_else(_full(builder, args[2]), likely=True) as (full, tail):
            with full:
                builder.store(val, ptr, align=align)
            with tail:
                suffix = f"v{LANES}{'f64' if et == _F64 else 'f32'}"
                fn = _decl(builder, f"llvm.masked.store.{suffix}.p0", ir.VoidType(),
                           [vt, vt.as_pointer(), _I32, ir.VectorType(ir.IntType(1), LANES)])
                builder.call(fn, [val, ptr, _I32(align), _mask(builder, args[2])])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def rounded_like(typingctx, arr, v):
    """v rounded to arr's dtype (and widened back): the value a store to arr then a
    load would give, without the round trip through memory (a masked load cannot take
    its data from a masked store still in flight: a pipeline stall)."""
    if not _float_array(arr) or not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        if arr.dtype == types.float64:
            return args[1]
        return builder.fpext(builder.fptrunc(args[1], ir.VectorType(ir.FloatType(), LANES)),
                             _VT)

    return vec(arr, vec), codegen


@intrinsic
def splat(typingctx, x):
    if not isinstance(x, (types.Float, types.Integer)):
        return None
    sig = vec(types.float64)

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0])

    return sig, codegen


def _binary(op):
    @intrinsic
    def impl(typingctx, a, b):
        if not (isinstance(a, Vec) and isinstance(b, Vec)):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(*args)

        return vec(vec, vec), codegen

    return impl


_add, _sub, _mul, _div = (_binary(op) for op in ("fadd", "fsub", "fmul", "fdiv"))


def _overload_binary(pyop, impl):
    @overload(pyop)
    def _ov(a, b):
        if isinstance(a, Vec) and isinstance(b, Vec):
            return lambda a, b: impl(a, b)
        if isinstance(a, Vec) and isinstance(b, (types.Float, types.Integer)):
            return lambda a, b: impl(a, splat(b))
        if isinstance(b, Vec) and isinstance(a, (types.Float, types.Integer)):
            return lambda a, b: impl(splat(a), b)
        return None


for _pyop, _impl in ((operator.add, _add), (operator.sub, _sub), (operator.mul, _mul),
                     (operator.truediv, _div)):
    _overload_binary(_pyop, _impl)


@intrinsic
def _neg(typingctx, a):
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        return builder.fneg(args[0])

    return vec(vec), codegen


@overload(operator.neg)
def _ov_neg(a):
    if isinstance(a, Vec):
        return lambda a: _neg(a)
    return None


@intrinsic
def fma(typingctx, a, b, c):
    if not all(isinstance(x, Vec) for x in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_decl(builder, "llvm.fma.v8f64", _VT, [_VT] * 3), args)

    return vec(vec, vec, vec), codegen


@intrinsic
def clamp(typingctx, a, lo, hi):
    """min(max(a, lo), hi) lane-wise, written with ordered compares so NaN stays NaN."""
    if not isinstance(a, Vec):
        return None
    sig = vec(vec, types.float64, types.float64)

    def codegen(context, builder, sig, args):
        v, lo_v, hi_v = args[0], _splat(builder, args[1]), _splat(builder, args[2])
        v = builder.select(builder.fcmp_ordered(">", v, hi_v), hi_v, v)
        return builder.select(builder.fcmp_ordered("<", v, lo_v), lo_v, v)

    return sig, codegen


def _where(pred):
    @intrinsic
    def where(typingctx, v, a, b):
        if not all(isinstance(x, Vec) for x in (v, a, b)):
            return None

        def codegen(context, builder, sig, args):
            cond = builder.fcmp_ordered(pred, args[0], ir.Constant(_VT, [0.0] * LANES))
            return builder.select(cond, args[1], args[2])

        return vec(vec, vec, vec), codegen

    return where


where_le0 = _where("<=")  # a where v <= 0, else b (a NaN in v picks b), lane-wise
where_gt0 = _where(">")  # a where v > 0, else b (a NaN in v picks b), lane-wise


# 1.5 * 2^52: for |y| < 2^51, y + MAGIC rounds y to an integer k held in the low bits
MAGIC = 6755399441055744.0


@intrinsic
def pow2_of_rounded(typingctx, t):
    """2.0 ** k for t = k + MAGIC (k integral, -1022 <= k <= 1023): the bits of t hold k
    in their low part, so (bits(t) + 1023) << 52 are the bits of 2^k. Pure integer ops
    on the bits (a float -> int conversion would be scalarized: x86 has no 8-lane
    saturating one)."""
    if not isinstance(t, Vec):
        return None

    def codegen(context, builder, sig, args):
        vi = ir.VectorType(_I64, LANES)
        bits = builder.bitcast(args[0], vi)
        bits = builder.shl(builder.add(bits, _splat(builder, _I64(1023), vi)),
                           _splat(builder, _I64(52), vi))
        return builder.bitcast(bits, _VT)

    return vec(vec), codegen


@intrinsic
def lane_sum(typingctx, v):
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        acc = builder.extract_element(args[0], _I32(0))
        for i in range(1, LANES):
            acc = builder.fadd(acc, builder.extract_element(args[0], _I32(i)))
        return acc

    return types.float64(vec), codegen


_INLINE = dict(inline="always", nogil=True, error_model="numpy")


def _poly(r, like):
    pass


@overload(_poly, inline="always")
def _poly_impl(r, like):
    """exp(r) for |r| <= ln(2) / 2 by its Taylor polynomial, evaluated by Estrin's scheme
    (a tree of depth 4 instead of a chain of dependent FMAs: the LSTM step is latency-
    bound). Degree 12 (truncation < 2e-16 relative), or degree 7 (< 6e-9, a tenth of a
    float32 ulp) when ``like`` is a float32 array: its results are rounded to float32."""
    if isinstance(like, types.Array) and like.dtype == types.float32:
        def deg7(r, like):
            r2 = r * r
            q0 = fma(r, splat(1.0), splat(1.0))
            q1 = fma(r, splat(1.66666666666666666667e-01), splat(0.5))
            q2 = fma(r, splat(8.33333333333333333333e-03), splat(4.16666666666666666667e-02))
            q3 = fma(r, splat(1.98412698412698412698e-04), splat(1.38888888888888888889e-03))
            return fma(fma(q3, r2, q2), r2 * r2, fma(q1, r2, q0))
        return deg7

    def deg12(r, like):
        r2 = r * r
        r4 = r2 * r2
        q0 = fma(r, splat(1.0), splat(1.0))  # 1 + r
        q1 = fma(r, splat(1.66666666666666666667e-01), splat(0.5))
        q2 = fma(r, splat(8.33333333333333333333e-03), splat(4.16666666666666666667e-02))
        q3 = fma(r, splat(1.98412698412698412698e-04), splat(1.38888888888888888889e-03))
        q4 = fma(r, splat(2.75573192239858906526e-06), splat(2.48015873015873015873e-05))
        q5 = fma(r, splat(2.50521083854417187751e-08), splat(2.75573192239858906526e-07))
        u0 = fma(fma(q3, r2, q2), r4, fma(q1, r2, q0))
        u1 = fma(splat(2.08767569878680989792e-09), r4, fma(q5, r2, q4))
        return fma(u1, r4 * r4, u0)
    return deg12


@njit(**_INLINE)
def exp(x, like=None):
    """exp(x) lane-wise: 2^k * exp(r), k = round(x / ln 2), |r| <= ln(2) / 2, exp(r) by
    :func:`_poly` (to ~1 ulp of float64; of float32 when ``like`` is a float32 array),
    ln 2 split in a part exact in k * hi and a correction (Cody-Waite). x is clamped to
    [-700, 700] (finite, so sigmoid and tanh built on it saturate cleanly); NaN stays
    NaN."""
    x = clamp(x, -700.0, 700.0)
    t = x * 1.4426950408889634 + MAGIC  # MAGIC + round(x / ln 2)
    k = t - MAGIC
    r = (x - k * 0.693147180369123816490) - k * 1.90821492927058770002e-10
    return _poly(r, like) * pow2_of_rounded(t)


@njit(**_INLINE)
def sigmoid(x, like=None):
    return 1.0 / (1.0 + exp(-x, like))


@njit(**_INLINE)
def tanh(x, like=None):
    """1 - 2 / (exp(2x) + 1): absolute error ~1e-16 (~6e-9 for float32 ``like``), exact
    saturation at +-1."""
    return 1.0 - 2.0 / (exp(x + x, like) + 1.0)
