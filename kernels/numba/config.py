"""Every numba flag used by rnnfast's CPU kernels, in one place.

``RNNFAST_NUMBA_CACHE=0`` disables the on-disk compile cache (on by default, so a
second process starts without recompiling). numba keys a cached function on its own
source file only: after editing vec.py, simd.py or gemm.py, the kernels in rnn.py and
lstm.py that inline them still load their old machine code. Delete
``kernels/numba/__pycache__`` (or set RNNFAST_NUMBA_CACHE=0) when working on those.
``fastmath`` stays off: it lets LLVM
reassociate the float sums, which would break bitwise determinism across shapes and
the gradient-fidelity guarantee (no worse than torch's own float32 error).
"""

import os

CACHE = os.environ.get("RNNFAST_NUMBA_CACHE", "1") != "0"
FASTMATH = False

# Serial kernels: one thread runs the time loop (the per-step GEMM is simd.tile).
JIT = dict(nogil=True, cache=CACHE, fastmath=FASTMATH, error_model="numpy")

# Small helpers inlined into their callers at numba IR level.
INLINE = dict(JIT, inline="always")


# Batch-parallel kernels: each thread runs the whole time loop for its slice of rows.
JIT_PARALLEL = dict(JIT, parallel=True)

# Split the batch across threads only when a step's product has this many
# multiply-adds (below it, thread start-up costs more than it saves) ...
PARALLEL_MIN_MACS = 1 << 15
# ... and each thread gets at least this many rows.
PARALLEL_MIN_ROWS = 2
# A layer GEMM (projection, weight gradients) is split across threads from this many
# multiply-adds: ~15 us on one core, against a few us to start and join a parallel region.
PARALLEL_GEMM_MIN_MACS = 1 << 22
