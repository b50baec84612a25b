"""Drop-in ``rnnfast.RNN`` and ``rnnfast.LSTM``.

They subclass ``torch.nn.RNNBase`` (not ``nn.RNN``/``nn.LSTM``), so parameter names,
shapes, ``reset_parameters``, ``state_dict``, ``.to()`` and ``extra_repr`` are exactly
torch's, while TorchDynamo traces them (it refuses to trace nn.RNN/nn.LSTM instances).
The forward composes layers and directions in Python over one custom op per layer and
direction (``rnnfast.ops``; in plain eager mode its autograd.Function twin, which runs
the same code without the op's dispatch cost), or over the reference loop for
``backend='torch'``.

From the module to a kernel: ``RNN.forward`` -> ``ops.rnn`` (``rnnfast::rnn_layer``) ->
``kernels.<backend>.rnn_fwd`` (likewise ``lstm_*``).
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import ops, reference
from .dispatch import RNNArgumentError, check_backend_name, resolve, supported_dtypes
from .kernels import ACTIVATIONS

NONLINEARITIES = tuple(ACTIVATIONS)


def _fail(msg):
    raise RNNArgumentError(msg)


def _packed_index(batch_sizes, device):
    """Rows of a [T * B] time-major padded batch (sorted batch order) that a
    PackedSequence's data holds, in its order, and the sorted lengths [B] (CPU int64)."""
    B = int(batch_sizes[0])
    mask = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)  # [T, B]
    idx = mask.flatten().nonzero().squeeze(1).to(device)
    return idx, mask.sum(0)


