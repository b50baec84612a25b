"""Vectors for the kernels' pointwise cell math: one vector register each, in the
arrays' own precision, as wide as the target instruction set's registers (config.ISA):
16 float32 / 8 float64 lanes on AVX-512, 8 / 4 on AVX2, 4 / 2 on SSE2 and NEON.

Why: LLVM's loop vectorizer gives up on a fused LSTM step (it reads and writes too
many arrays to check them for aliasing at run time), and one small vectorizable loop
per operation costs a pass over memory each: the split loops measured 7-14 ns per
hidden unit per step, more than the step's GEMM. With an explicit vector type the step
is one pass over its units, a register at a time, whatever LLVM's cost model thinks.
float32 kernels compute in float32, as torch.nn's float32 LSTM does: the float64
version of the AVX-512 LSTM step took 2.6 ns per unit, the float32 one 1.3. A vector is
never wider than a register: wider ones are split by LLVM into several, and the step's
values then outnumber the registers and spill to the stack.

API (all inlined into the caller; ``off`` is an element offset into a C-contiguous
array, ``n`` the number of valid lanes, so any H works: lanes >= n load 0 and are not
stored)::

    lanes(arr) -> lanes of arr's dtype   load(arr, off, n) -> vector   store(arr, off, n, v)
    transpose_block(src, src_off, src_ld, dst, dst_off, dst_ld)  (an L x L block, L = lanes)
    v + w, v - w, v * w, v / w, -v   (either side may be a Python/numba float)
    fma(a, b, c) = a * b + c (one rounding where the ISA has FMA; else two)
    clamp(v, lo, hi)  (NaN stays NaN)
    where_le0(v, a, b), where_gt0(v, a, b)       zero(v), one(v), full(v, x)
    exp(v), expm1(v), sigmoid(v), tanh(v)   (from :mod:`.vmath`, re-exported here)
"""

import operator

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import lower_builtin
from numba.core.typing.templates import AbstractTemplate, infer_global, signature
from numba.extending import intrinsic, models, register_model

from .config import ISA

_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


class VecType(types.Type):
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


# The vector kind of each dtype: one register of the target ISA.
KINDS = {types.float64: VecType(types.float64, ISA.lanes(8)),
         types.float32: VecType(types.float32, ISA.lanes(4))}


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.ir_type)


