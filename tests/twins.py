"""rnnfast modules and their torch twins for the drop-in tests (tests/test_dropin.py).

Six cells: RNN (tanh, relu, leaky_relu), LSTM (with and without proj_size) and GRU.
The twin of a cell is the torch.nn module of the same class with the same state_dict;
leaky_relu has no torch.nn twin, so its twin is rnnfast's own reference loop
(backend='torch'). The cells and backends are those of the one case catalogue,
tests/cases.py.

Backends: numba and torch always; triton only when TRITON_INTERPRET=1 (CPU tensors then
run the Triton interpreter, so those problems stay tiny: T <= 3, H <= 4, B <= 2).
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast

from .cases import CELLS, module_backends, triton_interpreting

INTERPRET = triton_interpreting()
# The interpreter pass of tests/run.sh runs the Triton backend; the plain pass the rest.
BACKENDS = module_backends()

# One tiny problem size for every drop-in test (inside the interpreter's limits).
T, B, I, H = 3, 2, 3, 4
# Sequence lengths of the packed layout: unsorted, so the module must reorder.
LENGTHS = [2, 3]


def cell_params(cells=None):
    """pytest params over cells (every cell of the catalogue by default)."""
    return [pytest.param(c, id=c) for c in (cells or CELLS)]


def backend_params(backends=None):
    return [pytest.param(b, id=b) for b in (backends or BACKENDS)]


def options(cell, hidden_size=H, **kwargs):
    """(class name, constructor keywords) of a cell; ``kwargs`` add torch.nn options."""
    kind, opts = CELLS[cell]
    opts = dict(opts, **kwargs)
    if "proj_size" in opts and opts["proj_size"] is None:
        opts["proj_size"] = max(1, hidden_size // 2)
    return kind, opts


def state_size(cell, hidden_size=H):
    _, opts = options(cell, hidden_size)
    return opts.get("proj_size") or hidden_size


def torch_class(cell):
    """The torch.nn class whose behaviour (errors, autocast policy) the cell follows."""
    return getattr(nn, CELLS[cell][0])


def make_pair(cell, backend, dtype=torch.float64, input_size=I, hidden_size=H, seed=0,
              **kwargs):
    """(rnnfast module, twin) with identical weights, in ``dtype``."""
    kind, opts = options(cell, hidden_size, **kwargs)
    torch.manual_seed(seed)
    ours = getattr(rnnfast, kind)(input_size, hidden_size, backend=backend, **opts)
    if opts.get("nonlinearity") == "leaky_relu":
        twin = rnnfast.RNN(input_size, hidden_size, backend="torch", **opts)
    else:
        twin = getattr(nn, kind)(input_size, hidden_size, **opts)
    twin.load_state_dict(ours.state_dict())
    return ours.to(dtype), twin.to(dtype)


def initial_state(cell, module, batch, dtype=torch.float64, generator=None):
    """Random h0 (or (h0, c0) for LSTM) for ``module``, batched [L*D, batch, *]."""
    n = module.num_layers * (2 if module.bidirectional else 1)
    hsize = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    h0 = torch.randn(n, batch, hsize, dtype=dtype, generator=generator)
    if CELLS[cell][0] == "LSTM":
        return h0, torch.randn(n, batch, module.hidden_size, dtype=dtype, generator=generator)
    return h0


def as_list(state):
    if state is None:
        return []
    return list(state) if isinstance(state, (tuple, list)) else [state]


def as_state(tensors, cell):
    """Inverse of as_list for a cell's hidden state."""
    if not tensors:
        return None
    return tuple(tensors) if CELLS[cell][0] == "LSTM" else tensors[0]


def leaves(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


# Layouts: how the same time-major problem x [T, B, I], h0 [L*D, B, *] reaches the
# module. "batch_first" needs a module built with batch_first=True.
LAYOUTS = ("time_major", "batch_first", "packed", "unbatched")


def layout_kwargs(layout):
    return dict(batch_first=True) if layout == "batch_first" else {}


def run(module, x, state, layout="time_major"):
    """Forward ``module`` on x [T, B, I] and state (list of tensors, may be empty) in a
    layout; returns [output, h_n(, c_n)] as plain tensors (a PackedSequence's data)."""
    lstm = isinstance(module, (nn.LSTM, rnnfast.LSTM))
    hx = (tuple(state) if lstm else state[0]) if state else None
    if layout == "batch_first":
        y, hn = module(x.transpose(0, 1), hx)
    elif layout == "packed":
        y, hn = module(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False), hx)
    elif layout == "unbatched":
        hx = None if hx is None else (tuple(h[:, 0] for h in hx) if lstm else hx[:, 0])
        y, hn = module(x[:, 0], hx)
    else:
        y, hn = module(x, hx)
    y = y.data if isinstance(y, PackedSequence) else y
    return [y] + as_list(hn)


def problem(cell, module, layout="time_major", dtype=torch.float64, seed=1, with_state=True):
    """A random x [T, B, I] and state list for ``module`` (state empty if not with_state)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, module.input_size, dtype=dtype, generator=g)
    state = as_list(initial_state(cell, module, B, dtype, g)) if with_state else []
    return x, state


def upstream(outs, seed=2):
    """Fixed random upstream gradients, one per output, in the outputs' dtypes."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
