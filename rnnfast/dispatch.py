"""The one place a backend is chosen.

``backend='auto'`` resolves to Triton for CUDA tensors and numba for CPU tensors, unless
the environment variable ``RNNFAST_BACKEND`` names a backend (``numba``, ``triton`` or
``torch``), which then replaces ``auto``. An explicit backend argument always wins.
``torch`` is the reference loop (``rnnfast.reference``), differentiated by autograd.
"""

import importlib
import os

import torch

BACKENDS = ("auto", "numba", "triton", "torch")
ENV_VAR = "RNNFAST_BACKEND"


class RNNArgumentError(ValueError, RuntimeError):
    """Bad argument to an rnnfast module. A ValueError *and* a RuntimeError, so code
    written against torch.nn (which raises either, depending on the check) still catches it."""


def check_backend_name(backend, what="backend"):
    if backend not in BACKENDS:
        raise RNNArgumentError(f"{what} must be one of {BACKENDS}, got {backend!r}")


def triton_interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(backend, device):
    """Concrete backend name for tensors on ``device``; raises if it cannot run there."""
    check_backend_name(backend)
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "auto") or "auto"
        check_backend_name(env, f"environment variable {ENV_VAR}")
        backend = env
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "numba"
    if backend == "numba" and device.type != "cpu":
        raise RNNArgumentError(f"backend 'numba' runs on CPU tensors, got device {device}")
    if backend == "triton" and device.type != "cuda" and not (
            device.type == "cpu" and triton_interpreting()):
        raise RNNArgumentError(
            f"backend 'triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), "
            f"got device {device}")
    return backend


def supported_dtypes(backend, device):
    if backend == "torch":
        return None  # whatever torch supports
    if backend == "numba":
        return (torch.float32, torch.float64)
    if device.type == "cuda":
        return (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    return (torch.float32, torch.float64)  # the Triton interpreter runs on numpy


def kernels(backend):
    """The kernel module of a concrete backend: ``rnnfast.kernels.<backend>``."""
    return importlib.import_module(f"rnnfast.kernels.{backend}")