def ir_decl(builder, name, ret, args):
    """The declaration of LLVM function ``name`` (an intrinsic) in the current module."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def ir_fma(builder, kind, a, b, c):
    """a * b + c for vectors of ``kind``: llvm.fma (one rounding) where the ISA has FMA
    instructions; a multiply and an add elsewhere (llvm.fma would become a libm call
    per lane)."""
    if ISA.fma:
        vt = kind.ir_type
        return builder.call(ir_decl(builder, f"llvm.fma.{kind.suffix}", vt, [vt] * 3),
                            [a, b, c])
    return builder.fadd(builder.fmul(a, b), c)


def ir_splat(builder, x, vt):
    """A vector of type vt with every lane the scalar x."""
    undef = ir.Constant(vt, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, x, _I32(0)), undef,
                                  ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))


class IRVec:
    """A vector value while emitting IR, with Python arithmetic: ``a * b + 1.0`` emits
    fmul and fadd (a float operand becomes a constant vector). For IR-level math
    (vmath.py), so a long formula costs one intrinsic, not a function per operator."""

    def __init__(self, builder, kind, value):
        self.b, self.kind, self.v = builder, kind, value

    def _ir(self, x):
        if isinstance(x, IRVec):
            return x.v
        return ir.Constant(self.kind.ir_type, [float(x)] * self.kind.lanes)

    def _new(self, value):
        return IRVec(self.b, self.kind, value)

    def __add__(self, x):
        return self._new(self.b.fadd(self.v, self._ir(x)))

    def __radd__(self, x):
        return self._new(self.b.fadd(self._ir(x), self.v))

    def __sub__(self, x):
        return self._new(self.b.fsub(self.v, self._ir(x)))

    def __rsub__(self, x):
        return self._new(self.b.fsub(self._ir(x), self.v))

    def __mul__(self, x):
        return self._new(self.b.fmul(self.v, self._ir(x)))

    def __rmul__(self, x):
        return self._new(self.b.fmul(self._ir(x), self.v))

    def __truediv__(self, x):
        return self._new(self.b.fdiv(self.v, self._ir(x)))

    def __rtruediv__(self, x):
        return self._new(self.b.fdiv(self._ir(x), self.v))

    def __neg__(self):
        return self._new(self.b.fneg(self.v))

    def fma(self, x, y):
        """self * x + y (one rounding where the ISA has FMA)."""
        return self._new(ir_fma(self.b, self.kind, self.v, self._ir(x), self._ir(y)))

    def clamp(self, lo, hi):
        """min(max(self, lo), hi) with ordered compares: NaN stays NaN."""
        lo, hi = self._ir(lo), self._ir(hi)
        v = self.b.select(self.b.fcmp_ordered(">", self.v, hi), hi, self.v)
        return self._new(self.b.select(self.b.fcmp_ordered("<", v, lo), lo, v))


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


@intrinsic
def lanes(typingctx, arr):
    """Lanes of one vector of arr's dtype (a compile-time constant)."""
    kind = _kind_of_array(arr)
    if kind is None:
        return None
    n = kind.lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)

    return types.intp(arr), codegen


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
                mask = ir_lane_mask(builder, args[2], kind.lanes)
                v_tail = builder.call(fn, [ptr, _I32(align), mask,
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
def add_squares(typingctx, sq, off, n, v):
    """sq[off:off + n] += the squares of v's first n lanes, in float64 (sq: a float64
    array; v: a vector of any kind, widened lane by lane first). The BPTT kernels' per-unit
    sums of squares of dL/dh_t (norms.py): squared in float32 they underflowed to 0 below
    ~1e-19 and overflowed to inf above ~2e19 (a float32 norm of 1e-25 read 0; the study's
    vanishing gradients pass 1e-30), where torch's own norm sums in double."""
    if not (isinstance(sq, types.Array) and sq.dtype == types.float64
            and isinstance(v, VecType)):
        return None
    sig = types.void(sq, types.intp, types.intp, v)
    lanes = v.lanes

    def codegen(context, builder, sig, args):
        wide = ir.VectorType(ir.DoubleType(), lanes)
        x = args[3]
        if v.dtype != types.float64:
            x = builder.fpext(x, wide)
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], wide)
        full = builder.icmp_signed(">=", args[2], _I64(lanes))
        with builder.if_else(full, likely=True) as (then, otherwise):
            with then:
                old = builder.load(ptr, align=8)
                builder.store(builder.fadd(old, builder.fmul(x, x)), ptr, align=8)
            with otherwise:
                mask = ir_lane_mask(builder, args[2], lanes)
                mload = ir_decl(builder, f"llvm.masked.load.v{lanes}f64.p0", wide,
                                [wide.as_pointer(), _I32, ir.VectorType(_I1, lanes), wide])
                mstore = ir_decl(builder, f"llvm.masked.store.v{lanes}f64.p0",
                                 ir.VoidType(),
                                 [wide, wide.as_pointer(), _I32, ir.VectorType(_I1, lanes)])
                old = builder.call(mload, [ptr, _I32(8), mask,
                                           ir.Constant(wide, [0.0] * lanes)])
                builder.call(mstore, [builder.fadd(old, builder.fmul(x, x)), ptr, _I32(8),
                                      mask])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def full(typingctx, v, x):
    """A vector of v's kind with every lane x."""
    if not isinstance(v, VecType) or not isinstance(x, (types.Float, types.Integer)):
        return None
    sig = v(v, v.dtype)

    def codegen(context, builder, sig, args):
        return ir_splat(builder, args[1], v.ir_type)

    return sig, codegen


def _constant(x):
    @intrinsic
    def const(typingctx, v):
        if not isinstance(v, VecType):
            return None

        def codegen(context, builder, sig, args):
            return ir.Constant(v.ir_type, [x] * v.lanes)

        return v(v), codegen

    return const


zero = _constant(0.0)  # zero(v): a vector of v's kind, every lane 0
one = _constant(1.0)  # one(v): every lane 1


def _vec_of(a, b):
    """The vector type of a binary operation on types a and b (a vector and a vector
    of its kind, or a vector and a scalar), else None."""
    scalar = (types.Float, types.Integer)
    if isinstance(a, VecType) and (a == b or isinstance(b, scalar)):
        return a
    if isinstance(b, VecType) and isinstance(a, scalar):
        return b
    return None


def _as_vec(context, builder, val, ty, v):
    """A value of type ty (v itself, or a scalar) as a vector of kind v."""
    if ty == v:
        return val
    return ir_splat(builder, context.cast(builder, val, ty, v.dtype), v.ir_type)


