"""rnnfast: fused recurrent kernels (numba on CPU, Triton on GPU) behind drop-in
``torch.nn.RNN`` / ``torch.nn.LSTM`` / ``torch.nn.GRU`` modules."""

from . import diagnostics, dispatch, reference
from .dispatch import BACKENDS, RNNArgumentError
from .modules import GRU, LSTM, RNN

__all__ = ["RNN", "LSTM", "GRU", "BACKENDS", "RNNArgumentError", "diagnostics",
           "dispatch", "explain", "reference", "set_triton_tf32"]
__version__ = "0.1.0"


def explain(module, input):
    """One line: which implementation ``module(input)`` runs, on which instruction set,
    and why (``module``: an rnnfast RNN / LSTM / GRU; ``input``: a Tensor or
    PackedSequence)."""
    be = module.plan(input)
    isa = getattr(getattr(be.kernels, "config", None), "ISA", None)
    where = f" [{getattr(isa, 'name', isa)}]" if isa else ""
    return f"{type(module).__name__}: backend={be.name}{where}: {be.reason}"


def set_triton_tf32(enabled):
    """Allow TF32 for the float32 recurrent products of the Triton kernels (default off;
    None: follow the environment variable RNNFAST_TRITON_TF32)."""
    dispatch.kernel_module("triton").set_tf32(enabled)


# Modules saved whole (torch.save(model)) load with torch.load(weights_only=True):
# the classes are allow-listed for torch's weights-only unpickler.
import torch as _torch  # noqa: E402

_torch.serialization.add_safe_globals([RNN, LSTM, GRU])
