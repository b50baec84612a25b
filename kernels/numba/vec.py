"""Vectors for the kernels' pointwise cell math: one AVX-512 register each, in the
arrays' own precision (8 float64 lanes for float64 arrays, 16 float32 lanes for float32).

Why: LLVM's loop vectorizer gives up on a fused LSTM step (it reads and writes too
many arrays to check them for aliasing at run time), and one small vectorizable loop
per operation costs a pass over memory each: the split loops measured 7-14 ns per
hidden unit per step, more than the step's GEMM. With an explicit vector type the step
is one pass over its units, a register at a time, whatever LLVM's cost model thinks.
float32 kernels compute in float32 (16 lanes), as torch.nn's float32 LSTM does: the
8-lane float64 version of the LSTM step took 2.6 ns per unit, the 16-lane one 1.3.

API (all inlined into the caller; ``off`` is an element offset into a C-contiguous
array, ``n`` the number of valid lanes, so any H works: lanes >= n load 0 and are not
stored)::

    lanes(arr) -> 8 or 16          load(arr, off, n) -> vector    store(arr, off, n, v)
    v + w, v - w, v * w, v / w, -v   (either side may be a Python/numba float)
    fma(a, b, c) = a * b + c (one rounding)      clamp(v, lo, hi)  (NaN stays NaN)
    where_le0(v, a, b), where_gt0(v, a, b)       zero(v), one(v), full(v, x)
    exp(v), sigmoid(v), tanh(v)   (njit functions on the above, accurate to a few ulp
                                   of the vector's precision)
"""

import operator

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


class _VecType(types.Type):
    def __init__(self, dtype, lanes):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"{dtype}x{lanes}")

    @property
    def ir_elem(self):
        return ir.DoubleType() if self.dtype == types.float64 else ir.FloatType()

    @property
    def ir_type(self):
        return ir.VectorType(self.ir_elem, self.lanes)

    @property
    def ir_int(self):
        return _I64 if self.dtype == types.float64 else _I32

    @property
    def suffix(self):
        return f"v{self.lanes}{'f64' if self.dtype == types.float64 else 'f32'}"


f64x8 = _VecType(types.float64, 8)
f32x16 = _VecType(types.float32, 16)
KINDS = {types.float64: f64x8, types.float32: f32x16}  # the vector kind of a dtype


@register_model(_VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.ir_type)