def _register_binary(pyop, name):
    """v op w lane-wise, lowered straight to one LLVM instruction: typed by a template
    and lowered in place, never inlined as a function (numba-level inlining of every
    arithmetic operator was most of the kernels' compile time)."""

    @infer_global(pyop)
    class _Typing(AbstractTemplate):
        def generic(self, args, kws):
            if len(args) == 2 and not kws:
                v = _vec_of(*args)
                if v is not None:
                    return signature(v, *args)
            return None

    def lower(context, builder, sig, args):
        v = sig.return_type
        a, b = (_as_vec(context, builder, x, t, v) for x, t in zip(args, sig.args))
        return getattr(builder, name)(a, b)

    for tys in ((VecType, VecType), (VecType, types.Number), (types.Number, VecType)):
        lower_builtin(pyop, *tys)(lower)


for _pyop, _name in ((operator.add, "fadd"), (operator.sub, "fsub"), (operator.mul, "fmul"),
                     (operator.truediv, "fdiv")):
    _register_binary(_pyop, _name)


@infer_global(operator.neg)
class _NegTyping(AbstractTemplate):
    def generic(self, args, kws):
        if len(args) == 1 and not kws and isinstance(args[0], VecType):
            return signature(args[0], args[0])
        return None


@lower_builtin(operator.neg, VecType)
def _lower_neg(context, builder, sig, args):
    return builder.fneg(args[0])


@intrinsic
def fma(typingctx, a, b, c):
    if not (isinstance(a, VecType) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        return ir_fma(builder, a, *args)

    return a(a, a, a), codegen


@intrinsic
def clamp(typingctx, a, lo, hi):
    """min(max(a, lo), hi) lane-wise, written with ordered compares so NaN stays NaN."""
    if not isinstance(a, VecType):
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
        if not (isinstance(v, VecType) and v == a == b):
            return None

        def codegen(context, builder, sig, args):
            z = ir.Constant(v.ir_type, [0.0] * v.lanes)
            return builder.select(builder.fcmp_ordered(pred, args[0], z), args[1], args[2])

        return v(v, v, v), codegen

    return where


where_le0 = _where("<=")  # a where v <= 0, else b (a NaN in v picks b), lane-wise
where_gt0 = _where(">")  # a where v > 0, else b (a NaN in v picks b), lane-wise


@intrinsic
def transpose_block(typingctx, src, src_off, src_ld, dst, dst_off, dst_ld):
    """dst's L x L block = the transpose of src's, L = lanes(src): row a of src's block is
    src[src_off + a * src_ld:][:L], row b of dst's is dst[dst_off + b * dst_ld:][:L] (element
    offsets and row strides into C-contiguous arrays of one dtype; every element in
    bounds: the caller's blocks are whole). In registers: L vector loads, log2(L) stages
    of L two-source shuffles (each stage swaps the off-diagonal b x b blocks of every 2b x
    2b block, b = L/2 .. 1), L vector stores; LLVM lowers the shuffles to the ISA's
    permutes (vpermt2ps on AVX-512, vperm2f128 / vshufps on AVX2, zip / trn on NEON).
    Written as element loads instead, LLVM kept one scalar load and store per element:
    gemm.pack_bt_into ran at a third of the plain packing's speed."""
    kind = _kind_of_array(src)
    if kind is None or _kind_of_array(dst) != kind or src.layout != "C" or dst.layout != "C":
        return None
    sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        L, vt = kind.lanes, kind.ir_type
        align = kind.ir_elem.get_abi_size(context.target_data)

        def ptr(arr_i, off_i, ld_i, row):
            off = builder.add(args[off_i], builder.mul(args[ld_i], _I64(row)))
            return _elem_ptr(context, builder, sig.args[arr_i], args[arr_i], off, vt)

        rows = [builder.load(ptr(0, 1, 2, a), align=align) for a in range(L)]
        b = L // 2
        while b >= 1:
            low = [(lane % (2 * b)) < b for lane in range(L)]
            mask_i = ir.Constant(ir.VectorType(_I32, L),
                                 [lane if lo else L + lane - b for lane, lo in enumerate(low)])
            mask_j = ir.Constant(ir.VectorType(_I32, L),
                                 [lane + b if lo else L + lane for lane, lo in enumerate(low)])
            for i in range(L):
                if (i // b) % 2 == 0:
                    j = i + b
                    rows[i], rows[j] = (builder.shuffle_vector(rows[i], rows[j], mask_i),
                                        builder.shuffle_vector(rows[i], rows[j], mask_j))
            b //= 2
        for a in range(L):
            builder.store(rows[a], ptr(3, 4, 5, a), align=align)
        return context.get_dummy_value()

    return sig, codegen


# The vector math lives in vmath.py (it builds on the API above); the kernels reach it
# as vec.exp, vec.sigmoid, ... Imported last: vmath imports this module.
from .vmath import exp, expm1, sigmoid, tanh  # noqa: E402,F401
