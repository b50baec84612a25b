"""BLAS thread setup for the CPU backend.

The numba kernels' per-step product and the CPU weight-gradient GEMMs run on scipy's
OpenBLAS (``np.dot`` inside numba), whose thread pool is separate from torch's.
"""

import torch

_threads = [None]


def match_blas_threads():
    """Give scipy's OpenBLAS torch's thread count, so torch.set_num_threads governs
    rnnfast too (and DDP workers with 1 thread each do not oversubscribe)."""
    n = torch.get_num_threads()
    if n != _threads[0]:
        import scipy.linalg.cython_blas  # noqa: F401  (loaded, so its pool is limited)
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
        _threads[0] = n


_controller = [None]


class single_threaded:
    """Context manager: OpenBLAS pools at 1 thread (for BLAS calls made from inside
    numba's parallel threads), restored on exit. Cheap: direct openblas_set_num_threads."""

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
