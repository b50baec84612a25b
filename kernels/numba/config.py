"""Every numba flag used by rnnfast's CPU kernels, and the instruction set they target.

``RNNFAST_NUMBA_CACHE=0`` disables the on-disk compile cache (on by default, so a
second process starts without recompiling). A cached kernel is keyed on the sources of
the whole backend (every file it may inline) and on the target CPU: see :mod:`.cache`.
``fastmath`` stays off: it lets LLVM reassociate the float sums, which would break
bitwise determinism across shapes and the gradient-fidelity guarantee (no worse than
torch's own float32 error).

Instruction set (:data:`ISA`): the kernels' vector width and GEMM register tile are
chosen at import from the CPU numba compiles for (numba's target machine: the host, or
``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``), so that the tile's accumulators and the
pointwise step's vectors fit the register file (a tile that does not fit spills to the
stack and runs at half speed or worse). ``RNNFAST_ISA=avx512|avx2|sse2|neon`` overrides
the choice (for tests: e.g. compiling the NEON shapes on x86 to cross-compile their IR);
code built for a wider ISA than the CPU has stays correct, only slower. One setting
follows the CPU that runs the code rather than the ISA: whether the per-step product
packs A first (``Isa.pack_a``; off on AMD cores, :data:`PACK_A_OFF_CPUS`;
``RNNFAST_PACK_A=0|1`` overrides). Results are bitwise the same either way.
"""

import os
from typing import NamedTuple

from .._env import env_flag

CACHE = env_flag("RNNFAST_NUMBA_CACHE", True)
FASTMATH = False


class Isa(NamedTuple):
    """A target instruction set, as the kernels see it."""
    name: str
    vector_bits: int  # one vector register
    registers: int  # vector registers
    fma: bool  # fused multiply-add instructions (else multiply, then add)
    mr: int  # GEMM register tile: rows of A (broadcast scalars)
    nv: int  # ... and vectors of B per row; mr * nv accumulators
    pack_a: bool  # the per-step product copies A into tile-major panels first (gemm.py)
    row_panels: int  # panels of B a single row of A runs at once (tile.py: the row arm)
    tn_pack_a: bool = True  # the weight-gradient sums pack A's columns first (gemm._gemm_tn)

    def lanes(self, itemsize):
        """Vector lanes for elements of ``itemsize`` bytes."""
        return self.vector_bits // (8 * itemsize)


# Register budget of each tile, k loop: mr * nv accumulators + nv vectors of B + one
# broadcast of A (+ one product without FMA): 24 + 4 + 1 of 32 (AVX-512, NEON),
# 12 + 2 + 1 of 16 (AVX2), 8 + 2 + 2 of 16 (SSE2: two-operand instructions, so the
# broadcast is copied before each multiply).
#
# pack_a: whether the per-step product packs A (gemm.mm_into). Measured on the 2 GHz Xeon
# (Skylake-SP), one thread, [32 x 512] @ [512 x 1536] and [32 x 1536] @ [1536 x 512]
# float32, both drivers in one process: AVX2 +12-25%, SSE2 +7-10%, AVX-512 -3 to -9%
# (its 6 broadcasts per 4 vectors of B are no bottleneck). NEON: not measured; it
# follows the AVX-512 shape. That is the Intel core's answer, not the ISA's: on AMD
# cores the plain product wins (see PACK_A_OFF_CPUS below), so the ISA's pack_a
# holds only where the host CPU is not one of them.
#
# tn_pack_a: the weight-gradient sums (gemm._gemm_tn: a^T b over T * B rows) copy each
# chunk of a's columns into tile-major panels first, or the tile reads them where they
# are (a_rs = 1, a_ks = a's row stride: per k one run of MR scalars, a new cache line
# per k). AMD EPYC Zen 4, 2026-12-03, two threads, twelve alternated rounds, the same
# sums bitwise, [N x G]^T [N x K] float32 at (N, G, K) = (3200, 512, 128) (an LSTM's dW at
# (B, H) = (32, 128)), (3200, 1024, 256), (6400, 2048, 512), (700, 800, 200): AVX-512
# in place 197-200 GFLOP/s median against packed 167-188 (every round); the same code
# held to AVX2 (6 x 2 tile: one broadcast per 2 vectors of B) one thread, in place
# 61-85 against 68-91 (in place won only at (3200, 512, 128)); SSE2 19-26 against
# 22-31. With 4 vectors of B per broadcast the loads of A are not the bottleneck and
# the copy is pure cost. NEON (the same 6 x 4 shape): not measured, it keeps the copy.
# Again with each tile's A packed just before its panels (gemm._gemm_tn, 2026-12-07,
# the same Zen 4, two threads, the five shapes above (3200, 768, 256) included): AVX2
# packed 186-208 GFLOP/s against in place 140-192; AVX-512 in place 207-223 against
# packed 182-208.
#
# row_panels: a product with one row of A (a batch of one, the per-step h_{t-1} @ W_hh^T
# of B = 1) has only nv accumulators in the plain tile, nv dependent FMA chains: 2 on
# AVX2, a third of what hides the FMA latency (4-5 cycles, 2 pipes). Its row arm runs
# row_panels panels of B at once: 8 accumulators on every ISA; two rows run
# row_panels // 2 panels (8 accumulators on AVX2 and SSE2; the plain tile's 2 x 4 on
# AVX-512 and NEON).
ISAS = {
    "avx512": Isa("avx512", 512, 32, True, 6, 4, False, 2, tn_pack_a=False),
    "avx2": Isa("avx2", 256, 16, True, 6, 2, True, 4),
    "sse2": Isa("sse2", 128, 16, False, 4, 2, True, 4),
    "neon": Isa("neon", 128, 32, True, 6, 4, False, 2),
}

