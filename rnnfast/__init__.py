"""rnnfast: fused recurrent kernels (numba on CPU, Triton on GPU) behind drop-in
``torch.nn.RNN`` / ``torch.nn.LSTM`` modules."""

from . import diagnostics, dispatch, reference
from .dispatch import BACKENDS, RNNArgumentError
from .modules import LSTM, RNN

__all__ = ["RNN", "LSTM", "BACKENDS", "RNNArgumentError", "diagnostics", "dispatch",
           "reference"]
__version__ = "0.1.0"
