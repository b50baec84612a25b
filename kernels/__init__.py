"""Compute kernels for rnnfast (importable as ``rnnfast.kernels``; imports nothing from
the rest of rnnfast).

The contract (../shared/DESIGN.md): each backend module (:mod:`.numba`, :mod:`.triton`)
declares what it runs, ``unsupported(device, dtype, width) -> reason or None``, and
exports the same launchers, with the same signatures, shapes and semantics, for the
time recurrence of one layer direction, plus the same layer-GEMM entry points for the
products over all time steps at once (done outside the time loop)::

    rnn_fwd(xp, w_hh, h0, lengths, reverse, activation, negative_slope, reuse_xp,
            train=True)
        -> (y, h_n)
    rnn_bwd(dy, dh_n, y, w_hh, lengths, reverse, activation, negative_slope,
            need_dh0=True) -> (dxp, dh0, norms)
    lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths, reverse, reuse_xp, train=True)
        -> (y, h_n, c_n, gates, cs)
    lstm_bwd(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths, reverse, need_dh0=True)
        -> (dxp, dh0, dc0, dhs, norms)
    gru_fwd(xp, w_hh, b_hn, h0, lengths, reverse, reuse_xp, train=True)
        -> (y, h_n, gates)
    gru_bwd(dy, dh_n, y, gates, h0, w_hh, lengths, reverse, need_dh0=True)
        -> (dxp, dgh, dh0, norms)

    project(x, w_ih, bias) -> xp                                  x [T, B, I]
    layer_grads(dxp, x, y, h0, w_ih, lengths, reverse, has_bias, need_dx, dgh=None)
        -> (dx, dW_ih, dW_hh, db_ih, db_hh)
    matmul_tn(a, b) -> a^T @ b                                    (dW_hr)

Shapes: T steps, B rows, I inputs, H hidden units, P = proj_size (LSTM) or H, G the
gate columns (H for the RNN, 4H for the LSTM, 3H for the GRU). ``xp`` is the input
projection x W_ih^T + b_ih + b_hh (the GRU's n block takes b_ih only: b_hn is
multiplied by r, so the GRU kernels take it separately). ``lengths`` (int64 [B] or
None) freezes row b's state from step lengths[b] on (y = 0 there); ``reverse`` runs
t = T-1 .. 0. ``norms`` (float64 [T]) is ||dL/dh_t|| per input position.
``reuse_xp=True`` lets a backend write y (RNN) or the gates (LSTM, GRU) over xp.
``need_dh0=False`` (h_0 needs no gradient: hx=None) lets a backend skip the last
step's product dz @ W_hh: dh0 then comes back as [0, P] (numba), or computed anyway
(Triton; rnnfast.ops drops it).
``train=False`` is a forward that will not be differentiated: what only backward reads
(the LSTM's gates and cs, the GRU's gates) comes back as empty [0] tensors of xp's
dtype, and a backend need not compute or store it; y, h_n (, c_n) are bitwise the same
as with ``train=True``. For the RNN, whose backward reads only y, it changes nothing.
With ``lengths`` non-increasing (a PackedSequence's order) the rows active at step t
are a prefix of the batch, and a backend may run each step on that prefix only (numba
does, per thread's rows, with results bitwise the same as for the rows in any order).

A backend may also export a one-call layer forward per cell, the input projection and
the recurrence together (numba does: one compiled call, ~20-35 us less host work per
layer at (B, H) = (1, 32)); rnnfast.ops uses it for padded input where present::

    rnn_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, lengths, reverse, activation,
                  negative_slope, train=True) -> as rnn_fwd
    lstm_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, reverse,
                   train=True) -> as lstm_fwd
    gru_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, lengths, reverse, train=True)
        -> as gru_fwd

(x [T, B, I], b_ih and b_hh [G] or both None), with results bitwise those of
``project`` followed by the recurrence launcher.

And a one-call layer backward per cell, the BPTT and the layer GEMMs together, for a
padded layer without lengths (numba does: the layer GEMMs read the BPTT's gate
gradients as numpy rows: 3-15 us less host work per call at (B, H) = (1, 32));
rnnfast.ops uses it where present and falls back to the recurrence launcher and
``layer_grads`` where it returns None (numba: where those GEMMs go to torch.mm)::

    rnn_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y, reverse, activation, negative_slope,
                  has_bias, need_dx, need_dh0=True)
        -> (dx, dW_ih, dW_hh, db_ih, db_hh, dh0, norms)
    lstm_layer_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs, reverse,
                   has_bias, need_dx, need_dh0=True)
        -> (dx, dW_ih, dW_hh, db_ih, db_hh, dh0, dc0, norms)
    gru_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y, gates, reverse, has_bias, need_dx,
                  need_dh0=True) -> (dx, dW_ih, dW_hh, db_ih, db_hh, dh0, norms)

(no projection for the LSTM; dx [0] without need_dx, the biases' [0] without bias), with
results bitwise those of the BPTT launcher followed by ``layer_grads``.

Each one-call launcher may come with an ``<name>_unchecked`` twin (numba's do): the same
arguments and results without the argument checks, for rnnfast.ops' eager path, whose
module has checked every operand before the call (a layer's host work at (1, 32) is a
few hundred microseconds, and the checks a few of them per call).

A backend may also export the inter-layer dropout's mask (numba does: torch's CPU
``F.dropout`` draws its mask one element at a time off Intel CPUs)::

    dropout_mask(like, p, seed) -> mask    like's shape and dtype: 1 / (1 - p) or 0

(seed: an int in [0, 2^64) that fixes the mask); rnnfast's modules then apply
``x * mask`` between layers in training, else ``F.dropout``.

``PACKED_ROWS`` (bool): whether the recurrence launchers also take a PackedSequence's
rows as they are, with ``offsets=`` (int64 [T], the rows before step t, and the sorted
lengths): xp, y, gates, cs, dy, dxp, dgh, dhs are then [M, *] (M = sum of lengths; step
t of row b is row offsets[t] + b) and no padded tensor exists (numba: True). Where it
is False, rnnfast.ops scatters what a kernel reads to [T, B, *] and gathers back. A
PACKED_ROWS backend's ``layer_grads`` also takes any N rows with ``h_rows=`` (int64
[N]: the row of y, or -1 - the row of h0, that holds each row's h_{t-1}; see
kernels.numba.gemm.layer_grads), so rnnfast.ops makes no copy of h_{t-1}.

The GRU (torch.nn.GRU's cell, gate order r, z, n)::

    r = sigmoid(xp_r + h W_hr^T);  z = sigmoid(xp_z + h W_hz^T)
    hn = h W_hn^T + b_hn;  n = tanh(xp_n + r * hn);  h' = (1 - z) * n + z * h

saves ``gates`` [T, B, 4H] = (r, z, n, hn) for backward, which returns dxp [T, B, 3H]
(the gradient of xp) and dgh [T, B, 3H] (of the recurrent product h W_hh^T + b_hh:
equal to dxp in the r and z blocks, dxp_n * r in the n block); then
dW_hh = sum dgh^T h_{t-1}, db_hh = sum dgh (layer_grads' ``dgh``).
"""

# Activation codes shared by every backend (a plain int crosses torch.library ops).
TANH, RELU, LEAKY_RELU = 0, 1, 2
ACTIVATIONS = {"tanh": TANH, "relu": RELU, "leaky_relu": LEAKY_RELU}
