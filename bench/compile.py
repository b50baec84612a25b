"""``python -m bench.compile``: every Triton kernel configuration compiled for sm_80 and
sm_90 without a GPU, with the registers, shared memory and spills of each cubin.

The command line of :mod:`rnnfast.kernels.triton.compile_check` (which the tests import);
the same arguments: ``[--arch 80 90] [--jobs N] [--json PATH] [--only SUBSTR]``.
"""

import sys

from rnnfast.kernels.triton.compile_check import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m bench.compile"))
