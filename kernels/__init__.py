"""Compute kernels for rnnfast (importable as ``rnnfast.kernels``).

The contract (../shared/DESIGN.md): each backend exposes the same four launchers, with
the same signatures, shapes and semantics, for the time recurrence of one layer
direction; the large GEMMs over all time steps are done once, outside the time loop
(:mod:`rnnfast.ops`)::

    rnn_fwd(xp, w_hh, h0, lengths, reverse, activation, negative_slope, reuse_xp)
        -> (y, h_n)
    rnn_bwd(dy, dh_n, y, w_hh, lengths, reverse, activation, negative_slope)
        -> (dxp, dh0, norms)
    lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths, reverse, reuse_xp)
        -> (y, h_n, c_n, gates, cs)
    lstm_bwd(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, reverse)
        -> (dxp, dh0, dc0, dhs, norms)

``reuse_xp=True`` lets a backend write y (RNN) or the gates (LSTM) over xp, a caller's
temporary. The CPU backend also exports its layer GEMMs (``project``, ``layer_grads``,
``matmul_tn``: its own AVX-512 GEMM, which ops uses on CPU tensors); on CUDA the
GEMMs are torch's.

Backends: :mod:`rnnfast.kernels.numba` (CPU) and :mod:`rnnfast.kernels.triton` (GPU,
and CPU tensors under ``TRITON_INTERPRET=1``).
"""

# Activation codes shared by every backend (a plain int crosses torch.library ops).
TANH, RELU, LEAKY_RELU = 0, 1, 2
ACTIVATIONS = {"tanh": TANH, "relu": RELU, "leaky_relu": LEAKY_RELU}
