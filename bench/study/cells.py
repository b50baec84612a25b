"""The recurrent cells the study compares, each an rnnfast module initialised as the
literature does, plus a linear readout.

tanh    rnnfast.RNN(nonlinearity='tanh'), torch's default init U(-1/sqrt(H), 1/sqrt(H))
relu    rnnfast.RNN(nonlinearity='relu'), the same default init
irnn    ReLU with W_hh = I, zero biases, W_ih ~ N(0, 0.001^2) (Le, Jaitly & Hinton 2015)
leaky   leaky-ReLU (slope 0.01) with the IRNN's init
lstm    rnnfast.LSTM, default init with total forget-gate bias 1
gru     rnnfast.GRU, default init

Everything uses the global torch RNG: call ``torch.manual_seed`` first.
"""

import torch
from torch import nn

import rnnfast

BASE_CELLS = ("tanh", "relu", "irnn", "leaky", "lstm")
LABELS = {
    "tanh": "tanh-RNN",
    "relu": "ReLU-RNN (default init)",
    "irnn": "IRNN (ReLU, W_hh = I)",
    "leaky": "leaky-ReLU RNN (W_hh = I)",
    "lstm": "LSTM (forget bias 1)",
    "gru": "GRU",
}
GATED = ("lstm", "gru")
RELU_FAMILY = ("relu", "irnn", "leaky")
LEAKY_SLOPE = 0.01
IRNN_INPUT_STD = 1e-3


def available_cells():
    """The study's cells: the five base cells and the GRU."""
    return BASE_CELLS + ("gru",)


def make_recurrent(cell, input_size, hidden, backend="auto"):
    """One single-layer rnnfast recurrent module initialised as ``cell`` prescribes.

    Raises ValueError for an unknown cell."""
    if cell == "lstm":
        m = rnnfast.LSTM(input_size, hidden, backend=backend)
        with torch.no_grad():  # gate order i, f, g, o
            m.bias_ih_l0[hidden:2 * hidden].fill_(1.0)
            m.bias_hh_l0[hidden:2 * hidden].zero_()
        return m
    if cell == "gru":
        return rnnfast.GRU(input_size, hidden, backend=backend)
    if cell in ("tanh", "relu"):
        return rnnfast.RNN(input_size, hidden, nonlinearity=cell, backend=backend)
    if cell in ("irnn", "leaky"):
        nl = "relu" if cell == "irnn" else "leaky_relu"
        m = rnnfast.RNN(input_size, hidden, nonlinearity=nl, negative_slope=LEAKY_SLOPE,
                        backend=backend)
        with torch.no_grad():
            m.weight_hh_l0.copy_(torch.eye(hidden))
            m.weight_ih_l0.normal_(0.0, IRNN_INPUT_STD)
            m.bias_ih_l0.zero_()
            m.bias_hh_l0.zero_()
        return m
    raise ValueError(f"unknown cell {cell!r}; choose from {BASE_CELLS + ('gru',)}")


class SeqModel(nn.Module):
    """Recurrent layer + linear readout of h_T (``last_only``) or of every h_t.

    Input [T, B, input_size]; output [B, n_out] or [T, B, n_out]."""

    def __init__(self, cell, input_size, hidden, n_out, last_only, backend="auto"):
        super().__init__()
        self.cell = cell
        self.rnn = make_recurrent(cell, input_size, hidden, backend)
        self.readout = nn.Linear(hidden, n_out)
        self.last_only = last_only

    def initial_state(self, h0):
        """The module's hx for a given h_0 (the LSTM's c_0 is zero)."""
        return (h0, torch.zeros_like(h0)) if self.cell == "lstm" else h0

    def forward(self, x, hx=None):
        out, _ = self.rnn(x, hx)
        return self.readout(out[-1] if self.last_only else out)


def recurrent_spectrum(module):
    """{'spectral_radius', 'sigma_max'} of W_hh in float64. For gated cells (W_hh of
    [G*H, H]) the radius is the largest over the G square gate blocks."""
    w = module.weight_hh_l0.detach().double().cpu()
    H = w.shape[1]
    sigma = float(torch.linalg.matrix_norm(w, ord=2))
    radius = max(float(torch.linalg.eigvals(w[k * H:(k + 1) * H]).abs().max())
                 for k in range(w.shape[0] // H))
    return {"spectral_radius": radius, "sigma_max": sigma}
