"""The CPU backend's matrix-product micro-kernel: register tiles written in LLVM IR,
shaped for the target instruction set (config.ISA).

Why not BLAS: the per-step product of a recurrence is small ([B, H] @ [H, 4H]) and runs
T times in a row, so it lives or dies by the speed of one register tile. numba's np.dot
goes to scipy's OpenBLAS, which this project's machines pin to its AVX2 kernels
(OPENBLAS_CORETYPE=Haswell), 70-105 GFLOP/s per core at the recurrences' shapes; the same
cores run AVX-512 FMAs at twice the width. LLVM (through numba) emits vector code for
the target CPU, but numba has no vector type, and a tile of accumulators written as
numpy arrays lives in memory, not registers. So the tile is written here, as IR, with
one ``<L x float>`` value per accumulator, L = one register's lanes (vec.KINDS). On
AVX-512 it measured 250-262 GFLOP/s per core in float32 at 6..36 x 64..512 x 256..2048
(OpenBLAS: 73-104), i.e. about 2 x 16-lane FMAs per cycle.

One intrinsic, :func:`tile`, covers every tile shape the drivers need::

    C[r, n : n + nn] (= or +=) sum_k A[r, k] * Bm[k, n : n + nn]    r < mr <= MR, k < K

with element offsets and strides for each operand (so A may be read transposed, and
operands may be views), nn = up to NV vectors of L lanes (C's columns past nn are
neither loaded nor stored, so any N works). The k loop keeps mr * nv accumulators in
registers, loads nv whole vectors of Bm and broadcasts mr scalars of A per k, and
multiplies with fused multiply-adds (a multiply and an add without FMA) in a fixed
order: results are bitwise reproducible and do not depend on how a caller splits rows
across threads.

Arms: the intrinsic is a switch over compiled tile shapes, and every kernel that links
it compiles every arm again, so the arms are a compile-time budget. There is one arm
per row count at the full NV vectors, and one per vector count at the full MR rows:
MR + NV - 1 arms (9 on AVX-512, 7 on AVX2), not MR x NV (24, 12), and the row arm
below. A tile that is short in both (a row remainder in a narrow last panel) runs the
NV-vector arm of its rows on the padding columns too and discards them. That is why Bm
is read in NV whole vectors and its panels must be padded to NV * L columns, as
gemm.pack_b, pack_bt and the weight-gradient packing do. Measured: the ReLU-RNN cell's
cold compile went from 41-42 to 29-31 CPU-s with one arm per row count (the corner rule
adds three arms back).

The row arm: a single row of A (a batch of one) would keep only NV accumulators, NV
dependent FMA chains over k, a fraction of what hides the FMA latency. It runs
RP = ISA.row_panels panels of Bm at once instead (1 x RP * NV accumulators; 8 on every
ISA), each output still summed over k in the same order: bitwise the plain tile's.
Where fewer than RP panels remain (N = 32 columns is 2 panels on AVX2) the missing
panels' accumulators run on the first panel and are discarded: the FMAs are spare
while the chains' latency bounds the loop. Two rows (2 x NV accumulators in the plain
tile) run RP // 2 panels at once where that is more than one (AVX2, SSE2).

The tile's shape is the ISA's (config.ISAS): MR x NV = 6 x 4 of 32 registers on
AVX-512 and NEON, 6 x 2 of 16 on AVX2, 4 x 2 of 16 on SSE2: accumulators, B vectors
and the broadcast fit the register file, so the k loop never touches the stack
(tests/test_isa.py reads the assembly to check).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import ISA
from .vec import KINDS, ir_decl, ir_fma, ir_lane_mask, ir_splat

MR = ISA.mr  # rows of A per register tile (row broadcasts)
NV = ISA.nv  # vectors of Bm per register tile (columns: NV * lanes)
RP = ISA.row_panels  # panels of Bm per single-row tile (the row arm; RP // 2 for two rows)


def _emit_tile(builder, kind, align, mr, nv, a, a_rs, a_ks, bm, ldb, b_ps, c, ldc, k_len,
               nn, beta, bias, use_bias):
    """IR for one mr x nv tile of vector kind ``kind`` (vec.KINDS) whose first nn
    columns (1..nv * lanes) are C's; a, bm, c, bias are element pointers at the tile's
    origin. The accumulators start at zero, or at the bias row when use_bias != 0.
    The k loop runs all nv vectors on whole vectors of Bm; C and the bias are read and
    written only in their nn columns (masked where nn < nv * lanes). Past NV vectors
    (the row arm) vector v of Bm is vector v % NV of the panel v // NV, b_ps elements
    after the previous one; C's and the bias's columns run on across the panels. A
    panel with none of C's columns (q * NV * lanes >= nn) may not exist: its vectors
    read the first panel instead, and their sums are discarded."""
    vt, L = kind.ir_type, kind.lanes
    vptr = vt.as_pointer()
    i32, i1 = ir.IntType(32), ir.IntType(1)
    align = i32(align)
    mload = ir_decl(builder, f"llvm.masked.load.{kind.suffix}.p0", vt,
                    [vptr, i32, ir.VectorType(i1, L), vt])
    mstore = ir_decl(builder, f"llvm.masked.store.{kind.suffix}.p0", ir.VoidType(),
                     [vt, vptr, i32, ir.VectorType(i1, L)])
    zero = ir.Constant(vt, [0.0] * L)
    intp = a_rs.type
    # lanes of vector v that are C's: column v * L + lane < nn
    masks = [ir_lane_mask(builder, builder.sub(nn, intp(v * L)), L) for v in range(nv)]

    def vec_ptr(base, off):
        return builder.bitcast(builder.gep(base, [off]), vptr)

    # panel q's offset in Bm (the row arm), the first panel's where q has no C column
    pofs = [intp(0)] + [builder.select(builder.icmp_signed(">", nn, intp(q * NV * L)),
                                       builder.mul(intp(q), b_ps), intp(0))
                        for q in range(1, (nv + NV - 1) // NV)]
    with_bias = builder.icmp_signed("!=", use_bias, ir.Constant(use_bias.type, 0))
    init = [builder.select(with_bias, builder.call(mload, [vec_ptr(bias, intp(v * L)), align,
                                                           masks[v], zero]), zero)
            for v in range(nv)]
    accs = [[cgutils.alloca_once(builder, vt) for _ in range(nv)] for _ in range(mr)]
    for r in range(mr):
        for v in range(nv):
            builder.store(init[v], accs[r][v])
    # C's lines are wanted only after the k loop: ask for them now (for writing), so
    # that a C fresh from the allocator does not stall the tile's stores.
    prefetch = ir_decl(builder, "llvm.prefetch.p0", ir.VoidType(),
                       [ir.IntType(8).as_pointer(), i32, i32, i32])
    for r in range(mr):
        crow = builder.mul(intp(r), ldc)
        for v in range(nv):
            p = builder.bitcast(builder.gep(c, [builder.add(crow, intp(v * L))]),
                                ir.IntType(8).as_pointer())
            builder.call(prefetch, [p, i32(1), i32(3), i32(1)])
    with cgutils.for_range(builder, k_len) as loop:
        k = loop.index
        brow = builder.mul(k, ldb)
        # whole vectors: a masked load would cost a mask register (AVX2) or a
        # branch per lane (SSE2) in the loop
        bv = [builder.load(vec_ptr(bm, builder.add(brow, builder.add(
            pofs[v // NV], intp(v % NV * L)))), align=align.constant)
            for v in range(nv)]
        acol = builder.mul(k, a_ks)
        for r in range(mr):
            s = builder.load(builder.gep(a, [builder.add(acol, builder.mul(intp(r), a_rs))]))
            splat = ir_splat(builder, s, vt)
            for v in range(nv):
                builder.store(ir_fma(builder, kind, splat, bv[v], builder.load(accs[r][v])),
                              accs[r][v])
    add_old = builder.icmp_signed("!=", beta, ir.Constant(beta.type, 0))

    def update_c(masked, accumulate):
        """C (+)= the accumulators: every vector whole, or each under its lane mask. C is
        read only to add to it: a product that sets C (beta = 0) must not load it. An
        unused load still waits for its cache line; on C fresh from the allocator (the
        projection's output, T * B rows) every tile stalled on six lines from L3 or
        DRAM: [3200 x 128] @ [128 x 512] ran at 64 GFLOP/s on one Zen 2 core, against
        86 with 1024 rows."""
        for r in range(mr):
            crow = builder.mul(intp(r), ldc)
            for v in range(nv):
                p = vec_ptr(c, builder.add(crow, intp(v * L)))
                val = builder.load(accs[r][v])
                if accumulate:
                    old = builder.call(mload, [p, align, masks[v], zero]) if masked else \
                        builder.load(p, align=align.constant)
                    val = builder.fadd(val, old)
                if masked:
                    builder.call(mstore, [val, p, align, masks[v]])
                else:
                    builder.store(val, p, align=align.constant)

    full = builder.icmp_signed("==", nn, intp(nv * L))
    with builder.if_else(add_old) as (adding, setting):
        for accumulate, block in ((True, adding), (False, setting)):
            with block:
                with builder.if_else(full) as (whole, part):
                    with whole:  # every column is C's: plain loads and stores
                        update_c(False, accumulate)
                    with part:  # C's last columns: masked loads and stores
                        update_c(True, accumulate)


@intrinsic
def tile(typingctx, a, a_off, a_rs, a_ks, bm, b_off, ldb, b_ps, c, c_off, ldc, k_len,
         mr, nv, nlast, beta, bias, bias_off, use_bias):
    """C tile (= or, when beta != 0, +=) A tile @ Bm panel (+ the bias row when
    use_bias != 0); see the module docstring. A single row (mr = 1) may span up to
    RP = ISA.row_panels consecutive panels of Bm (nv up to RP * NV; b_ps: elements from
    one panel to the next; only the panels holding C's nn columns are read), two rows
    up to RP // 2: the row arms.

    a, bm, c: arrays of one float dtype (any shape; only their data pointer is used,
    with the element offsets a_off, b_off, c_off and strides in elements: A[r, k] at
    a_off + r * a_rs + k * a_ks, Bm[k, j] at b_off + k * ldb + j, C[r, j] at
    c_off + r * ldc + j). 1 <= mr <= MR rows, 1 <= nv <= NV vectors, the last holding
    nlast (1..lanes) valid columns of C: nn = (nv - 1) * lanes + nlast columns. Bm's
    rows are read in up to NV whole vectors (pad its panels to NV * lanes). k_len >= 0
    terms. Nothing is bounds-checked: the drivers in gemm.py own the index arithmetic.
    bias: an array of the same dtype, read (masked) at bias_off + j for the tile's nn
    columns, and used only when use_bias != 0.
    """
    dt = a.dtype
    if not all(isinstance(x, types.Array) and x.dtype == dt for x in (a, bm, c, bias)) or \
            dt not in KINDS:
        return None
    ints = (a_off, a_rs, a_ks, b_off, ldb, b_ps, c_off, ldc, k_len, mr, nv, nlast, beta,
            bias_off, use_bias)
    if not all(isinstance(x, types.Integer) for x in ints):
        return None
    ip = types.intp
    sig = types.void(a, ip, ip, ip, bm, ip, ip, ip, c, ip, ip, ip, ip, ip, ip, ip, bias, ip,
                     ip)

    def codegen(context, builder, sig, args):
        (a_arr, a_off, a_rs, a_ks, b_arr, b_off, ldb, b_ps, c_arr, c_off, ldc, k_len,
         mr, nv, nlast, beta, bias_arr, bias_off, use_bias) = args
        kind = KINDS[dt]
        intp = context.get_value_type(types.intp)

        def data(arr, aryty, off):
            return builder.gep(context.make_array(aryty)(context, builder, arr).data, [off])

        pa = data(a_arr, sig.args[0], a_off)
        pb = data(b_arr, sig.args[4], b_off)
        pc = data(c_arr, sig.args[8], c_off)
        pbias = data(bias_arr, sig.args[16], bias_off)
        nn = builder.add(builder.mul(builder.sub(nv, intp(1)), intp(kind.lanes)), nlast)
        align = kind.ir_elem.get_abi_size(context.target_data)
        # The arms (see the module docstring): (m, NV) for every m, run on the first nn
        # columns; (MR, n) for n < NV, the full rows of a narrow last panel; and the
        # row arms (1, RP * NV) for one row over RP panels, (2, RP // 2 * NV) for two.
        nv_arm = builder.select(builder.icmp_signed("==", mr, intp(MR)), nv, intp(NV))
        arms = [(m, NV) for m in range(1, MR + 1)] + [(MR, n) for n in range(1, NV)]
        for m, rp in ((1, RP), (2, RP // 2)):
            if rp > 1:
                wide = builder.and_(builder.icmp_signed("==", mr, intp(m)),
                                    builder.icmp_signed(">", nv, intp(NV)))
                nv_arm = builder.select(wide, intp(rp * NV), nv_arm)
                arms.append((m, rp * NV))
        end = builder.append_basic_block("tile.end")
        sw = builder.switch(builder.add(builder.mul(mr, intp(64)), nv_arm), end)
        for m, n in arms:
            bb = builder.append_basic_block(f"tile.{m}x{n}")
            sw.add_case(intp(m * 64 + n), bb)
            builder.position_at_end(bb)
            _emit_tile(builder, kind, align, m, n, pa, a_rs, a_ks, pb, ldb, b_ps, pc, ldc,
                       k_len, nn, beta, pbias, use_bias)
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen
