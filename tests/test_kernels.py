"""The kernel contract, on every kernel backend that runs here (numba; Triton under
TRITON_INTERPRET=1), against autograd through the reference loop: y, h_n (, c_n)
forward; dxp, dh0 (, dc0), the GRU's recurrent gradient and the per-step norms
||dL/dh_t|| backward, with reverse time and ragged lengths. (The reference loop itself is
checked against torch.nn in test_modules.)"""

import pytest
import torch

from rnnfast import dispatch, reference
from rnnfast.kernels import RELU

from .cases import CELLS, LEAKY_SLOPE, activation_code, kernel_backends, kernel_problem, shapes_for
from .tolerances import assert_close

CASES = [(be, cell, B, T, H, dt, rev, lk)
         for be in kernel_backends() for cell in CELLS for (B, T, H) in shapes_for(be)
         for dt in (torch.float32, torch.float64) for rev in (False, True)
         for lk in ("full", "ragged")]


def _id(c):
    be, cell, B, T, H, dt, rev, lk = c
    return f"{cell}-B{B}-T{T}-H{H}-{str(dt)[6:]}-{be}{'-rev' if rev else ''}-{lk}"


def _previous_states(y, h0, lengths, reverse):
    """h_{t-1} at every step in processing order, [T, B, P] (only active steps matter)."""
    T = y.shape[0]
    prev = torch.empty_like(y)
    for t in range(T):
        s = t + 1 if reverse else t - 1
        prev[t] = y[s] if 0 <= s < T else h0
        if reverse and lengths is not None:  # a reversed row starts at its own last step
            first = (lengths - 1 == t).unsqueeze(1)
            prev[t] = torch.where(first, h0, prev[t])
    return prev