class _FusedRNNBase(nn.RNNBase):
    """Shared forward plumbing: input forms, hidden-state checks, layer composition."""

    def _init_extras(self, backend):
        check_backend_name(backend)
        self.backend = backend
        self.record_grad_norms = False
        self._grad_norm_probes = None

    # ------------------------------------------------------------ telemetry
    @property
    def last_grad_norms(self):
        """[num_layers * num_directions, T] float64 ||dL/dh_t|| of the last backward,
        when ``record_grad_norms`` was on for its forward (else None). Row
        ``layer * num_directions + direction``, column t = input position."""
        probes = self._grad_norm_probes
        if probes is None or any(p.grad is None for p in probes):
            return None
        return torch.stack([p.grad for p in probes])

    def _new_probes(self, T, device):
        n = self.num_layers * (2 if self.bidirectional else 1)
        self._grad_norm_probes = [
            torch.zeros(T, dtype=torch.float64, device=device, requires_grad=True)
            for _ in range(n)]
        return self._grad_norm_probes

    # ------------------------------------------------------------ checks
    def _state_size(self):
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _check_tensor(self, name, t, expected_shape, ref):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a Tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(expected_shape):
            _fail(f"Expected {name} size {tuple(expected_shape)}, got {list(t.shape)}")
        if t.dtype != ref.dtype:
            _fail(f"{name} dtype must match input dtype {ref.dtype}, got {t.dtype}")
        if t.device != ref.device:
            _fail(f"{name} must be on the input's device {ref.device}, got {t.device}")

    def _prepare_input(self, input):
        """-> (x [T, B, I] time-major, lengths or None, (PackedSequence, its rows in the
        padded batch) or None, is_batched)."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            data = input.data
            if data.dim() != 2:
                _fail(f"{name}: PackedSequence data must be 2-D [sum(lengths), input_size], "
                      f"got {data.dim()}-D")
            # One index_copy (and, in backward, one index_select) instead of
            # pad_packed_sequence's per-time-step copies: T small ops forward and back
            # made a packed batch ~1.8x the padded one at T=1000.
            idx, lengths = _packed_index(input.batch_sizes, data.device)
            T, B = len(input.batch_sizes), int(input.batch_sizes[0])
            x = data.new_zeros((T * B, data.shape[1])).index_copy(0, idx, data)
            x = x.view(T, B, -1)
            if input.unsorted_indices is not None:
                x = x.index_select(1, input.unsorted_indices)
                lengths = lengths.index_select(0, input.unsorted_indices.cpu())
            return x, lengths, (input, idx), True
        if not isinstance(input, torch.Tensor):
            _fail(f"{name}: input must be a Tensor or PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            _fail(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        if input.dim() == 2:
            return input.unsqueeze(1), None, None, False
        return (input.transpose(0, 1) if self.batch_first else input), None, None, True

    def _check_input(self, x):
        w = self._flat_weights[0]
        if x.size(-1) != self.input_size:
            _fail(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                  f"got {x.size(-1)}")
        if x.dtype != w.dtype:
            _fail(f"input dtype ({x.dtype}) does not match weight dtype ({w.dtype}). "
                  f"Convert input: input.to({w.dtype}), or convert model: model.to({x.dtype})")
        if x.device != w.device:
            _fail(f"input is on {x.device} but the weights are on {w.device}")
        if x.shape[0] == 0:
            _fail("input must have at least one time step, got sequence length 0")

    def _auto_triton_or_reference(self):
        from .kernels.triton.config import MAX_WIDTH
        widest = max(self.hidden_size, self.proj_size)
        if widest <= MAX_WIDTH:
            return "triton"
        warnings.warn(f"rnnfast: the Triton kernels run widths up to {MAX_WIDTH}, this "
                      f"module has {widest}; backend='auto' falls back to the torch "
                      f"reference loop", stacklevel=4)
        return "torch"

    def _resolve_backend(self, x):
        backend = resolve(self.backend, x.device)
        if backend == "triton" and self.backend == "auto":
            backend = self._auto_triton_or_reference()
        dtypes = supported_dtypes(backend, x.device)
        if dtypes is not None and x.dtype not in dtypes:
            _fail(f"backend '{backend}' on {x.device.type} supports dtypes "
                  f"{[str(d) for d in dtypes]}, got {x.dtype}")
        return backend

    def _initial_state(self, name, hx, x, size, is_batched):
        n = self.num_layers * (2 if self.bidirectional else 1)
        B = x.shape[1]
        if hx is None:
            return x.new_zeros((n, B, size))
        if not isinstance(hx, torch.Tensor):
            _fail(f"{name} must be a Tensor, got {type(hx).__name__}")
        want = 3 if is_batched else 2
        if hx.dim() != want:
            form = "batched 3-D" if is_batched else "unbatched 2-D"
            _fail(f"For {form} input, {name} should also be {want}-D but got {hx.dim()}-D tensor")
        if not is_batched:
            hx = hx.unsqueeze(1)
        self._check_tensor(name, hx, (n, B, size), x)
        return hx

    def _finish_output(self, y, packed, is_batched):
        if packed is not None:
            packed, idx = packed
            # Back to the PackedSequence's own (sorted) batch order, reusing its indices.
            if packed.sorted_indices is not None:
                y = y.index_select(1, packed.sorted_indices)
            T, B, P = y.shape
            data = y.reshape(T * B, P).index_select(0, idx)
            return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                  packed.unsorted_indices)
        if not is_batched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y

    # ------------------------------------------------------------ composition
    def _layer_weights(self, idx):
        n = len(self._flat_weights) // (self.num_layers * (2 if self.bidirectional else 1))
        w = self._flat_weights[idx * n:(idx + 1) * n]
        w_ih, w_hh = w[0], w[1]
        b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
        w_hr = w[-1] if self.proj_size > 0 else None
        return w_ih, w_hh, b_ih, b_hh, w_hr

    def _run_layers(self, x, h0, c0, lengths, backend):
        D = 2 if self.bidirectional else 1
        probes = self._new_probes(x.shape[0], x.device) if self.record_grad_norms else None
        if probes is None:
            self._grad_norm_probes = None
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = layer * D + d
                probe = probes[idx] if probes is not None else None
                y, h, c = self._direction(x, idx, h0[idx], None if c0 is None else c0[idx],
                                          lengths, d == 1, backend, probe)
                outs.append(y)
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if D == 1 else torch.cat(outs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(h_n), (torch.stack(c_n) if c0 is not None else None)


class RNN(_FusedRNNBase):
    r"""Drop-in for :class:`torch.nn.RNN`: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

    Same arguments, defaults, parameters and return values as torch.nn.RNN, plus:

    * ``nonlinearity='leaky_relu'`` with keyword ``negative_slope`` (default 0.01, >= 0);
    * ``backend='auto' | 'numba' | 'triton' | 'torch'`` (see :mod:`rnnfast.dispatch`).

    Input: [T, B, I] (or [B, T, I] with batch_first), unbatched [T, I], or a
    PackedSequence. Returns (output, h_n) as torch.nn.RNN does.
    """

    def __init__(self, *args, negative_slope=0.01, backend="auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. "
                             f"Select from {NONLINEARITIES}.")
        if nonlinearity == "leaky_relu" and not negative_slope >= 0:
            raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
        mode = "RNN_RELU" if nonlinearity == "relu" else "RNN_TANH"
        super().__init__(mode, *args, **kwargs)
        self.nonlinearity = nonlinearity
        self.negative_slope = float(negative_slope)
        self._init_extras(backend)

    def extra_repr(self):
        s = super().extra_repr()
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        if self.nonlinearity == "leaky_relu":
            s += f", negative_slope={self.negative_slope}"
        return s + (f", backend={self.backend}" if self.backend != "auto" else "")

    def _direction(self, x, idx, h0, c0, lengths, reverse, backend, probe):
        w_ih, w_hh, b_ih, b_hh, _ = self._layer_weights(idx)
        if backend == "torch":
            y, h = reference.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse,
                                       self.nonlinearity, self.negative_slope, probe)
        else:
            y, h = ops.rnn(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse,
                                 ACTIVATIONS[self.nonlinearity], self.negative_slope,
                                 backend, probe)
        return y, h, None

    def forward(self, input, hx=None):
        self._update_flat_weights()
        x, lengths, packed, is_batched = self._prepare_input(input)
        self._check_input(x)
        backend = self._resolve_backend(x)
        h0 = self._initial_state("hx", hx, x, self.hidden_size, is_batched)
        y, h_n, _ = self._run_layers(x, h0, None, lengths, backend)
        return self._finish_output(y, packed, is_batched), (h_n if is_batched else h_n.squeeze(1))


class LSTM(_FusedRNNBase):
    r"""Drop-in for :class:`torch.nn.LSTM` (gate order i, f, g, o; optional ``proj_size``).

    Same arguments, defaults, parameters and return values as torch.nn.LSTM, plus
    ``backend='auto' | 'numba' | 'triton' | 'torch'``. Returns (output, (h_n, c_n)).
    """

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._init_extras(backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", backend={self.backend}" if self.backend != "auto" else "")

    def _direction(self, x, idx, h0, c0, lengths, reverse, backend, probe):
        w_ih, w_hh, b_ih, b_hh, w_hr = self._layer_weights(idx)
        if backend == "torch":
            return reference.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths,
                                        reverse, probe)
        y, h, c, _, _ = ops.lstm(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths,
                                       reverse, backend, probe)
        return y, h, c

    def forward(self, input, hx=None):
        self._update_flat_weights()
        x, lengths, packed, is_batched = self._prepare_input(input)
        self._check_input(x)
        backend = self._resolve_backend(x)
        if hx is None:
            h0 = c0 = None
        elif not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            _fail(f"LSTM: hx must be a tuple (h_0, c_0), got {type(hx).__name__}"
                  + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        else:
            h0, c0 = hx
        h0 = self._initial_state("hx[0]", h0, x, self._state_size(), is_batched)
        c0 = self._initial_state("hx[1]", c0, x, self.hidden_size, is_batched)
        y, h_n, c_n = self._run_layers(x, h0, c0, lengths, backend)
        if not is_batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return self._finish_output(y, packed, is_batched), (h_n, c_n)
