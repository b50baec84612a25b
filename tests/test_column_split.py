"""The column split of the recurrences (kernels/numba/rnn.py, lstm.py, gru.py;
config.COLUMN_SPLIT_MAX_ROWS): a batch of a few rows runs every step on several
threads, each a block of hidden units, with one parallel region per step. It must give
bitwise the row kernels' results (outputs, every gradient, and for one row the per-step
gradient norms; the row split of two or three rows sums those norms per thread first,
so there they agree to rounding), over every option that takes it, and the results
torch.nn gives."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast.kernels.numba import _host, config
from rnnfast.kernels.numba.tile import NV

from .tolerances import assert_close


def _panel(dtype):
    """The tile's panel width for dtype: the column split's unit of work."""
    return NV * config.ISA.lanes(torch.empty(0, dtype=dtype).element_size())


@pytest.fixture
def columns(monkeypatch, two_torch_threads):
    """Lets small layers take the column split (no weight-size floor) and records the
    split each recurrence launch ran with: a list of (kernel name, ncols)."""
    if _host.threads(2) < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(_host, "COLUMN_SPLIT_MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(_host, "PARALLEL_MIN_LAUNCH_MACS", 0)
    monkeypatch.setattr(_host, "busy", lambda: False)  # whatever else this machine runs
    seen = []
    launch = _host.launch

    def recorded(serial, parallel, nchunks, *args, **kwargs):
        name = serial.py_func.__name__
        if name in ("rnn_fwd_kernel", "lstm_fwd_kernel", "gru_fwd_kernel"):
            seen.append((name, args[-4 if name == "lstm_fwd_kernel" else -3]))
        elif name in ("rnn_bwd_kernel", "lstm_bwd_kernel", "gru_bwd_kernel"):
            seen.append((name, args[-1]))
        return launch(serial, parallel, nchunks, *args, **kwargs)

    monkeypatch.setattr(_host, "launch", recorded)
    return seen


def _run(m, x, hx, lengths, norms):
    """Outputs and every gradient of one fwd+bwd (and the per-step norms)."""
    m.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    hx = tuple(h.detach().clone().requires_grad_(True) for h in hx) if hx else None
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None \
        else x
    y, state = m(inp, hx if hx is None or len(hx) == 2 else hx[0])
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    y = y.data if lengths is not None else y
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    loss = (y * g).sum() + (h_n * 0.3).sum()
    if c_n is not None:
        loss = loss + (c_n * -0.7).sum()
    loss.backward()
    got = {"y": y, "h_n": h_n, "dx": x.grad}
    if c_n is not None:
        got["c_n"] = c_n
    got.update({f"d{k}": p.grad for k, p in m.named_parameters()})
    if hx:
        got.update({f"d{k}": h.grad for k, h in zip(("h0", "c0"), hx)})
    got = {k: v.detach().clone() for k, v in got.items()}
    if norms:
        got["norms"] = m.last_grad_norms.clone()
    return got


_CELLS = {"lstm": dict(cls=rnnfast.LSTM), "gru": dict(cls=rnnfast.GRU),
          "rnn_tanh": dict(cls=rnnfast.RNN), "rnn_relu": dict(cls=rnnfast.RNN,
                                                              nonlinearity="relu"),
          "rnn_leaky": dict(cls=rnnfast.RNN, nonlinearity="leaky_relu",
                            negative_slope=0.1)}


def _module(cell, *args, **kwargs):
    opts = dict(_CELLS[cell])
    cls = opts.pop("cls")
    return cls(*args, **opts, **kwargs)


@pytest.mark.parametrize("cell", list(_CELLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B", [1, 2, 3])
@pytest.mark.parametrize("panels", [2, 3])  # per gate: an even and an uneven split
def test_column_split_is_bitwise_the_row_split(columns, monkeypatch, cell, dtype, B, panels):
    torch.manual_seed(B * 10 + panels)
    kernel = cell.split("_")[0]
    H = panels * _panel(dtype)
    for T, bidirectional, with_hx, packed in [(1, False, False, False),
                                              (1, False, True, False),
                                              (2, True, False, True),
                                              (7, False, True, True),
                                              (7, True, True, False),
                                              (5, True, False, False)]:
        D = 2 if bidirectional else 1
        m = _module(cell, H, H, backend="numba", dtype=dtype, bidirectional=bidirectional)
        m.record_grad_norms = True
        x = torch.randn(T, B, H, dtype=dtype)
        hx = tuple(torch.randn(D, B, H, dtype=dtype) for _ in range(2 if cell == "lstm" else 1)) \
            if with_hx else None
        lengths = None
        if packed:
            lengths = torch.randint(1, T + 1, (B,))
            lengths[-1] = T  # unsorted, the longest last
        monkeypatch.setattr(_host, "COLUMN_SPLIT_MAX_ROWS", 0)
        columns.clear()
        rows = _run(m, x, hx, lengths, True)
        assert all(n == 1 for _, n in columns), columns
        monkeypatch.setattr(_host, "COLUMN_SPLIT_MAX_ROWS", 3)
        columns.clear()
        split = _run(m, x, hx, lengths, True)
        assert sorted({k for k, _ in columns}) == [f"{kernel}_bwd_kernel",
                                                   f"{kernel}_fwd_kernel"]
        assert all(n == 2 for _, n in columns), columns
        what = f"T={T} B={B} H={H} bidirectional={bidirectional} hx={with_hx} packed={packed}"
        for k in rows:
            if k == "norms" and B > 1:
                assert_close(f"{k} ({what})", split[k], rows[k])
            else:
                assert torch.equal(split[k], rows[k]), f"{k} differs ({what})"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_column_split_matches_torch_nn(two_torch_threads, monkeypatch, cell, dtype):
    """Under the shipped thresholds: a batch of one whose W_hh has 1 MiB or more in
    float32 (hidden 320 for the LSTM and the GRU, 512 for the Elman RNN) takes the
    split, and gives torch.nn's results."""
    if _host.threads(2) < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(_host, "PARALLEL_MIN_LAUNCH_MACS", config.PARALLEL_MIN_LAUNCH_MACS)
    monkeypatch.setattr(_host, "busy", lambda: True)
    kernel = cell.split("_")[0]
    H, T = (512 if kernel == "rnn" else 320), 20
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kernel] * H
    assert _host.recurrence_columns(1, H, G, 4, T) == 1  # a busy machine: the row split
    monkeypatch.setattr(_host, "busy", lambda: False)
    assert _host.recurrence_columns(1, H, G, 4, T) == 2
    assert _host.recurrence_columns(4, H, G, 4, T) == 1  # past COLUMN_SPLIT_MAX_ROWS
    assert _host.recurrence_columns(1, 128, 4 * 128, 4, T) == 1  # a W_hh that fits L2
    assert _host.recurrence_columns(1, 496, 496, 4, T) == 1  # under 1 MiB
    assert _host.recurrence_columns(1, H + 1, G + G // H, 4, T) == 1  # not whole panels
    splits = []
    launch = _host.launch

    def recorded(serial, parallel, nchunks, *args, **kwargs):
        if serial.py_func.__name__ == f"{kernel}_bwd_kernel":
            splits.append(args[-1])
        return launch(serial, parallel, nchunks, *args, **kwargs)

    monkeypatch.setattr(_host, "launch", recorded)
    torch.manual_seed(0)
    opts = {} if kernel != "rnn" else {"nonlinearity": cell.split("_")[1]}
    ref = getattr(torch.nn, kernel.upper())(H, H, dtype=dtype, **opts)
    m = _module(cell, H, H, backend="numba", dtype=dtype)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(T, 1, H, dtype=dtype)
    hx = tuple(torch.randn(1, 1, H, dtype=dtype) for _ in range(2 if cell == "lstm" else 1))
    got, want = _run(m, x, hx, None, False), _run(ref, x, hx, None, False)
    assert splits == [2]
    for k in want:
        assert_close(k, got[k], want[k])
