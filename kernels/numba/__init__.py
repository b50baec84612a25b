"""numba CPU backend (see ``kernels/__init__`` for the contract).

What it runs: CPU tensors, float32 and float64, any width. Each launcher takes and
returns CPU torch tensors ([T, B, *] time-major, or a PackedSequence's rows [M, *] with
``offsets=``: PACKED_ROWS) that share memory with numpy, so no copy is made beyond making
an input contiguous. The kernels and their launchers live
together: :mod:`.rnn`, :mod:`.lstm` (recurrences), :mod:`.gemm` (the layer GEMMs, on the
register tile of :mod:`.tile`), :mod:`.dropout` (the inter-layer dropout's mask).
"""

import torch

from . import cache as _cache
from .dropout import dropout_mask
from .gemm import layer_grads, matmul_tn, project
from .gru import (
    gru_bwd,
    gru_fwd,
    gru_layer_bwd,
    gru_layer_bwd_unchecked,
    gru_layer_fwd,
    gru_layer_fwd_unchecked,
)
from .lstm import (
    lstm_bwd,
    lstm_fwd,
    lstm_layer_bwd,
    lstm_layer_bwd_unchecked,
    lstm_layer_fwd,
    lstm_layer_fwd_unchecked,
)
from .rnn import (
    rnn_bwd,
    rnn_fwd,
    rnn_layer_bwd,
    rnn_layer_bwd_unchecked,
    rnn_layer_fwd,
    rnn_layer_fwd_unchecked,
)

_cache.adopt()  # the kernel modules are all imported by now (see cache.adopt)

NAME = "numba"
DEVICE_TYPES = ("cpu",)
DTYPES = (torch.float32, torch.float64)
MAX_WIDTH = None  # any hidden_size / proj_size
# The recurrence launchers take a PackedSequence's rows [M, *] (``offsets=``) as well as
# padded [T, B, *] tensors, and read only the active rows of either; layer_grads takes
# any rows with their h_{t-1} named (``h_rows=``).
PACKED_ROWS = True


def unsupported(device, dtype, width):
    """Why this backend cannot run (device, dtype, width), or None when it can."""
    if device.type not in DEVICE_TYPES:
        return f"backend 'numba' runs on CPU tensors, got device {device}"
    if dtype not in DTYPES:
        return (f"backend 'numba' supports dtypes {[str(d) for d in DTYPES]}, "
                f"got {dtype}")
    return None


__all__ = ["rnn_fwd", "rnn_bwd", "rnn_layer_fwd", "rnn_layer_bwd", "lstm_fwd", "lstm_bwd",
           "lstm_layer_fwd", "lstm_layer_bwd", "gru_fwd", "gru_bwd", "gru_layer_fwd",
           "gru_layer_bwd", "rnn_layer_fwd_unchecked", "rnn_layer_bwd_unchecked",
           "lstm_layer_fwd_unchecked", "lstm_layer_bwd_unchecked", "gru_layer_fwd_unchecked",
           "gru_layer_bwd_unchecked", "project", "layer_grads", "matmul_tn",
           "dropout_mask",
           "NAME", "DEVICE_TYPES", "DTYPES", "MAX_WIDTH", "PACKED_ROWS", "unsupported"]
