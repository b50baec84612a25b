"""BLAS threading for the CPU backend: OpenBLAS runs single-threaded inside rnnfast.

The numba kernels' per-step product and the small CPU GEMMs run on scipy's OpenBLAS
(``np.dot`` inside numba). Its thread pool is a third one beside torch's OpenMP pool
(oneDNN GEMMs) and numba's; three pools of spinning threads on 2 cores measured up to
100x slowdowns under load (a [1600,64]x[64,64] GEMM: 12 ms with 2 OpenBLAS threads vs
0.11 ms with 1). So OpenBLAS is held to one thread for the duration of each rnnfast call
and parallelism comes from numba (batch rows, :mod:`rnnfast.kernels.numba`) and torch
(large GEMMs), whose OpenMP runtimes are the same libgomp loaded by torch.
"""

_controller = [None]


class single_threaded:
    """Context manager: every loaded OpenBLAS pool at 1 thread, restored on exit (so the
    user's own numpy/scipy calls keep their setting). Cheap: openblas_set_num_threads."""

    def __enter__(self):
        if _controller[0] is None:
            import scipy.linalg.cython_blas  # noqa: F401
            from threadpoolctl import ThreadpoolController
            _controller[0] = [c for c in ThreadpoolController().lib_controllers
                              if c.internal_api == "openblas"]
        self._saved = [(c, c.get_num_threads()) for c in _controller[0]]
        for c, _ in self._saved:
            c.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for c, n in self._saved:
            c.set_num_threads(n)
        return False