def _reference(cell, p, reverse, dy, dstates):
    """Autograd through the reference loop: outputs, input grads, per-step norms."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    T = p["xp"].shape[0]
    probe = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    if cell.startswith("lstm"):
        outs = reference.lstm_recurrence(leaves["xp"], leaves["w_hh"], leaves.get("w_hr"),
                                         leaves["h0"], leaves["c0"], p["lengths"], reverse,
                                         probe)
    elif cell == "gru":
        outs = reference.gru_recurrence(leaves["xp"], leaves["w_hh"], leaves["b_hn"],
                                        leaves["h0"], p["lengths"], reverse, probe)
    else:
        outs = reference.rnn_recurrence(leaves["xp"], leaves["w_hh"], leaves["h0"],
                                        p["lengths"], reverse, cell, LEAKY_SLOPE, probe)
    loss = (outs[0] * dy).sum() + sum((o * d).sum() for o, d in zip(outs[1:], dstates))
    loss.backward()
    return outs, {k: v.grad for k, v in leaves.items()}, probe.grad


@pytest.mark.parametrize("backend,cell,B,T,H,dtype,reverse,lengths_kind", CASES,
                         ids=[_id(c) for c in CASES])
def test_contract(backend, cell, B, T, H, dtype, reverse, lengths_kind):
    k = dispatch.kernel_module(backend)
    p = kernel_problem(cell, B, T, H, dtype, lengths_kind, seed=B * 7 + T * 3 + H)
    g = torch.Generator().manual_seed(99)
    if cell.startswith("lstm"):
        y, h_n, c_n, gates, cs = k.lstm_fwd(p["xp"], p["w_hh"], p["w_hr"], p["h0"], p["c0"],
                                            p["lengths"], reverse)
        outs = (y, h_n, c_n)
    elif cell == "gru":
        y, h_n, gates = k.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"], p["lengths"],
                                  reverse)
        outs = (y, h_n)
    else:
        outs = k.rnn_fwd(p["xp"], p["w_hh"], p["h0"], p["lengths"], reverse,
                         activation_code(cell), LEAKY_SLOPE)
    dy = torch.randn(outs[0].shape, generator=g, dtype=dtype)
    dstates = [torch.randn(o.shape, generator=g, dtype=dtype) for o in outs[1:]]
    ref_outs, ref_grads, ref_norms = _reference(cell, p, reverse, dy, dstates)
    for name, a, b in zip(["y", "h_n", "c_n"], outs, ref_outs):
        assert_close(name, a, b)
    if cell.startswith("lstm"):
        dxp, dh0, dc0, dhs, norms = k.lstm_bwd(dy, *dstates, gates, cs, p["c0"], p["w_hh"],
                                               p["w_hr"], p["lengths"], reverse)
        assert_close("dc0", dc0, ref_grads["c0"])
        if p["w_hr"] is None:
            assert dhs.numel() == 0
        else:
            assert dhs.shape == outs[0].shape
    elif cell == "gru":
        dxp, dgh, dh0, norms = k.gru_bwd(dy, dstates[0], outs[0], gates, p["h0"], p["w_hh"],
                                         p["lengths"], reverse)
        # dgh is the gradient of h_{t-1} W_hh^T + b_hh: its sums are dW_hh and db_hn.
        prev = _previous_states(outs[0], p["h0"], p["lengths"], reverse)
        assert_close("dW_hh from dgh", torch.einsum("tbg,tbp->gp", dgh, prev),
                     ref_grads["w_hh"])
        H_ = p["b_hn"].shape[0]
        assert_close("db_hn from dgh", dgh[..., 2 * H_:].sum((0, 1)), ref_grads["b_hn"])
    else:
        dxp, dh0, norms = k.rnn_bwd(dy, dstates[0], outs[0], p["w_hh"], p["lengths"],
                                    reverse, activation_code(cell), LEAKY_SLOPE)
    assert_close("dxp", dxp, ref_grads["xp"])
    assert_close("dh0", dh0, ref_grads["h0"])
    assert norms.dtype == torch.float64 and norms.shape == (T,)
    assert_close("norms", norms, ref_norms, dtype)


PACKED_CASES = [(be, cell, B, T, H, dt, rev)
                for be in kernel_backends() if dispatch.kernel_module(be).PACKED_ROWS
                for cell in CELLS for (B, T, H) in ((1, 1, 1), (5, 9, 37), (33, 40, 100))
                for dt in (torch.float32, torch.float64) for rev in (False, True)]


@pytest.mark.parametrize("backend,cell,B,T,H,dtype,reverse", PACKED_CASES,
                         ids=[_id((*c, "packed")) for c in PACKED_CASES])
def test_packed_rows_launchers(backend, cell, B, T, H, dtype, reverse):
    """A PACKED_ROWS backend's launchers on a PackedSequence's rows (``offsets=``) give,
    bitwise, the active rows of what they give on the padded batch with the same
    (sorted) lengths: every output of the forward and the BPTT, and the norms."""
    k = dispatch.kernel_module(backend)
    p = kernel_problem(cell, B, T, H, dtype, "ragged", seed=B * 5 + T + H)
    lengths = p["lengths"].sort(descending=True).values
    mask = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)  # [T, B]
    bs = mask.sum(1)
    offsets = torch.cumsum(bs, 0) - bs

    def rows(t):
        return t[mask]

    g = torch.Generator().manual_seed(7)
    dy = torch.randn(T, B, p["h0"].shape[1], generator=g, dtype=dtype)
    dh_n = torch.randn(p["h0"].shape, generator=g, dtype=dtype)
    outs = []
    for packed in (False, True):
        kw = dict(offsets=offsets) if packed else {}
        xp = rows(p["xp"]) if packed else p["xp"]
        d = rows(dy) if packed else dy
        if cell.startswith("lstm"):
            dc_n = torch.ones_like(p["c0"])
            y, h_n, c_n, gates, cs = k.lstm_fwd(xp, p["w_hh"], p["w_hr"], p["h0"], p["c0"],
                                                lengths, reverse, **kw)
            bwd = k.lstm_bwd(d, dh_n, dc_n, gates, cs, p["c0"], p["w_hh"], p["w_hr"],
                             lengths, reverse, **kw)
            res = [y, gates, cs, bwd[0], bwd[3]], [h_n, c_n, *bwd[1:3], bwd[4]]
        elif cell == "gru":
            y, h_n, gates = k.gru_fwd(xp, p["w_hh"], p["b_hn"], p["h0"], lengths, reverse,
                                      **kw)
            bwd = k.gru_bwd(d, dh_n, y, gates, p["h0"], p["w_hh"], lengths, reverse, **kw)
            res = [y, gates, bwd[0], bwd[1]], [h_n, bwd[2], bwd[3]]
        else:
            y, h_n = k.rnn_fwd(xp, p["w_hh"], p["h0"], lengths, reverse,
                               activation_code(cell), LEAKY_SLOPE, **kw)
            bwd = k.rnn_bwd(d, dh_n, y, p["w_hh"], lengths, reverse, activation_code(cell),
                            LEAKY_SLOPE, **kw)
            res = [y, bwd[0]], [h_n, *bwd[1:]]
        row_outs, other = res
        if not packed:
            row_outs = [rows(t) if t.numel() else t for t in row_outs]
        outs.append(row_outs + other)
    for i, (a, b) in enumerate(zip(*outs)):
        assert a.shape == b.shape and torch.equal(a, b), f"output {i} of {cell}"


@pytest.mark.parametrize("backend", [b for b in kernel_backends()
                                     if dispatch.kernel_module(b).PACKED_ROWS])
def test_packed_rows_launcher_errors(backend):
    """Packed rows that do not match their lengths and offsets raise ValueError naming
    the launcher and the expected values, before any kernel runs."""
    k = dispatch.kernel_module(backend)
    H = 3
    w, h0 = torch.randn(H, H), torch.zeros(2, H)
    lengths = torch.tensor([3, 1])
    good = torch.tensor([0, 2, 3])
    with pytest.raises(ValueError, match=r"rnn_fwd\[numba\]: packed rows: 3 rows and "
                                         r"offsets \[0, 2, 3\] do not match lengths "
                                         r"\[3, 1\] \(4 rows"):
        k.rnn_fwd(torch.randn(3, H), w, h0, lengths, offsets=good)
    with pytest.raises(ValueError, match=r"offsets \[0, 1, 3\] do not match"):
        k.rnn_fwd(torch.randn(4, H), w, h0, lengths, offsets=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match=r"lengths sorted non-increasing"):
        k.rnn_fwd(torch.randn(4, H), w, h0, torch.tensor([1, 3]), offsets=good)
    with pytest.raises(ValueError, match=r"rnn_bwd\[numba\]: packed rows"):
        k.rnn_bwd(torch.randn(3, H), h0, torch.randn(3, H), w, lengths, offsets=good)
    y, _ = k.rnn_fwd(torch.randn(4, H), w, h0, lengths, offsets=good)
    assert y.shape == (4, H)
    good[1] = 1  # modified in place after passing: checked again, not remembered
    with pytest.raises(ValueError, match=r"offsets \[0, 1, 3\] do not match"):
        k.rnn_bwd(torch.randn(4, H), h0, y, w, lengths, offsets=good)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_batch_of_three_splits_over_two_threads(cell, monkeypatch, two_torch_threads):
    """A batch of three runs its recurrences as 2 + 1 rows on two threads
    (kernels/numba/_host.recurrence_chunks rounds up); the split changes no bit of any
    output or gradient against one thread (packed, ragged, both directions)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    import rnnfast
    from rnnfast.kernels.numba import _host
    if _host.threads(2) < 2:
        pytest.skip("numba has one thread here")
    H = 128
    assert _host.recurrence_chunks(3, 3 * H * H, 7) == 2
    torch.manual_seed(3)
    cls = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}[cell]
    m = cls(H, H, bidirectional=True, backend="numba")
    x = torch.randn(7, 3, H)
    lengths = torch.tensor([7, 3, 5])

    def run():
        xr = x.clone().requires_grad_(True)
        y, state = m(pack_padded_sequence(xr, lengths, enforce_sorted=False))
        h = state[0] if isinstance(state, tuple) else state
        (y.data.square().sum() + h.sum()).backward()
        out = [y.data, h, xr.grad] + [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        return out

    split = run()
    monkeypatch.setattr(_host, "recurrence_chunks", lambda *args: 1)
    for a, b in zip(split, run()):
        assert torch.equal(a, b)



def test_launch_puts_numba_thread_count_back(monkeypatch, two_torch_threads):
    """A launch sets numba's thread count (the calling thread's own, which the user's
    parallel numba code runs on too) for its kernel only: a count of 1 set before a call
    whose kernels run on two threads reads 1 again afterwards."""
    import numba

    import rnnfast
    from rnnfast.kernels.numba import _host
    if _host.threads(2) < 2:
        pytest.skip("numba has one thread here")
    seen = []
    launch = _host.launch

    def recorded(serial, parallel, nchunks, *args, threads=None):
        seen.append(numba.get_num_threads())
        out = launch(serial, parallel, nchunks, *args, threads=threads)
        seen.append((threads or nchunks, numba.get_num_threads()))
        return out

    monkeypatch.setattr(_host, "launch", recorded)
    m = rnnfast.LSTM(16, 256, backend="numba")
    x = torch.randn(40, 8, 16, requires_grad=True)
    numba.set_num_threads(1)
    try:
        y, _ = m(x)
        y.sum().backward()
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert any(isinstance(s, tuple) and s[0] > 1 for s in seen), seen  # a parallel launch
    assert all(s == 1 or s[1] == 1 for s in seen), seen


_THREADS_SCRIPT = """
import torch, rnnfast
torch.set_num_threads(3)
m = rnnfast.LSTM(16, 256, backend="numba")
y, _ = m(torch.randn(40, 8, 16))  # a batch-parallel launch: numba's thread pool starts
y.sum().backward()
print(torch.get_num_threads())
"""


def test_first_parallel_launch_keeps_torch_thread_count():
    """numba's OpenMP layer sets the OpenMP thread count to NUMBA_NUM_THREADS as it starts
    (the first parallel launch in a process); where torch shares that libgomp, the count
    the user gave torch.set_num_threads changed with it (3 -> 4). A new process, so that
    the launch is its first."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_NUM_THREADS="4")
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, text=True,
                         capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "3", out.stdout


def test_short_launches_run_serial(monkeypatch, two_torch_threads):
    """A recurrence splits its batch across threads only where the whole launch has
    config.PARALLEL_MIN_LAUNCH_MACS multiply-adds (the suite itself drops that threshold:
    conftest.split_short_recurrences): a step-at-a-time call runs serial however wide
    its step; the same step over a long sequence splits."""
    from rnnfast.kernels.numba import _host, config
    if _host.threads(2) < 2:
        pytest.skip("numba has one thread here")
    monkeypatch.setattr(_host, "PARALLEL_MIN_LAUNCH_MACS", config.PARALLEL_MIN_LAUNCH_MACS)
    B, H, G = 16, 128, 4 * 128
    step = B * H * G  # an LSTM step's product: past PARALLEL_MIN_MACS
    assert step >= config.PARALLEL_MIN_MACS
    assert _host.recurrence_chunks(B, step, 1) == 1
    assert _host.recurrence_chunks(B, step, 100) == 2
    short = -(-config.PARALLEL_MIN_LAUNCH_MACS // step)  # the fewest steps that split
    assert _host.recurrence_chunks(B, step, short - 1) == 1
    assert _host.recurrence_chunks(B, step, short) == 2
    assert _host.recurrence_chunks(B, config.PARALLEL_MIN_MACS - 1, 10**6) == 1

    import rnnfast
    calls = []
    launch = _host.launch

    def recorded(serial, parallel, nchunks, *args, **kwargs):
        if serial.py_func.__name__ == "lstm_fwd_kernel":  # not the layer GEMMs' choice
            calls.append(nchunks)
        return launch(serial, parallel, nchunks, *args, **kwargs)

    monkeypatch.setattr(_host, "launch", recorded)
    m = rnnfast.LSTM(H, H, backend="numba")
    with torch.no_grad():
        m(torch.randn(1, B, H))
    assert calls == [1]  # serial
    calls.clear()
    with torch.no_grad():
        m(torch.randn(short, B, H))
    assert calls == [2]


@pytest.mark.slow
def test_serial_and_parallel_kernels_share_their_helpers(two_torch_threads, monkeypatch):
    """The serial kernels and their parallel twins call each big compiled helper (the
    recurrences' row loops, the weight-gradient part) with the same argument types, so
    each helper compiles once per dtype: a literal 0 for a first row or part (numba
    types it Literal[int](0)) or a prange index (unsigned) compiled a second copy, ~4-9 s
    of a cell's cold compile (BENCHMARKS.md, 2026-12-06). Kernels loaded from the cache
    leave their helpers' dispatchers empty, so each launch here runs a fresh, uncached
    copy of its kernel, whose compile asks the helpers for its signatures (a helper's
    own helpers, such as _gemm_tn, come linked from its cache entry: not seen here).
    ~50 s: the parallel kernels compile again."""
    import numba
    from numba.core import types

    import rnnfast
    from rnnfast.kernels.numba import _host, gemm, gru, lstm, rnn
    from rnnfast.kernels.numba.config import JIT, JIT_PARALLEL
    if _host.threads(2) < 2:
        pytest.skip("numba has one thread here")
    fresh = {}
    launch = _host.launch

    def fresh_launch(serial, parallel, nchunks, *args, threads=None):
        def copy(k, opts):
            if k not in fresh:
                fresh[k] = numba.njit(**dict(opts, cache=False))(k.py_func)
            return fresh[k]
        return launch(copy(serial, JIT), copy(parallel, JIT_PARALLEL), nchunks, *args,
                      threads=threads)

    monkeypatch.setattr(_host, "launch", fresh_launch)
    torch.manual_seed(0)
    for cls in (rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU):
        m = cls(64, 64, backend="numba")
        # B = 1: the serial kernels; B = 8, T = 50: the parallel recurrences and
        # weight gradients
        for T, B in ((3, 1), (50, 8)):
            x = torch.randn(T, B, 64, requires_grad=True)
            y, _ = m(x)
            y.sum().backward()
    helpers = (rnn._rnn_fwd_rows, rnn._rnn_bwd_rows, lstm._lstm_fwd_rows,
               lstm._lstm_bwd_rows, gru._gru_fwd_rows, gru._gru_bwd_rows,
               gemm._layer_grads_part)
    for fn in helpers:
        sigs = [sig for sig in fn.signatures if sig[0].dtype == types.float32]
        # (float64 ones may come from other tests in this process: not counted)
        assert len(sigs) == 1, (fn.py_func.__name__, sigs)
        for sig in fn.signatures:
            odd = [t for t in sig if isinstance(t, types.Literal)
                   or (isinstance(t, types.Integer) and not t.signed)]
            assert not odd, (fn.py_func.__name__, odd)

LAYER_CASES = [  # (T, B, I, H, proj_size, lengths, reverse, bias)
    (5, 3, 7, 37, 0, None, False, True),
    (5, 3, 7, 37, 0, None, True, True),
    (4, 6, 5, 16, 0, [4, 2, 3, 1, 4, 4], False, True),
    (4, 6, 5, 16, 9, [4, 4, 3, 2, 1, 1], True, False),
    (1, 1, 1, 1, 0, None, False, True),
    (6, 33, 100, 100, 0, None, False, True),
    (50, 16, 128, 128, 0, [50] * 8 + [20] * 8, False, True),  # a parallel projection
]


@pytest.mark.parametrize("provider", ["numba", "torch"])
@pytest.mark.parametrize("threads", [1, 2])
def test_layer_forward_launchers(provider, threads, monkeypatch):
    """The numba backend's one-call layer forwards (kernels/numba: rnn_layer_fwd,
    lstm_layer_fwd, gru_layer_fwd: the projection inside the recurrence kernel's call)
    give bitwise the outputs of the projection launcher followed by the recurrence
    launcher, for every cell, with and without train, both layer-GEMM providers, one and
    two threads, ragged lengths, reverse time, a projected LSTM and no bias."""
    from rnnfast.kernels import numba as nk
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", provider)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    try:
        for T, B, I, H, P, lens, rev, bias in LAYER_CASES:
            L = torch.tensor(lens) if lens else None
            for dt in (torch.float32, torch.float64):
                def r(*s, scale=1.0):
                    return torch.randn(*s, generator=g, dtype=dt) * scale
                x = r(T, B, I)
                for cell, k in (("rnn", 1), ("lstm", 4), ("gru", 3)):
                    G = k * H
                    Ph = (P or H) if cell == "lstm" else H
                    w_ih, w_hh, h0 = r(G, I, scale=0.3), r(G, Ph, scale=0.3), r(B, Ph)
                    b_ih, b_hh = (r(G), r(G)) if bias else (None, None)
                    for train in (True, False):
                        if cell == "rnn":
                            xp = nk.project(x, w_ih, b_ih + b_hh if bias else None)
                            a = nk.rnn_fwd(xp, w_hh, h0, L, rev, RELU, 0.01, reuse_xp=True)
                            b = nk.rnn_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, L, rev, RELU,
                                                 0.01, train=train)
                        elif cell == "lstm":
                            w_hr, c0 = (r(P, H) if P else None), r(B, H)
                            xp = nk.project(x, w_ih, b_ih + b_hh if bias else None)
                            a = nk.lstm_fwd(xp, w_hh, w_hr, h0, c0, L, rev, reuse_xp=True,
                                            train=train)
                            b = nk.lstm_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, L,
                                                  rev, train=train)
                        else:
                            bb, b_hn = ((torch.cat([b_ih[:2 * H] + b_hh[:2 * H],
                                                    b_ih[2 * H:]]), b_hh[2 * H:])
                                        if bias else (None, None))
                            a = nk.gru_fwd(nk.project(x, w_ih, bb), w_hh, b_hn, h0, L, rev,
                                           train=train)
                            b = nk.gru_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, L, rev,
                                                 train=train)
                        for i, (u, v) in enumerate(zip(a, b)):
                            assert u.shape == v.shape and torch.equal(u, v), \
                                f"{cell} output {i} T={T} B={B} H={H} {dt} train={train}"
    finally:
        torch.set_num_threads(old)


BACKWARD_CASES = [  # (T, B, I, H, reverse, bias, need_dx): padded, no lengths
    (5, 3, 7, 37, False, True, True),
    (5, 3, 7, 37, True, False, True),
    (1, 1, 1, 1, False, True, False),
    (6, 33, 100, 100, True, True, True),  # batch-parallel BPTT
    (50, 16, 128, 128, False, True, True),  # parallel layer GEMMs
]


@pytest.mark.parametrize("threads", [1, 2])
def test_layer_backward_launchers(threads, monkeypatch):
    """The numba backend's one-call layer backwards (rnn_layer_bwd, lstm_layer_bwd,
    gru_layer_bwd: the BPTT and the layer GEMMs in one launcher) give bitwise the
    results of the BPTT launcher followed by layer_grads, every cell, float32 and
    float64, both directions, with and without bias and dx. The layer GEMMs are held
    to rnnfast's tile: where auto's calibration hands them to torch.mm (on SSE2, say),
    the launchers decline (the next test)."""
    from rnnfast.kernels import numba as nk
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", "numba")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(2)
    try:
        for T, B, I, H, rev, bias, need_dx in BACKWARD_CASES:
            for dt in (torch.float32, torch.float64):
                def r(*s, scale=1.0):
                    return torch.randn(*s, generator=g, dtype=dt) * scale
                x, dy, dh_n = r(T, B, I), r(T, B, H), r(B, H)
                for cell, k in (("rnn", 1), ("lstm", 4), ("gru", 3)):
                    G = k * H
                    w_ih, w_hh, h0 = r(G, I, scale=0.3), r(G, H, scale=0.3), r(B, H)
                    b_ih, b_hh = (r(G), r(G)) if bias else (None, None)
                    if cell == "rnn":
                        y, _ = nk.rnn_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, None, rev,
                                                RELU, 0.01)
                        dxp, dh0, norms = nk.rnn_bwd(dy, dh_n, y, w_hh, None, rev, RELU,
                                                     0.01)
                        a = (*nk.layer_grads(dxp, x, y, h0, w_ih, None, rev, bias, need_dx),
                             dh0, norms)
                        b = nk.rnn_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y, rev, RELU,
                                             0.01, bias, need_dx)
                    elif cell == "lstm":
                        c0, dc_n = r(B, H), r(B, H)
                        y, _, _, gates, cs = nk.lstm_layer_fwd(x, w_ih, b_ih, b_hh, w_hh,
                                                               None, h0, c0, None, rev)
                        dxp, dh0, dc0, _, norms = nk.lstm_bwd(dy, dh_n, dc_n, gates, cs, c0,
                                                              w_hh, None, None, rev)
                        a = (*nk.layer_grads(dxp, x, y, h0, w_ih, None, rev, bias, need_dx),
                             dh0, dc0, norms)
                        b = nk.lstm_layer_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y,
                                              gates, cs, rev, bias, need_dx)
                    else:
                        y, _, gates = nk.gru_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, None,
                                                       rev)
                        dxp, dgh, dh0, norms = nk.gru_bwd(dy, dh_n, y, gates, h0, w_hh,
                                                          None, rev)
                        a = (*nk.layer_grads(dxp, x, y, h0, w_ih, None, rev, bias, need_dx,
                                             dgh=dgh), dh0, norms)
                        b = nk.gru_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y, gates, rev,
                                             bias, need_dx)
                    assert b is not None and len(a) == len(b)
                    for i, (u, v) in enumerate(zip(a, b)):
                        assert u.shape == v.shape and torch.equal(u, v), \
                            f"{cell} result {i} T={T} B={B} H={H} {dt} reverse={rev}"
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2])
def test_backward_without_dh0(threads, monkeypatch):
    """need_dh0=False (h_0 needs no gradient): the numba BPTT skips its last step's
    product dz @ W_hh and returns dh0 as [0, P]; every other result bitwise as with
    need_dh0=True, for the BPTT launchers (padded, packed lengths) and the one-call
    layer backwards, every cell, float32 and float64, both directions, serial and
    batch-parallel, T = 1 (no product at all, no W_hh panels) included."""
    from rnnfast.kernels import numba as nk
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", "numba")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(3)
    try:
        for T, B, I, H, rev, bias, need_dx in BACKWARD_CASES + [(1, 40, 9, 64, True, True,
                                                                 True)]:
            for dt in (torch.float32, torch.float64):
                def r(*s, scale=1.0):
                    return torch.randn(*s, generator=g, dtype=dt) * scale
                x, dy, dh_n = r(T, B, I), r(T, B, H), r(B, H)
                lengths = torch.linspace(T, 1, B).round().long() if B > 1 else None
                for cell, k in (("rnn", 1), ("lstm", 4), ("gru", 3)):
                    G = k * H
                    w_ih, w_hh, h0 = r(G, I, scale=0.3), r(G, H, scale=0.3), r(B, H)
                    b_ih, b_hh = (r(G), r(G)) if bias else (None, None)
                    c0, dc_n = r(B, H), r(B, H)  # the LSTM's
                    runs = []
                    for need in (True, False):
                        if cell == "rnn":
                            y, _ = nk.rnn_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, None, rev,
                                                    RELU, 0.01)
                            y_l, _ = nk.rnn_fwd(nk.project(x, w_ih, b_ih), w_hh, h0,
                                                lengths, rev, RELU, 0.01)
                            runs.append((
                                nk.rnn_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y, rev, RELU,
                                                 0.01, bias, need_dx, need),
                                nk.rnn_bwd(dy, dh_n, y_l, w_hh, lengths, rev, RELU, 0.01,
                                           need_dh0=need)))
                        elif cell == "lstm":
                            y, _, _, gates, cs = nk.lstm_layer_fwd(
                                x, w_ih, b_ih, b_hh, w_hh, None, h0, c0, None, rev)
                            runs.append((
                                nk.lstm_layer_bwd(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y,
                                                  gates, cs, rev, bias, need_dx, need),
                                nk.lstm_bwd(dy, dh_n, dc_n, gates, cs, c0, w_hh, None,
                                            lengths, rev, need_dh0=need)))
                        else:
                            y, _, gates = nk.gru_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0,
                                                           None, rev)
                            runs.append((
                                nk.gru_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y, gates, rev,
                                                 bias, need_dx, need),
                                nk.gru_bwd(dy, dh_n, y, gates, h0, w_hh, lengths, rev,
                                           need_dh0=need)))
                    for with_dh0, without in zip(*runs):
                        assert with_dh0 is not None and len(with_dh0) == len(without)
                        # dh0's place: the layer backwards' 5, the BPTT launchers' 1 (the
                        # GRU's 2, after dgh)
                        dh0_at = 5 if len(with_dh0) > 5 else 2 if cell == "gru" else 1
                        for i, (u, v) in enumerate(zip(with_dh0, without)):
                            where = f"{cell} result {i} T={T} B={B} H={H} {dt} rev={rev}"
                            if i == dh0_at:
                                assert u.shape == (B, H) and v.shape == (0, H), where
                            else:
                                assert u.shape == v.shape and torch.equal(u, v), where
    finally:
        torch.set_num_threads(old)


def test_layer_backward_launchers_decline_and_check(monkeypatch):
    """A one-call layer backward returns None where the layer GEMMs go to torch.mm (the
    caller then runs the two launchers), and raises the kernels' ValueError for a wrong
    shape before any kernel runs (one check of every operand, its own name in the
    message)."""
    from rnnfast.kernels import numba as nk
    T, B, H = 4, 2, 8
    x, dy, dh_n, h0 = torch.randn(T, B, H), torch.randn(T, B, H), torch.randn(B, H), \
        torch.zeros(B, H)
    w_ih, w_hh = torch.randn(H, H), torch.randn(H, H)
    y, _ = nk.rnn_layer_fwd(x, w_ih, None, None, w_hh, h0)
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", "torch")
    assert nk.rnn_layer_bwd(dy, dh_n, x, w_ih, w_hh, h0, y) is None
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", "numba")
    with pytest.raises(ValueError, match=r"rnn_layer_bwd\[numba\]: w_ih must be"):
        nk.rnn_layer_bwd(dy, dh_n, x, w_ih[:, :3], w_hh, h0, y)
    with pytest.raises(ValueError, match=r"rnn_layer_bwd\[numba\]: dy must be"):
        nk.rnn_layer_bwd(dy[:2], dh_n, x, w_ih, w_hh, h0, y)


@pytest.mark.parametrize("provider", ["numba", "torch"])
@pytest.mark.parametrize("threads", [1, 2])
def test_layer_forward_launchers_packed_rows(provider, threads, monkeypatch):
    """The one-call layer forwards on a PackedSequence's rows (``offsets=``): bitwise the
    outputs of the projection launcher on those rows followed by the recurrence launcher
    with the same offsets, every cell, both directions, with and without train."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from rnnfast.kernels import numba as nk
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", provider)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    try:
        for T, B, I, H, lens in ((1, 1, 1, 1, [1]), (7, 5, 3, 37, [7, 7, 4, 2, 1]),
                                 (50, 16, 128, 128, [50] * 8 + [20] * 4 + [3] * 4)):
            L = torch.tensor(lens)
            for dt in (torch.float32, torch.float64):
                def r(*s, scale=1.0):
                    return torch.randn(*s, generator=g, dtype=dt) * scale
                pk = pack_padded_sequence(r(T, B, I), L)
                x, bs = pk.data, pk.batch_sizes
                off = torch.cumsum(bs, 0) - bs
                for cell, k in (("rnn", 1), ("lstm", 4), ("gru", 3)):
                    G = k * H
                    w_ih, w_hh, h0, c0 = r(G, I, scale=0.3), r(G, H, scale=0.3), r(B, H), r(B, H)
                    b_ih, b_hh = r(G), r(G)
                    for rev in (False, True):
                        for train in (True, False):
                            if cell == "rnn":
                                xp = nk.project(x, w_ih, b_ih + b_hh)
                                a = nk.rnn_fwd(xp, w_hh, h0, L, rev, RELU, 0.01,
                                               reuse_xp=True, offsets=off)
                                b = nk.rnn_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, L, rev,
                                                     RELU, 0.01, train=train, offsets=off)
                            elif cell == "lstm":
                                xp = nk.project(x, w_ih, b_ih + b_hh)
                                a = nk.lstm_fwd(xp, w_hh, None, h0, c0, L, rev, reuse_xp=True,
                                                train=train, offsets=off)
                                b = nk.lstm_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, None, h0, c0,
                                                      L, rev, train=train, offsets=off)
                            else:
                                bb = torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])
                                a = nk.gru_fwd(nk.project(x, w_ih, bb), w_hh, b_hh[2 * H:], h0,
                                               L, rev, train=train, offsets=off)
                                b = nk.gru_layer_fwd(x, w_ih, b_ih, b_hh, w_hh, h0, L, rev,
                                                     train=train, offsets=off)
                            assert b[0].shape == (x.shape[0], H)
                            for i, (u, v) in enumerate(zip(a, b)):
                                assert u.shape == v.shape and torch.equal(u, v), \
                                    f"{cell} output {i} T={T} B={B} H={H} {dt} rev={rev}"
        with pytest.raises(ValueError, match=r"rnn_layer_fwd\[numba\]: packed x must be "
                                             r"2-D \[M, I\], got shape \(1, 492, 128\)"):
            nk.rnn_layer_fwd(x[None], w_ih[:H], None, None, w_hh[:H], h0, L, offsets=off)
        with pytest.raises(ValueError, match=r"rnn_layer_fwd\[numba\]: packed rows: 1 rows"):
            nk.rnn_layer_fwd(x[:1], w_ih[:H], None, None, w_hh[:H], h0, L, offsets=off)
    finally:
        torch.set_num_threads(old)