_PROBE = """
define void @probe(ptr %p) {
  %v = load <16 x float>, ptr %p
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %v, <16 x float> %v, <16 x float> %v)
  store <16 x float> %r, ptr %p
  ret void
}
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
"""


def isa_of(target_machine):
    """The :data:`ISAS` key for an llvmlite target machine, read off the code it emits
    for a 16-lane float FMA (so every way of naming a CPU and its features agrees with
    what LLVM will actually use): zmm registers -> avx512, ymm FMAs -> avx2, anything
    else on x86 -> sse2 (AVX without FMA included); aarch64 -> neon."""
    import llvmlite.binding as ll

    triple = target_machine.triple
    if triple.startswith(("aarch64", "arm64")):
        return "neon"
    if not triple.startswith(("x86_64", "i686", "i386")):
        return "sse2"  # another architecture: 128-bit vectors, no FMA assumed
    mod = ll.parse_assembly(_PROBE)
    mod.triple = triple
    asm = target_machine.emit_assembly(mod)
    if "zmm" in asm:
        return "avx512"
    if "vfmadd" in asm and "ymm" in asm:
        return "avx2"
    return "sse2"


def _detect():
    forced = os.environ.get("RNNFAST_ISA")
    if forced:
        if forced not in ISAS:
            raise ValueError(f"RNNFAST_ISA={forced!r}: expected one of {sorted(ISAS)}")
        return ISAS[forced]
    from numba.core.registry import cpu_target
    return ISAS[isa_of(cpu_target.target_context.codegen()._tm)]


# Host CPUs (LLVM's names for them) whose cores run the per-step product faster without
# packing A, whatever ISA the code targets. AMD EPYC Zen 2, one thread, mm_into packed
# against the plain _gemm at [M x K] @ [K x N] float32 (2026-12-02): AVX2 code, M = 32,
# (K, N) = (128, 512) 78 -> 87 GFLOP/s, (512, 128) 63 -> 92, (256, 1024) 84 -> 92,
# (2048, 512) 77 -> 84; M = 24 and 48 at (512, 128) 69 -> 93; SSE2 code (x86-64) the
# same shapes 20-22 -> 22-24 GFLOP/s. Zen's load ports serve the tile's six row
# broadcasts from six streams as fast as from one, and packing costs a copy per step.
# An LSTM layer's recurrence on one thread, T = 100: (32, 128) forward 9.4-11.4 ->
# 8.5-9.2 ms, BPTT 9.8-12.5 -> 7.9-8.1 ms; (32, 256) 28-34 -> 26-27 ms, 29-38 -> 25-26 ms.
# AMD EPYC Zen 4 (znver4), 2026-12-03, the same products in AVX2 code (isa-env.sh
# haswell), seven alternated rounds, median GFLOP/s packed -> plain: (32, 128, 512)
# 75 -> 84, (32, 512, 128) 54 -> 81, (32, 256, 1024) 74 -> 81, (48, 512, 128) 56 -> 85,
# (32, 512, 2048) 80 -> 88; SSE2 code 19-22 -> 20-25.
PACK_A_OFF_CPUS = ("znver", "bdver", "btver", "amdfam")


