"""Triton backend (see ``kernels/__init__`` for the contract).

What it runs: CUDA tensors (float32, float64, float16, bfloat16; the recurrent state
and accumulation stay float32 for the half types), widths up to
:data:`config.MAX_WIDTH`; and CPU tensors in float32 / float64 under
``TRITON_INTERPRET=1`` (Triton's interpreter runs the same kernels on numpy, one step
per launch). The kernels and their launchers live together: :mod:`.rnn`, :mod:`.lstm`;
the step math shared by both is in :mod:`.common`, the launch configurations in
:mod:`.config`, the layer GEMMs (torch matmuls) in :mod:`.gemm`.

Two ways to run the T steps, one kernel and one step body for both:

* one step per launch (``s_end = s_begin + 1``): the launch boundary is the barrier
  between steps (CPU interpreter; and the GPU fallback when the grid is too large to be
  co-resident);
* all steps in one launch (CUDA, grid <= one program per SM): programs meet at an
  atomic grid barrier after every step (phase).

State lives in float32 (float64 for float64 inputs) ping-pong buffers ``[2, B, *]``;
what programs exchange only as a product's operand (h_{t-1}, dz, r, dh with projection)
travels in the input dtype, so bfloat16 and float16 layers move half the bytes per step.
The host only allocates, launches, and finishes with a few torch ops (h_n = final
state; BPTT's last dh = dz @ W_hh, one small GEMM; norms = sqrt of the per-program
partial sums, added in a fixed order, so the result is deterministic).
"""

import torch

from . import config
from ._host import last_launch
from .config import DTYPES, MAX_WIDTH, set_tf32, tf32_enabled, triton_interpreting
from .gemm import layer_grads, matmul_tn, project
from .gru import gru_bwd, gru_fwd
from .lstm import lstm_bwd, lstm_fwd
from .rnn import rnn_bwd, rnn_fwd

NAME = "triton"
# The recurrence launchers take padded [T, B, *] tensors only (rnnfast.ops pads a
# PackedSequence's rows for them).
PACKED_ROWS = False
DEVICE_TYPES = ("cuda",)
INTERPRETER_DTYPES = (torch.float32, torch.float64)


def unsupported(device, dtype, width):
    """Why this backend cannot run (device, dtype, width), or None when it can."""
    if device.type == "cpu" and triton_interpreting():
        dtypes = INTERPRETER_DTYPES
    elif device.type in DEVICE_TYPES:
        dtypes = DTYPES
    else:
        return (f"backend 'triton' needs CUDA tensors (or CPU tensors with "
                f"TRITON_INTERPRET=1), got device {device}")
    if dtype not in dtypes:
        return (f"backend 'triton' on {device.type} supports dtypes "
                f"{[str(d) for d in dtypes]}, got {dtype}")
    if width > MAX_WIDTH:
        return (f"the Triton kernels run hidden_size and proj_size up to {MAX_WIDTH}, "
                f"got {width}")
    return None


__all__ = ["rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd", "project",
           "layer_grads",
           "matmul_tn", "NAME", "DEVICE_TYPES", "DTYPES", "MAX_WIDTH", "PACKED_ROWS", "unsupported",
           "config", "last_launch", "set_tf32", "tf32_enabled"]
