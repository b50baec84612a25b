"""The Triton backend against the numba kernels (the same contract) and torch.nn.

Runs where Triton can: CUDA tensors on a GPU, or CPU tensors in the interpreter
(``TRITON_INTERPRET=1 python -m pytest tests/test_triton.py``; the interpreter runs the
one-step-per-launch path with several hidden-dimension programs, float32 and float64).
On CUDA it also covers float16 / bfloat16, the persistent all-steps launch with its grid
barrier, and torch.nn on cuDNN (TF32 off).
"""

import os
import zlib

import pytest
import torch

from .cases import triton_interpreting

INTERPRET = triton_interpreting()
CUDA = torch.cuda.is_available() and not INTERPRET
if not (INTERPRET or CUDA):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from rnnfast.kernels import LEAKY_RELU, RELU, TANH  # noqa: E402
from rnnfast.kernels import numba as nb  # noqa: E402
from rnnfast.kernels import triton as tr  # noqa: E402
from rnnfast.kernels.triton import common, config  # noqa: E402

from .cases import make_pair  # noqa: E402
from .tolerances import assert_close  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if CUDA else [])
ACTS = {"tanh": TANH, "relu": RELU, "leaky_relu": LEAKY_RELU}
# (B, T, H): several hidden programs (H=37: 3 programs of 16 units), one unit, one step,
# one row, two batch tiles (B=17 > 16 rows per tile), a width that is a tile multiple.
RNN_SHAPES = [(3, 5, 37), (1, 1, 1), (1, 4, 16), (17, 3, 5)]
# (B, T, H, P): P=None without projection.
LSTM_SHAPES = [(3, 5, 37, None), (3, 4, 37, 20), (1, 1, 1, None), (17, 3, 5, None),
               (2, 3, 3, 1)]
DIRS = [("fwd", False, False), ("rev", True, False), ("len", False, True),
        ("revlen", True, True)]


@pytest.fixture(autouse=True)
def _no_tf32():
    if CUDA:
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


@pytest.fixture(params=["resident", "streamed"])
def weights(request, monkeypatch):
    """Both ways a program gets its weights: kept on chip, or streamed every step."""
    if request.param == "streamed":
        monkeypatch.setattr(config, "SMEM_BUDGET", 0)
    return request.param


def _dname(dtype):
    return str(dtype).replace("torch.", "")


def _lengths(B, T, on):
    if not on:
        return None
    g = torch.Generator().manual_seed(B * 100 + T)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0] = T
    return lens