def host_cpu():
    """LLVM's name for the CPU this process runs on (not the compile target, which
    NUMBA_CPU_NAME may change): 'znver2', 'skylake-avx512', 'neoverse-n1', ..."""
    import llvmlite.binding as ll
    return ll.get_host_cpu_name()


def _tune(isa):
    """The ISA's tile settings for this host: pack_a off on PACK_A_OFF_CPUS.
    ``RNNFAST_PACK_A=0|1`` overrides (for measuring one against the other)."""
    forced = env_flag("RNNFAST_PACK_A", None)
    if forced is not None:
        return isa._replace(pack_a=forced)
    if isa.pack_a and host_cpu().startswith(PACK_A_OFF_CPUS):
        return isa._replace(pack_a=False)
    return isa


ISA = _tune(_detect())
# What the compiled code depends on beyond the target CPU (numba's own key): the ISA's
# name and the host-tuned choices; part of every cache index's name (cache.py).
ISA_TAG = ISA.name + ("-packa" if ISA.pack_a else "")

# Before any kernel is defined: cache keys cover every source a kernel inlines.
if CACHE:
    from . import cache as _cache  # noqa: E402
    _cache.install()

# Serial kernels: one thread runs the time loop (the per-step GEMM is tile.tile).
JIT = dict(nogil=True, cache=CACHE, fastmath=FASTMATH, error_model="numpy")

# Small helpers inlined into their callers at numba IR level.
INLINE = dict(JIT, inline="always")


# Batch-parallel kernels: each thread runs the whole time loop for its slice of rows.
JIT_PARALLEL = dict(JIT, parallel=True)

# Split the batch across threads only when a step's product has this many
# multiply-adds (below it, thread start-up costs more than it saves) ...
PARALLEL_MIN_MACS = 1 << 15
# ... and each thread gets this many rows (the last one may get fewer: _host.recurrence_chunks).
PARALLEL_MIN_ROWS = 2
# ... and the whole launch (all T steps) has this many multiply-adds: a parallel region
# costs its start and join once per launch, so a short sequence (a step-at-a-time call,
# T = 1..8) runs serial however wide its step. On a 2-core Zen 4 VM, a forward under
# no_grad at (B, H) = (16, 128), serial / split time: GRU T = 1 0.84, T = 4 0.99,
# T = 8 1.14; LSTM T = 1 0.60-0.80 (fwd+bwd 0.65), T = 4 1.08; ReLU-RNN T = 1 0.83,
# T = 8 1.02, T = 16 1.05 (BENCHMARKS.md, session of 2026-12-06).
PARALLEL_MIN_LAUNCH_MACS = 1 << 22
# A batch of at most this many rows splits the hidden units across threads instead, every
# step (the column split: kernels/numba/rnn.py, lstm.py, gru.py), where the recurrent
# weight is at least COLUMN_SPLIT_MIN_WEIGHT_BYTES: with one row per thread each core
# streams all of W_hh from L3 every step; split by columns each streams its share, at
# one parallel region (~1 us) per step. T = 100, 2-core Zen 4 (AVX-512), float32, rows /
# columns time, fwd+bwd: LSTM B = 1 H = 128 0.87, H = 256 1.27, 512 1.31, 1024 1.41;
# B = 2 H = 128 0.88, 256 1.18, 512 1.22; B = 3 H = 512 1.13; B = 4 1.00-1.04; B = 8
# 0.97 (BENCHMARKS.md, session of 2026-12-06 18:53). Elman RNN (tanh, ReLU) B = 1
# H = 512 1.22-1.25, 1024 1.24-1.30; B = 2 1.13-1.18 and 1.17-1.24; B = 3 H = 512
# 1.03-1.04, 1024 1.12; B = 4 0.99 (session of 2026-12-06 22:16).
COLUMN_SPLIT_MAX_ROWS = 3
COLUMN_SPLIT_MIN_WEIGHT_BYTES = 1 << 20
# A layer GEMM (projection, weight gradients) is split across threads from this many
# multiply-adds: ~15 us on one core, against a few us to start and join a parallel region.
PARALLEL_GEMM_MIN_MACS = 1 << 22
