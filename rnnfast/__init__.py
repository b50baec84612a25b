"""rnnfast: fused recurrent kernels (numba on CPU, Triton on GPU) behind drop-in
``torch.nn.RNN`` / ``torch.nn.LSTM`` modules."""

from . import diagnostics, dispatch, reference
from .dispatch import BACKENDS, RNNArgumentError
from .modules import LSTM, RNN

__all__ = ["RNN", "LSTM", "BACKENDS", "RNNArgumentError", "diagnostics", "dispatch",
           "reference", "set_triton_tf32"]


def set_triton_tf32(enabled):
    """Allow TF32 for the float32 recurrent products of the Triton kernels (default off;
    None: follow the environment variable RNNFAST_TRITON_TF32)."""
    from .kernels.triton import set_tf32
    set_tf32(enabled)
__version__ = "0.1.0"
