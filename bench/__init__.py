"""rnnfast's benchmark programs, run from the repository root (not installed):

``python -m bench``          the speed and gradient-fidelity report (:mod:`bench.report`)
``python -m bench.gpu``      the GPU validation: CUDA tests, then rnnfast against cuDNN
``python -m bench.compile``  every Triton configuration compiled for sm_80 / sm_90
                             (:mod:`rnnfast.kernels.triton.compile_check`)
``python -m bench.study``    the gradient telemetry study
``pytest bench/``            pytest-benchmark versions of the report's speed cases
"""

import os

# The benchmarks time rnnfast's kernels: a cold first call compiles them in this process
# (warm-up, untimed) instead of running torch.nn's operator while a background process
# compiles (rnnfast.warmup).
os.environ.setdefault("RNNFAST_COMPILE", "sync")
