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