def ir_decl(builder, name, ret, args):
    """The declaration of LLVM function ``name`` (an intrinsic) in the current module."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def ir_splat(builder, x, vt):
    """A vector of type vt with every lane the scalar x."""
    undef = ir.Constant(vt, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, x, _I32(0)), undef,
                                  ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))


def _kind_of_array(arr):
    if isinstance(arr, types.Array) and arr.dtype in KINDS:
        return KINDS[arr.dtype]
    return None


def _elem_ptr(context, builder, aryty, ary, off, vt):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [off]), vt.as_pointer())


def ir_lane_mask(builder, n, lanes):
    """<lanes x i1>: lane i is on when i < n (n an i64)."""
    vi = ir.VectorType(_I64, lanes)
    return builder.icmp_signed("<", ir.Constant(vi, list(range(lanes))), ir_splat(builder, n, vi))


def _access(context, builder, aryty, args, kind):
    """For load/store at arr[off:off + n]: (vector type, pointer, alignment, whether the
    vector is full, i.e. n >= lanes)."""
    vt = kind.ir_type
    ptr = _elem_ptr(context, builder, aryty, args[0], args[1], vt)
    align = kind.ir_elem.get_abi_size(context.target_data)
    return vt, ptr, align, builder.icmp_signed(">=", args[2], _I64(kind.lanes))


def lanes(arr):
    pass


@overload(lanes, inline="always")
def _lanes_impl(arr):
    kind = _kind_of_array(arr)
    if kind is None:
        return None
    n = kind.lanes
    return lambda arr: n


@intrinsic
def load(typingctx, arr, off, n):
    """The vector at arr[off:off + n] (lanes >= n are 0). A full vector takes a plain
    load; only a tail pays for the mask (a masked load with a run-time mask measured
    2-4x slower in the LSTM step)."""
    kind = _kind_of_array(arr)
    if kind is None:
        return None
    sig = kind(arr, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        vt, ptr, align, full = _access(context, builder, sig.args[0], args, kind)
        with builder.if_else(full, likely=True) as (then, otherwise):
            with then:
                v_full = builder.load(ptr, align=align)
                bb_full = builder.block
            with otherwise:
                fn = ir_decl(builder, f"llvm.masked.load.{kind.suffix}.p0", vt,
                           [vt.as_pointer(), _I32, ir.VectorType(_I1, kind.lanes), vt])
                v_tail = builder.call(fn, [ptr, _I32(align), ir_lane_mask(builder, args[2], kind.lanes),
                                           ir.Constant(vt, [0.0] * kind.lanes)])
                bb_tail = builder.block
        v = builder.phi(vt)
        v.add_incoming(v_full, bb_full)
        v.add_incoming(v_tail, bb_tail)
        return v

    return sig, codegen


@intrinsic
def store(typingctx, arr, off, n, v):
    """arr[off:off + n] = the first n lanes of v (v of arr's own kind)."""
    kind = _kind_of_array(arr)
    if kind is None or v != kind:
        return None
    sig = types.void(arr, types.intp, types.intp, kind)

    def codegen(context, builder, sig, args):
        vt, ptr, align, full = _access(context, builder, sig.args[0], args, kind)
        with builder.if_else(full, likely=True) as (then, otherwise):
            with then:
                builder.store(args[3], ptr, align=align)
            with otherwise:
                fn = ir_decl(builder, f"llvm.masked.store.{kind.suffix}.p0", ir.VoidType(),
                           [vt, vt.as_pointer(), _I32, ir.VectorType(_I1, kind.lanes)])
                builder.call(fn, [args[3], ptr, _I32(align),
                                  ir_lane_mask(builder, args[2], kind.lanes)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def full(typingctx, v, x):
    """A vector of v's kind with every lane x."""
    if not isinstance(v, _VecType) or not isinstance(x, (types.Float, types.Integer)):
        return None
    sig = v(v, v.dtype)

    def codegen(context, builder, sig, args):
        return ir_splat(builder, args[1], v.ir_type)

    return sig, codegen


@njit(inline="always")
def zero(v):
    return full(v, 0.0)


@njit(inline="always")
def one(v):
    return full(v, 1.0)


def _binary(op):
    @intrinsic
    def impl(typingctx, a, b):
        if not (isinstance(a, _VecType) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(*args)

        return a(a, a), codegen

    return impl


def _overload_binary(pyop, impl):
    @overload(pyop, inline="always")
    def _ov(a, b):
        if isinstance(a, _VecType) and a == b:
            return lambda a, b: impl(a, b)
        if isinstance(a, _VecType) and isinstance(b, (types.Float, types.Integer)):
            return lambda a, b: impl(a, full(a, b))
        if isinstance(b, _VecType) and isinstance(a, (types.Float, types.Integer)):
            return lambda a, b: impl(full(b, a), b)
        return None


for _pyop, _name in ((operator.add, "fadd"), (operator.sub, "fsub"), (operator.mul, "fmul"),
                     (operator.truediv, "fdiv")):
    _overload_binary(_pyop, _binary(_name))


@intrinsic
def _neg(typingctx, a):
    if not isinstance(a, _VecType):
        return None

    def codegen(context, builder, sig, args):
        return builder.fneg(args[0])

    return a(a), codegen


@overload(operator.neg, inline="always")
def _ov_neg(a):
    if isinstance(a, _VecType):
        return lambda a: _neg(a)
    return None


@intrinsic
def fma(typingctx, a, b, c):
    if not (isinstance(a, _VecType) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        vt = a.ir_type
        return builder.call(ir_decl(builder, f"llvm.fma.{a.suffix}", vt, [vt] * 3), args)

    return a(a, a, a), codegen


@intrinsic
def clamp(typingctx, a, lo, hi):
    """min(max(a, lo), hi) lane-wise, written with ordered compares so NaN stays NaN."""
    if not isinstance(a, _VecType):
        return None
    sig = a(a, a.dtype, a.dtype)

    def codegen(context, builder, sig, args):
        vt = a.ir_type
        v, lo_v, hi_v = args[0], ir_splat(builder, args[1], vt), ir_splat(builder, args[2], vt)
        v = builder.select(builder.fcmp_ordered(">", v, hi_v), hi_v, v)
        return builder.select(builder.fcmp_ordered("<", v, lo_v), lo_v, v)

    return sig, codegen


def _where(pred):
    @intrinsic
    def where(typingctx, v, a, b):
        if not (isinstance(v, _VecType) and v == a == b):
            return None

        def codegen(context, builder, sig, args):
            z = ir.Constant(v.ir_type, [0.0] * v.lanes)
            return builder.select(builder.fcmp_ordered(pred, args[0], z), args[1], args[2])

        return v(v, v, v), codegen

    return where


where_le0 = _where("<=")  # a where v <= 0, else b (a NaN in v picks b), lane-wise
where_gt0 = _where(">")  # a where v > 0, else b (a NaN in v picks b), lane-wise


@intrinsic
def _pow2_of_rounded(typingctx, t):
    """2 ** k for t = k + MAGIC (k integral and in the exponent range): the low bits of
    t hold k, so (bits(t) + bias) << mantissa_bits are the bits of 2^k. Integer ops on
    the bits (a float -> int conversion would be scalarized for 8 x float64)."""
    if not isinstance(t, _VecType):
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
    if x == f64x8:
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
    if x == f32x16:
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
