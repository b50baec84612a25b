"""Compute kernels for rnnfast (importable as ``rnnfast.kernels``).

Only the time recurrence lives here; every large GEMM over all time steps is done
by torch in :mod:`rnnfast.ops`. Each backend exposes the same four launchers, with
the same signatures, shapes and semantics (see ``kernels/contract.md``)::

    rnn_fwd(xp, w_hh, h0, lengths, reverse, activation, negative_slope) -> (y, h_n)
    rnn_bwd(dy, dh_n, y, w_hh, lengths, reverse, activation, negative_slope)
        -> (dxp, dh0, norms)
    lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths, reverse) -> (y, h_n, c_n, gates, cs)
    lstm_bwd(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, reverse)
        -> (dxp, dh0, dc0, dhs, norms)

Backends: :mod:`rnnfast.kernels.numba` (CPU) and :mod:`rnnfast.kernels.triton` (GPU,
and CPU tensors under ``TRITON_INTERPRET=1``).
"""

# Activation codes shared by every backend (a plain int crosses torch.library ops).
TANH, RELU, LEAKY_RELU = 0, 1, 2
ACTIVATIONS = {"tanh": TANH, "relu": RELU, "leaky_relu": LEAKY_RELU}