def test_layer_forward_launcher_errors():
    """The layer launchers check the projection's arguments too, naming the launcher,
    the argument, the expected and the actual value, before any kernel runs."""
    from rnnfast.kernels import numba as nk
    x, w_ih, w_hh, h0, c0 = (torch.randn(4, 2, 5), torch.randn(12, 5), torch.randn(12, 3),
                             torch.zeros(2, 3), torch.zeros(2, 3))
    b = torch.zeros(12)
    with pytest.raises(ValueError, match=r"lstm_layer_fwd\[numba\]: x must be 3-D"):
        nk.lstm_layer_fwd(x[0], w_ih, b, b, w_hh, None, h0, c0)
    with pytest.raises(ValueError, match=r"w_ih must have shape \(12, 5\), got \(12, 4\)"):
        nk.lstm_layer_fwd(x, w_ih[:, :4], b, b, w_hh, None, h0, c0)
    with pytest.raises(ValueError, match=r"b_hh must have shape \(12,\), got \(11,\)"):
        nk.lstm_layer_fwd(x, w_ih, b, b[:11], w_hh, None, h0, c0)
    with pytest.raises(ValueError, match=r"b_ih and b_hh must both be given"):
        nk.lstm_layer_fwd(x, w_ih, b, None, w_hh, None, h0, c0)
    with pytest.raises(ValueError, match=r"gru_layer_fwd\[numba\]: w_ih.size\(0\) must be "
                                         r"3\*hidden_size, got 11"):
        nk.gru_layer_fwd(x, w_ih[:11], b[:11], b[:11], w_hh[:11], h0)
    with pytest.raises(ValueError, match=r"rnn_layer_fwd\[numba\]: w_ih dtype must be "
                                         r"torch.float32, got torch.float64"):
        nk.rnn_layer_fwd(x, w_ih.double()[:3], None, None, w_hh[:3], h0)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3\), got \(1, 3\)"):
        nk.rnn_layer_fwd(x, w_ih[:3], None, None, w_hh[:3], h0[:1])
