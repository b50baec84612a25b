"""The numba backend's scratch pool (kernels/numba/_host.py): a kept buffer is handed out
again only once nothing references it, the cap holds, and layers whose graphs are alive
at the same time keep their own saved buffers (every gradient against torch.nn)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import rnnfast
from rnnfast.kernels.numba import _host, gemm

from .tolerances import assert_close

MB = 1 << 20
BIG = (512, 1024)  # float32: 2 MiB (the pool takes 1 MiB and more)


@pytest.fixture
def pool(monkeypatch):
    """A pool of its own for the test (the module's list, emptied and restored)."""
    monkeypatch.setattr(_host, "_POOL", [])
    monkeypatch.setattr(_host, "_POOL_ON", True)
    return _host


def _ptr(t):
    return t.data_ptr()


def test_buffer_in_use_is_never_handed_out(pool):
    like = torch.zeros(1)
    a, _ = pool.scratch(like, BIG)
    a.fill_(1.0)
    b, _ = pool.scratch(like, BIG)
    assert _ptr(b) != _ptr(a)
    b.fill_(2.0)
    assert bool((a == 1.0).all())


def test_a_view_keeps_the_buffer(pool):
    like = torch.zeros(1)
    a, _ = pool.scratch(like, BIG)
    row = a[3]  # a torch view: shares the storage that holds the numpy view
    p = _ptr(a)
    del a
    b, _ = pool.scratch(like, BIG)
    assert _ptr(b) != p
    pb = _ptr(b)
    del row, b
    c, _ = pool.scratch(like, BIG)
    assert _ptr(c) in (p, pb)  # one of the two buffers, both free now


def test_freed_buffer_is_reused(pool):
    like = torch.zeros(1)
    a, a_np = pool.scratch(like, BIG)
    p = _ptr(a)
    del a, a_np
    b, _ = pool.scratch(like, (3 * BIG[0] // 4, BIG[1]))  # smaller: fits the same buffer
    assert _ptr(b) == p
    assert len(pool._POOL) == 1


def test_small_and_other_dtype_requests(pool):
    like = torch.zeros(1)
    small, _ = pool.scratch(like, (10, 10))
    assert pool._POOL == []
    a, _ = pool.scratch(like, BIG)
    p = _ptr(a)
    del a
    d, _ = pool.scratch(like, (BIG[0] // 2, BIG[1]), torch.float64)  # same bytes
    assert d.dtype == torch.float64 and _ptr(d) != p
    big, _ = pool.scratch(like, (BIG[0] * 3, BIG[1]))  # over twice a free buffer's size
    assert _ptr(big) != p


def test_cap_holds_and_empty_cache_drops_free_buffers(pool, monkeypatch):
    monkeypatch.setattr(_host, "SCRATCH_POOL_BYTES", 6 * MB)
    like = torch.zeros(1)
    held = [pool.scratch(like, BIG)[0] for _ in range(5)]
    assert pool._pooled_bytes() <= 6 * MB
    assert len(pool._POOL) == 3
    del held[0]
    new, _ = pool.scratch(like, (2 * BIG[0], BIG[1]))  # 4 MiB: one free buffer to drop
    assert pool._pooled_bytes() <= 6 * MB
    held.append(new)
    rnnfast.empty_cache()  # nothing free: everything is held
    assert pool._pooled_bytes() > 0
    held.clear()
    new = None
    rnnfast.empty_cache()
    assert pool._POOL == []


def test_pool_off_allocates_fresh(pool, monkeypatch):
    monkeypatch.setattr(_host, "_POOL_ON", False)
    like = torch.zeros(1)
    a, _ = pool.scratch(like, BIG)
    del a
    assert pool._POOL == []


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_bad_pool_setting_is_named(value):
    r = subprocess.run([sys.executable, "-c", "import rnnfast.kernels.numba._host"],
                       env={**__import__("os").environ, "RNNFAST_SCRATCH_POOL_MB": value},
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert (f"RNNFAST_SCRATCH_POOL_MB must be a finite size in MiB >= 0 (0: no pool), got "
            f"{value!r}") in r.stderr


@pytest.mark.parametrize("provider", ["numba", "torch"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_live_graphs_keep_their_own_buffers(pool, cell, provider, monkeypatch):
    """Three forwards with their graphs alive (the pool's buffers all in use), then the
    backwards in another order, interleaved with more forwards that reuse what the
    finished ones freed: every output and gradient equals torch.nn's. With either
    provider of the layer GEMMs (torch.mm's projection writes the LSTM's and GRU's xp
    into a pooled buffer, which the LSTM keeps as its saved gates)."""
    monkeypatch.setenv(gemm.LAYER_GEMM_ENV, provider)
    torch.manual_seed(0)
    T, B, H = 128, 16, 128  # LSTM gates 4 MiB, GRU 3 MiB; BPTT's gate gradients 1-4 MiB
    kind = {"lstm": "LSTM", "gru": "GRU", "rnn_relu": "RNN"}[cell]
    kw = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
    ref = getattr(torch.nn, kind)(H, H, num_layers=2, **kw)
    fast = getattr(rnnfast, kind)(H, H, num_layers=2, backend="numba", **kw)
    fast.load_state_dict(ref.state_dict())
    xs = [torch.randn(T, B, H) * 0.5 for _ in range(5)]
    gs = [torch.randn(T, B, H) for _ in range(5)]

    def run(m, i):
        x = xs[i].clone().requires_grad_(True)
        y, _ = m(x)
        return x, y

    def grads(m, x, y, i):
        return torch.autograd.grad((y * gs[i]).sum(), [x, *m.parameters()])

    live = [(i, run(fast, i)) for i in range(3)]
    assert len(pool._POOL) > 0 or cell == "rnn_relu"  # its forward saves only y
    order = [2, 0]
    results = {}
    for i in order:
        x, y = dict(live)[i]
        results[i] = (y.detach().clone(), grads(fast, x, y, i))
        j = 3 + len(results) - 1  # a new forward on the buffers just freed
        live.append((j, run(fast, j)))
    assert len(pool._POOL) > 0
    for i, (x, y) in live:
        if i not in results:
            results[i] = (y.detach().clone(), grads(fast, x, y, i))
    for i in range(5):
        x, y = run(ref, i)
        want = grads(ref, x, y, i)
        got_y, got = results[i]
        assert_close(f"{cell} y[{i}]", got_y, y)
        for k, (a, e) in enumerate(zip(got, want)):
            assert_close(f"{cell} grad {k} of call {i}", a, e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_panels_come_from_the_pool(pool, dtype):
    """A big weight's panels (what the kernels pack W_ih, W_hh into) are pooled room of
    the panels' exact shape, handed out again once the kernel is done with it; a small
    weight, and an absent one, get the shared empty stand-in (the kernel allocates)."""
    like = torch.zeros(1, dtype=dtype)
    w = torch.randn(1024, 256, dtype=dtype).numpy()  # an LSTM's W_hh at H = 256
    for transposed in (True, False):
        buf = pool.weight_panels(like, w, transposed)
        want = gemm.pack_bt(w) if transposed else gemm.pack_b(w)
        assert buf.shape == want.shape and buf.dtype == want.dtype
        assert any(np.shares_memory(buf, b) for b in pool._POOL)
        out = (gemm.pack_bt if transposed else gemm.pack_b)(w, buf)
        assert np.shares_memory(out, buf) and np.array_equal(out, want)
        ptr = buf.ctypes.data
        del buf, out
        assert pool.weight_panels(like, w, transposed).ctypes.data == ptr  # reused
    small = torch.randn(256, 64, dtype=dtype).numpy()
    empty = np.empty((0, 0), dtype=small.dtype)
    for v in (small, empty):
        assert pool.weight_panels(like, v) is pool.no_weight(like)
    assert pool.transposed_panels(like, small, w)[0] is pool.no_weight(like)


def test_pool_rows(pool):
    """Kernel scratch [n, k] (the weight gradients' first-step product): pooled when
    big, reused once free; small: the shared [0, 0] stand-in (the kernel allocates)."""
    like = torch.zeros(1)
    a = pool.pool_rows(like, 2048, 512)  # an LSTM's [G, P] at H = 512: 4 MiB
    assert a.shape == (2048, 512) and a.dtype == np.float32
    ptr = a.ctypes.data
    del a
    assert pool.pool_rows(like, 2048, 512).ctypes.data == ptr
    assert pool.pool_rows(like, 256, 64) is pool.no_rows(like)


@pytest.mark.parametrize("kind,kw", [("LSTM", {}), ("LSTM", {"proj_size": 5}), ("GRU", {}),
                                     ("RNN", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("provider", ["numba", "torch"])
def test_every_scratch_pooled_and_poisoned(pool, monkeypatch, kind, kw, dtype, provider):
    """With every scratch buffer from the pool (the size threshold at 0, so the weight
    panels and the first-step product too, at a small odd size) and every free pooled
    buffer filled with NaN before each call, two layers, both directions, packed and
    padded, still match torch.nn (outputs and every gradient): each kernel writes all
    of the scratch it reads (and torch.mm's projection, the torch provider's, all of
    its pooled xp)."""
    monkeypatch.setattr(_host, "SCRATCH_POOL_MIN_BYTES", 0)
    monkeypatch.setenv(gemm.LAYER_GEMM_ENV, provider)
    torch.manual_seed(1)
    T, B, I, H = 7, 3, 6, 37
    ref = getattr(torch.nn, kind)(I, H, num_layers=2, bidirectional=True, dtype=dtype,
                                  **kw)
    fast = getattr(rnnfast, kind)(I, H, num_layers=2, bidirectional=True, dtype=dtype,
                                  backend="numba", **kw)
    fast.load_state_dict(ref.state_dict())
    lengths = torch.tensor([7, 5, 2])

    def poison():
        n = 0
        for b in pool._POOL:  # the loop of _host._free_refs: the same count when free
            if sys.getrefcount(b) == pool._FREE_REFS and b.dtype.kind == "f":
                b.fill(np.nan)
                n += 1
        return n

    def call(m, packed):
        x = torch.randn(T, B, I, dtype=dtype, generator=torch.Generator().manual_seed(2))
        x.requires_grad_(True)
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, lengths) if packed else x
        out, _ = m(inp)
        y = torch.nn.utils.rnn.pad_packed_sequence(out)[0] if packed else out
        g = torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
        return (y, *torch.autograd.grad((y * g).sum(), [x, *m.parameters()]))

    for packed in (False, True):
        for i in range(2):  # the second call reuses (poisoned) pooled buffers
            assert poison() > 0 or i == 0
            got = call(fast, packed)
            assert pool._POOL
            want = call(ref, packed)
            for k, (a, e) in enumerate(zip(got, want)):
                assert_close(f"{kind} {kw} packed={packed} tensor {k}", a, e)


_CHURN_SCRIPT = r"""
import numpy as np
from rnnfast.kernels.numba import _host
_host.pool_array((1 << 20,), np.float32)  # 4 MiB: the pool's first buffer
def call():  # a call's outputs: four 1.5 MiB buffers written, then freed
    bufs = [np.empty(3 << 19, dtype=np.uint8) for _ in range(4)]
    for b in bufs:
        b.fill(1)
"""

_LSTM_SCRIPT = r"""
import torch, rnnfast
torch.set_num_threads(1)
T, B, H = 100, 32, 128  # the pool's buffers 1.6-6.6 MB; outputs and gradients 1.6 MB
m = rnnfast.LSTM(H, H, backend="numba")
x = torch.randn(T, B, H, requires_grad=True)
params = [x, *m.parameters()]
def call():
    y, (h, c) = m(x)
    torch.autograd.grad(y.sum() + h.sum(), params)
"""

_MEASURE = r"""
import resource
for _ in range({warm}):
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({n}):
    call()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / {n})
"""


def _faults_per_call(script, warm, n):
    """Minor page faults per ``call()`` of ``script`` in a fresh process (glibc's own
    settings), after ``warm`` calls, over ``n``."""
    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith("MALLOC_") and k != "RNNFAST_SCRATCH_POOL_MB"}
    out = subprocess.run([sys.executable, "-c", script + _MEASURE.format(warm=warm, n=n)],
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or __import__("platform").libc_ver()[0] != "glibc",
                    reason="glibc's dynamic mmap / trim thresholds")
def test_pool_shows_glibc_a_free():
    """The pool keeps its buffers, so glibc never saw a big block freed: its mmap
    threshold stayed at 128 KiB, its trim threshold at twice the largest block freed,
    and a call's outputs (four 1.5 MiB buffers here) came as fresh pages on every call:
    1,504 faults per round before, in a fresh process whose pool has grown once. With
    the free the pool shows glibc (_host._show_malloc_the_free) none. End to end, a warm
    LSTM fwd+bwd at (100, 32, 128) faulted 92-484 pages per call before (one thread;
    900-1,500 with two), ~0 after (a loaded machine's odd heap trim aside)."""
    assert _faults_per_call(_CHURN_SCRIPT, warm=2, n=5) < 10
    assert _faults_per_call(_LSTM_SCRIPT, warm=5, n=20) < 50


_PROJECT_SCRIPT = r"""
import os
os.environ["RNNFAST_LAYER_GEMM"] = "torch"
import torch
from rnnfast.kernels.numba import gemm
torch.set_num_threads(1)
x, w, b = torch.randn(4608, 8), torch.randn(2048, 8), torch.randn(2048)  # xp: 36 MiB
def call():
    xp = gemm.project(x, w, b, scratch=True)
    assert abs(float(xp[-1, -1]) - float(x[-1] @ w[-1] + b[-1])) < 1e-4
"""


def test_torch_projection_into_pooled_scratch_does_not_fault():
    """The torch provider's projection into a pooled buffer (an LSTM's or GRU's xp,
    read only by the kernels): past the first call its 36 MiB are written without
    page faults. torch.addmm's own result, above glibc's 32 MiB mmap ceiling, came
    fresh from the OS on every call: ~9,200 faults a call (4 KiB pages). Alone, the
    projection of an LSTM's (T, B, H) = (100, 64, 512) took 93 ms into its own result
    and 78 ms into a written buffer on a 2-core Zen 3 (one run; inside the LSTM's
    forward 110 against 107 ms)."""
    assert _faults_per_call(_PROJECT_SCRIPT, warm=2, n=5) < 200