def _rand(*shape, dtype, scale=1.0, gen):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _ref_dtype(dtype):
    """numba computes in float32 for the half types (from the same rounded inputs)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _cpu_ref(t, dtype):
    return None if t is None else t.detach().cpu().to(_ref_dtype(dtype))


def _dev(t):
    return None if t is None else t.to(DEVICE)


def _check_all(names, actual, expected, dtype):
    for name, a, e in zip(names, actual, expected):
        if a.numel() == 0 and e.numel() == 0:
            continue
        assert_close(name, a.float().cpu() if a.dtype != torch.float64 else a.cpu(),
                     e, dtype=dtype)


# ---------------------------------------------------------------- kernels vs numba

@pytest.mark.parametrize("dtype", DTYPES, ids=_dname)
@pytest.mark.parametrize("direction", DIRS, ids=[d[0] for d in DIRS])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", RNN_SHAPES, ids=lambda s: "B{}-T{}-H{}".format(*s))
def test_rnn_kernels(shape, act, direction, dtype, weights):
    B, T, H = shape
    _, reverse, with_len = direction
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, act)).encode()))
    code = ACTS[act]
    xp = _rand(T, B, H, dtype=dtype, gen=gen)
    w = _rand(H, H, dtype=dtype, scale=0.5 / H**0.5, gen=gen)
    h0 = _rand(B, H, dtype=dtype, gen=gen)
    dy = _rand(T, B, H, dtype=dtype, gen=gen)
    dhn = _rand(B, H, dtype=dtype, gen=gen)
    lens = _lengths(B, T, with_len)
    y, hn = tr.rnn_fwd(_dev(xp), _dev(w), _dev(h0), _dev(lens), reverse, code, 0.1)
    assert tr.last_launch["grid"] == (-(-H // 16), -(-B // 16))
    ry, rhn = nb.rnn_fwd(*(_cpu_ref(t, dtype) for t in (xp, w, h0)), lens, reverse, code, 0.1)
    _check_all(["y", "h_n"], (y, hn), (ry, rhn), dtype)
    out = tr.rnn_bwd(_dev(dy), _dev(dhn), y, _dev(w), _dev(lens), reverse, code, 0.1)
    ref = nb.rnn_bwd(_cpu_ref(dy, dtype), _cpu_ref(dhn, dtype), _cpu_ref(y, dtype),
                     _cpu_ref(w, dtype), lens, reverse, code, 0.1)
    assert out[2].dtype == torch.float64 and out[2].shape == (T,)
    _check_all(["dxp", "dh0", "norms"], out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dname)
@pytest.mark.parametrize("direction", DIRS, ids=[d[0] for d in DIRS])
@pytest.mark.parametrize("shape", LSTM_SHAPES,
                         ids=lambda s: "B{}-T{}-H{}".format(*s[:3]) + (f"-P{s[3]}" if s[3] else ""))
def test_lstm_kernels(shape, direction, dtype, weights):
    B, T, H, P = shape
    _, reverse, with_len = direction
    gen = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()))
    Pw = P or H
    xp = _rand(T, B, 4 * H, dtype=dtype, gen=gen)
    w = _rand(4 * H, Pw, dtype=dtype, scale=0.5 / Pw**0.5, gen=gen)
    whr = _rand(Pw, H, dtype=dtype, scale=0.5 / H**0.5, gen=gen) if P else None
    h0 = _rand(B, Pw, dtype=dtype, gen=gen)
    c0 = _rand(B, H, dtype=dtype, gen=gen)
    dy = _rand(T, B, Pw, dtype=dtype, gen=gen)
    dhn = _rand(B, Pw, dtype=dtype, gen=gen)
    dcn = _rand(B, H, dtype=dtype, gen=gen)
    lens = _lengths(B, T, with_len)
    fwd = tr.lstm_fwd(_dev(xp), _dev(w), _dev(whr), _dev(h0), _dev(c0), _dev(lens), reverse)
    rfwd = nb.lstm_fwd(*(_cpu_ref(t, dtype) for t in (xp, w, whr, h0, c0)), lens, reverse)
    _check_all(["y", "h_n", "c_n", "gates", "cs"], fwd, rfwd, dtype)
    _, _, _, gates, cs = fwd
    out = tr.lstm_bwd(_dev(dy), _dev(dhn), _dev(dcn), gates, cs, _dev(c0), _dev(w), _dev(whr),
                      _dev(lens), reverse)
    ref = nb.lstm_bwd(*(_cpu_ref(t, dtype) for t in (dy, dhn, dcn, gates, cs, c0, w, whr)),
                      lens, reverse)
    assert out[3].shape == ((T, B, Pw) if P else (0,))
    _check_all(["dxp", "dh0", "dc0", "dhs", "norms"], out, ref, dtype)


@pytest.mark.parametrize("cap", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "lstm_proj"])
def test_programs_loop_over_batch_tiles(cell, cap, monkeypatch):
    """A grid capped along the batch axis (as the persistent launch caps it to the SMs)
    runs every batch tile: B=35 is 3 tiles over 1 or 2 programs per unit tile."""
    monkeypatch.setattr(config, "MAX_BATCH_PROGRAMS", cap)
    T, B, H = 3, 35, 20
    g = torch.Generator().manual_seed(11)
    lens = _lengths(B, T, True)
    dt = torch.float64
    if cell == "rnn":
        xp, w, h0 = _rand(T, B, H, dtype=dt, gen=g), _rand(H, H, dtype=dt, scale=0.2, gen=g), \
            _rand(B, H, dtype=dt, gen=g)
        y, hn = tr.rnn_fwd(_dev(xp), _dev(w), _dev(h0), _dev(lens), True, TANH)
        assert tr.last_launch["grid"][1] == cap
        _check_all(["y", "h_n"], (y, hn), nb.rnn_fwd(xp, w, h0, lens, True, TANH), dt)
        dy, dhn = _rand(T, B, H, dtype=dt, gen=g), _rand(B, H, dtype=dt, gen=g)
        out = tr.rnn_bwd(_dev(dy), _dev(dhn), y, _dev(w), _dev(lens), True, TANH)
        _check_all(["dxp", "dh0", "norms"], out,
                   nb.rnn_bwd(dy, dhn, y.cpu(), w, lens, True, TANH), dt)
        return
    P = 7 if cell == "lstm_proj" else H
    xp, w = _rand(T, B, 4 * H, dtype=dt, gen=g), _rand(4 * H, P, dtype=dt, scale=0.2, gen=g)
    whr = _rand(P, H, dtype=dt, scale=0.2, gen=g) if P != H else None
    h0, c0 = _rand(B, P, dtype=dt, gen=g), _rand(B, H, dtype=dt, gen=g)
    fwd = tr.lstm_fwd(*(_dev(t) for t in (xp, w, whr, h0, c0, lens)), False)
    assert tr.last_launch["grid"][1] == cap
    _check_all(["y", "h_n", "c_n", "gates", "cs"], fwd,
               nb.lstm_fwd(xp, w, whr, h0, c0, lens, False), dt)
    dy, dhn, dcn = (_rand(T, B, P, dtype=dt, gen=g), _rand(B, P, dtype=dt, gen=g),
                    _rand(B, H, dtype=dt, gen=g))
    gates, cs = fwd[3], fwd[4]
    out = tr.lstm_bwd(*(_dev(t) for t in (dy, dhn, dcn)), gates, cs,
                      *(_dev(t) for t in (c0, w, whr, lens)), False)
    _check_all(["dxp", "dh0", "dc0", "dhs", "norms"], out,
               nb.lstm_bwd(dy, dhn, dcn, gates.cpu(), cs.cpu(), c0, w, whr, lens, False), dt)


@triton.jit
def _apply_tanh(x, out, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    tl.store(out + o, common.tanh(tl.load(x + o, mask=m, other=0.0)), mask=m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dname)
def test_pointwise_tanh_is_accurate_near_zero(dtype):
    """The kernels' tanh (common.tanh, every tanh of the RNN, LSTM and GRU) against
    torch.tanh: a few ulp relative at every magnitude, both signs, both sides of the
    series' bound, exactly +-1 when saturated, NaN for NaN. (1 - e) / (1 + e) alone gave
    float32 tanh(1e-5) 4e-3 off and tanh(1e-8) exactly 0.)"""
    mags = torch.cat([torch.logspace(-30, 1.5, 400, dtype=torch.float64),
                      torch.linspace(0.6, 0.65, 101, dtype=torch.float64),
                      torch.tensor([0.625, 5.0, 9.0, 20.0, 400.0], dtype=torch.float64)])
    x = torch.cat([mags, -mags, torch.tensor([0.0, float("inf"), -float("inf")],
                                             dtype=torch.float64)]).to(dtype).to(DEVICE)
    out = torch.empty_like(x)
    _apply_tanh[(triton.cdiv(x.numel(), 128),)](x, out, x.numel(), BLOCK=128)
    want = torch.tanh(x.double())
    rel = ((out.double() - want).abs() / want.abs().clamp_min(1e-300)).max().item()
    ulp = torch.finfo(dtype).eps
    assert rel <= 4 * ulp, f"worst relative error {rel:.3g} ({rel / ulp:.1f} ulp)"
    assert out[x.abs() >= 20].abs().eq(1).all()
    nan = torch.tensor([float("nan")], dtype=dtype, device=DEVICE)
    _apply_tanh[(1,)](nan, out, 1, BLOCK=128)
    assert out[0].isnan()


def test_several_hidden_programs():
    """H=37 runs as 3 programs of 16 units per batch tile; an LSTM of 37 units as 10."""
    tr.rnn_fwd(*(t.to(DEVICE) for t in (torch.randn(2, 3, 37), torch.randn(37, 37) * 0.1,
                                        torch.zeros(3, 37))))
    assert tr.last_launch["grid"] == (3, 1)
    if INTERPRET:
        assert not tr.last_launch["persistent"] and tr.last_launch["launches"] == 2
    xp, w = torch.randn(2, 1, 4 * 37), torch.randn(4 * 37, 37) * 0.1
    tr.lstm_fwd(*(t.to(DEVICE) for t in (xp, w)), None,
                *(torch.zeros(1, 37, device=DEVICE) for _ in range(2)))
    assert tr.last_launch["grid"] == (10, 1)


def test_deterministic():
    """Same inputs, same bits (no atomics on gradient values)."""
    g = torch.Generator().manual_seed(3)
    T, B, H = 4, 3, 37
    args = [_dev(_rand(*s, dtype=torch.float32, gen=g)) for s in
            ((T, B, H), (B, H), (T, B, H), (H, H))]
    a = tr.rnn_bwd(*args, None, False, TANH)
    b = tr.rnn_bwd(*args, None, False, TANH)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_errors():
    xp = torch.randn(2, 1, 4, device=DEVICE)
    with pytest.raises(ValueError, match="w_hh must have shape"):
        tr.rnn_fwd(xp, torch.randn(3, 3, device=DEVICE), torch.zeros(1, 4, device=DEVICE))
    with pytest.raises(ValueError, match="<= 1024"):
        tr.rnn_fwd(torch.randn(1, 1, 1025, device=DEVICE),
                   torch.randn(1025, 1025, device=DEVICE), torch.zeros(1, 1025, device=DEVICE))


# ---------------------------------------------------------------- modules vs torch.nn

MODULE_CASES = [
    ("tanh", dict()), ("relu", dict()), ("leaky_relu", dict()), ("lstm", dict()),
    ("lstm_proj", dict()), ("relu", dict(num_layers=2, bidirectional=True)),
    ("lstm", dict(bidirectional=True, batch_first=True)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64] if INTERPRET else DTYPES,
                         ids=_dname)
@pytest.mark.parametrize("cell,opts", MODULE_CASES,
                         ids=[f"{c}{'-' + '-'.join(f'{k}{v}' for k, v in o.items()) if o else ''}"
                              for c, o in MODULE_CASES])
def test_module_vs_torch(cell, opts, dtype):
    """rnnfast.RNN / LSTM(backend='triton') against torch.nn (cuDNN on CUDA) with the same
    state_dict: outputs, final states, and the gradients of the input and every weight."""
    B, T, I, H = 3, 4, 5, 19
    ours, twin = make_pair(cell, I, H, dtype, "triton", **opts)
    # Half types: the twin runs in float32 on the same (exactly upcast) weights and input.
    ref_dtype = _ref_dtype(dtype)
    ours, twin = ours.to(DEVICE), twin.to(DEVICE).to(ref_dtype)
    g = torch.Generator().manual_seed(7)
    shape = (B, T, I) if opts.get("batch_first") else (T, B, I)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    xa, xb = x.clone().requires_grad_(), x.to(ref_dtype).requires_grad_()
    out_a, st_a = ours(xa)
    out_b, st_b = twin(xb)
    st_a = st_a if isinstance(st_a, tuple) else (st_a,)
    st_b = st_b if isinstance(st_b, tuple) else (st_b,)
    assert_close("output", out_a.to(ref_dtype), out_b, dtype=dtype)
    for i, (a, b) in enumerate(zip(st_a, st_b)):
        assert_close(f"state{i}", a.to(ref_dtype), b, dtype=dtype)
    gy = torch.randn(out_a.shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    loss_a = (out_a * gy).sum() + sum(s.sum() for s in st_a)
    loss_b = (out_b * gy.to(ref_dtype)).sum() + sum(s.sum() for s in st_b)
    loss_a.backward()
    loss_b.backward()
    assert_close("dx", xa.grad.to(ref_dtype), xb.grad, dtype=dtype)
    pb = dict(twin.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(f"d{name}", p.grad.to(ref_dtype), pb[name].grad, dtype=dtype)


def test_packed_sequence():
    """Per-sequence lengths through a PackedSequence, against torch.nn.LSTM."""
    ours, twin = make_pair("lstm", 4, 9, torch.float32, "triton", bidirectional=True)
    ours, twin = ours.to(DEVICE), twin.to(DEVICE)
    x = torch.randn(5, 3, 4, device=DEVICE)
    lens = torch.tensor([5, 2, 4])
    pa = torch.nn.utils.rnn.pack_padded_sequence(x, lens, enforce_sorted=False)
    ya, (ha, ca) = ours(pa)
    yb, (hb, cb) = twin(pa)
    assert_close("y", ya.data, yb.data)
    assert_close("h_n", ha, hb)
    assert_close("c_n", ca, cb)


# ---------------------------------------------------------------- CUDA only

cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@cuda_only
@pytest.mark.parametrize("kernel", ["rnn", "lstm", "lstm_proj"])
@pytest.mark.parametrize("H", [64, 768])
def test_persistent_equals_per_step(kernel, H, monkeypatch):
    """The all-steps launch (grid barrier) gives the same bits as one step per launch."""
    T, B = 50, 8
    g = torch.Generator().manual_seed(1)
    if kernel == "rnn":
        args = (_rand(T, B, H, dtype=torch.float32, gen=g), _rand(H, H, dtype=torch.float32,
                scale=0.5 / H**0.5, gen=g), _rand(B, H, dtype=torch.float32, gen=g))
        run = lambda: tr.rnn_fwd(*(a.cuda() for a in args))  # noqa: E731
    else:
        P = H // 2 if kernel == "lstm_proj" else H
        args = (_rand(T, B, 4 * H, dtype=torch.float32, gen=g),
                _rand(4 * H, P, dtype=torch.float32, scale=0.5 / P**0.5, gen=g),
                _rand(P, H, dtype=torch.float32, gen=g) if P != H else None,
                _rand(B, P, dtype=torch.float32, gen=g), _rand(B, H, dtype=torch.float32, gen=g))
        run = lambda: tr.lstm_fwd(*(None if a is None else a.cuda() for a in args))  # noqa: E731
    a = run()
    assert tr.last_launch["persistent"]
    monkeypatch.setenv("RNNFAST_TRITON_PERSISTENT", "0")
    b = run()
    assert not tr.last_launch["persistent"]
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=_dname)
@pytest.mark.parametrize("cell", ["tanh", "relu", "lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("H", [128, 768])
def test_cuda_module_vs_cudnn_large(cell, H, dtype):
    """Widths that use the streamed and the 16-warp resident configurations, T=64,
    against torch.nn on cuDNN (in float32 on the same weights for the half types)."""
    T, B, I = 64, 16, 32
    ours, twin = make_pair(cell, I, H, dtype, "triton")
    ref_dtype = _ref_dtype(dtype)
    ours, twin = ours.cuda(), twin.cuda().to(ref_dtype)
    x = torch.randn(T, B, I, device="cuda", dtype=torch.float64).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.to(ref_dtype).requires_grad_()
    ya, _ = ours(xa)
    yb, _ = twin(xb)
    kind = "long" if dtype == torch.float32 else "kernel"
    assert_close("y", ya.to(ref_dtype), yb, dtype=dtype, kind=kind)
    ya.to(ref_dtype).square().sum().backward()
    yb.square().sum().backward()
    assert_close("dx", xa.grad.to(ref_dtype), xb.grad, dtype=dtype, kind=kind)


@cuda_only
def test_tf32_option():
    """TF32 is off unless asked for; asking changes the configuration's precision."""
    assert not tr.tf32_enabled()
    tr.set_tf32(True)
    try:
        tr.rnn_fwd(torch.randn(2, 1, 32, device="cuda"), torch.randn(32, 32, device="cuda"),
                   torch.zeros(1, 32, device="cuda"))
        assert tr.last_launch["config"].PRECISION == "tf32"
    finally:
        tr.set_tf32(None)
    assert os.environ.get("RNNFAST_TRITON_TF32", "0") == "0" or tr.tf32_enabled()
