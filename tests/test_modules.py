"""rnnfast.RNN / rnnfast.LSTM against torch.nn (and the reference for leaky_relu): every
output and gradient, odd sizes, dtypes, layers, directions, batch_first, packed input."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

from .cases import CELLS, SHAPES, case_id, make_pair, module_backends, shapes_for
from .checks import compare_modules
from .tolerances import assert_close

BACKENDS = module_backends()
DTYPES = [torch.float32, torch.float64]


def _hx(ours, B, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    n = ours.num_layers * (2 if ours.bidirectional else 1)
    P = ours.proj_size or ours.hidden_size
    h0 = torch.randn(n, B, P, generator=g, dtype=dtype)
    if isinstance(ours, rnnfast.LSTM):
        return (h0, torch.randn(n, B, ours.hidden_size, generator=g, dtype=dtype))
    return h0


CASES = [(cell, B, T, H, dt, be) for be in BACKENDS for cell in CELLS
         for (B, T, H) in shapes_for(be, SHAPES) for dt in DTYPES]


@pytest.mark.parametrize("cell,B,T,H,dtype,backend", CASES,
                         ids=[case_id(*c) for c in CASES])
def test_single_layer(cell, B, T, H, dtype, backend):
    I = 5
    ours, twin = make_pair(cell, I, H, dtype, backend, seed=B * 1000 + T * 10 + H)
    x = torch.randn(T, B, I, dtype=dtype)
    compare_modules(ours, twin, x, _hx(ours, B, dtype))


LAYERED = [(cell, dt, be) for cell in CELLS for dt in DTYPES for be in BACKENDS]


@pytest.mark.parametrize("cell,dtype,backend", LAYERED,
                         ids=[f"{c}-{str(d)[6:]}-{b}" for c, d, b in LAYERED])
def test_two_layer_bidirectional_batch_first(cell, dtype, backend):
    B, T, I, H = 3, 7, 4, 6
    ours, twin = make_pair(cell, I, H, dtype, backend, num_layers=2, bidirectional=True,
                           batch_first=True)
    x = torch.randn(B, T, I, dtype=dtype)
    compare_modules(ours, twin, x, _hx(ours, B, dtype))


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_sequence(cell, backend, enforce_sorted):
    B, T, I, H = 4, 9, 3, 5
    dtype = torch.float64
    ours, twin = make_pair(cell, I, H, dtype, backend, num_layers=2, bidirectional=True)
    lengths = torch.tensor([9, 7, 7, 2]) if enforce_sorted else torch.tensor([3, 9, 1, 6])
    x = torch.randn(T, B, I, dtype=dtype)
    packer = lambda xx: pack_padded_sequence(xx, lengths, enforce_sorted=enforce_sorted)  # noqa: E731
    (y, *_), _ = compare_modules(ours, twin, x, _hx(ours, B, dtype), packer=packer)
    out, _ = ours(packer(x))
    ref, _ = twin(packer(x))
    assert torch.equal(out.batch_sizes, ref.batch_sizes)
    for a, b in ((out.sorted_indices, ref.sorted_indices),
                 (out.unsorted_indices, ref.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)


ROWS_CASES = [(be, p) for be in BACKENDS if be != "torch"
              for p in (["numba", "torch"] if be == "numba" else [None])]


@pytest.mark.parametrize("backend,provider", ROWS_CASES,
                         ids=[f"{b}-{p}" if p else b for b, p in ROWS_CASES])
@pytest.mark.parametrize("cell", list(CELLS))
def test_packed_rows_gemms(cell, backend, provider, monkeypatch):
    """A packed batch's projection and layer-gradient GEMMs over its active rows alone
    (rnnfast.ops._ActiveRows) give torch.nn's outputs and gradients, in both directions,
    on each kernel backend and (numba) with either GEMM provider. Both routes: the
    PackedSequence's data handed to the layers as packed rows (eager), and a padded
    batch with lengths (what torch.compile traces), which gathers the rows only below
    PACKED_ROWS_MAX_FRACTION. The rows the recurrence kernels must not read (padding of
    xp, y, dy) are left uninitialised on the numba backend, here filled with NaN: a
    kernel that read one would turn the result NaN. Also checks each route is taken."""
    from rnnfast import ops
    if provider is not None:
        monkeypatch.setenv("RNNFAST_LAYER_GEMM", provider)
    monkeypatch.setattr(ops, "UNREAD_ROWS_FILL", float("nan"))
    B, T, I, H = 5, 11, 3, 7
    dtype = torch.float64
    ours, twin = make_pair(cell, I, H, dtype, backend, num_layers=2, bidirectional=True)
    lengths = torch.tensor([2, 11, 1, 6, 3])  # 23 of 55 rows
    rows, layer_x = [], []
    real, real_project, real_one = ops._ActiveRows.__init__, ops._project, ops._one_call

    def spy(self, *args):
        real(self, *args)
        rows.append(self.M)

    def spy_project(kern, x, *args):
        layer_x.append(x.dim())
        return real_project(kern, x, *args)

    def spy_one(kern, name, x, rows_, backend):  # the projection inside a one-call forward
        out = real_one(kern, name, x, rows_, backend)
        if out is not None:
            layer_x.append(x.dim())
        return out

    monkeypatch.setattr(ops._ActiveRows, "__init__", spy)
    monkeypatch.setattr(ops, "_project", spy_project)
    monkeypatch.setattr(ops, "_one_call", spy_one)
    x = torch.randn(T, B, I, dtype=dtype)
    packer = lambda xx: pack_padded_sequence(xx, lengths, enforce_sorted=False)  # noqa: E731
    monkeypatch.setattr(ops, "PACKED_ROWS_MAX_FRACTION", 0.0)  # packed rows: always
    compare_modules(ours, twin, x, _hx(ours, B, dtype), packer=packer)
    assert set(rows) == {23} and set(layer_x) == {2}
    rows.clear(), layer_x.clear()
    monkeypatch.setattr(ops, "packed_rows_ok", lambda *t: False)  # padded with lengths
    monkeypatch.setattr(ops, "PACKED_ROWS_MAX_FRACTION", 0.6)
    compare_modules(ours, twin, x, _hx(ours, B, dtype), packer=packer)
    assert set(rows) == {23} and set(layer_x) == {3}
    rows.clear()
    monkeypatch.setattr(ops, "PACKED_ROWS_MAX_FRACTION", 0.3)  # 23 / 55 > 0.3: padded
    compare_modules(ours, twin, x, _hx(ours, B, dtype), packer=packer)
    assert not rows


@pytest.mark.parametrize("cell", list(CELLS))
def test_torch_gemm_provider(cell, monkeypatch):
    """The numba backend with its layer-gradient GEMMs on torch.mm (what ``auto`` picks
    for big layers where torch's BLAS is faster): two layers, both directions, packed
    unsorted lengths, float64, against torch.nn."""
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", "torch")
    B, T, I, H = 4, 9, 3, 5
    dtype = torch.float64
    ours, twin = make_pair(cell, I, H, dtype, "numba", num_layers=2, bidirectional=True)
    lengths = torch.tensor([3, 9, 1, 6])
    x = torch.randn(T, B, I, dtype=dtype)
    packer = lambda xx: pack_padded_sequence(xx, lengths, enforce_sorted=False)  # noqa: E731
    compare_modules(ours, twin, x, _hx(ours, B, dtype), packer=packer)
    compare_modules(ours, twin, torch.randn(T, B, I, dtype=dtype), _hx(ours, B, dtype))


@pytest.mark.parametrize("cell", list(CELLS))
def test_unbatched_input(cell):
    T, I, H = 6, 3, 4
    ours, twin = make_pair(cell, I, H, torch.float64, "numba", num_layers=2, bidirectional=True)
    x = torch.randn(T, I, dtype=torch.float64)
    hx = _hx(ours, 1, torch.float64)
    hx = tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0]
    (y, h, *_), _ = compare_modules(ours, twin, x, hx)
    assert y.shape == (T, 2 * (ours.proj_size or H)) and h.dim() == 2


@pytest.mark.parametrize("cell", list(CELLS))
def test_default_hidden_state(cell):
    ours, twin = make_pair(cell, 3, 4, torch.float64, "numba")
    compare_modules(ours, twin, torch.randn(5, 2, 3, dtype=torch.float64), None)


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(CELLS))
def test_long_sequence_float32(cell):
    B, T, I, H = 2, 500, 4, 16
    ours, twin = make_pair(cell, I, H, torch.float32, "numba")
    if cell in ("relu", "leaky_relu"):
        with torch.no_grad():  # keep a 500-step ReLU recurrence finite and informative
            for name, p in ours.named_parameters():
                if name.startswith("weight_hh"):
                    p.copy_(torch.eye(H) * 0.9 + 0.01 * torch.randn(H, H))
            twin.load_state_dict(ours.state_dict())
    compare_modules(ours, twin, torch.randn(T, B, I), _hx(ours, B, torch.float32), kind="long")


def _one_layer_twin(ours, layer, input_size):
    """Layer ``layer`` of ``ours`` alone, as torch.nn's module (rnnfast's reference loop
    for leaky-ReLU), with that layer's weights."""
    kind = type(ours).__name__
    opts = dict(bias=ours.bias, bidirectional=ours.bidirectional)
    if kind == "RNN":
        opts["nonlinearity"] = ours.nonlinearity
    if getattr(ours, "proj_size", 0):
        opts["proj_size"] = ours.proj_size
    if kind == "RNN" and ours.nonlinearity == "leaky_relu":
        twin = rnnfast.RNN(input_size, ours.hidden_size, backend="torch",
                           negative_slope=ours.negative_slope, **opts)
    else:
        twin = getattr(torch.nn, kind)(input_size, ours.hidden_size, **opts)
    sd = {k.replace(f"_l{layer}", "_l0"): v for k, v in ours.state_dict().items()
          if f"_l{layer}" in k}
    twin.load_state_dict(sd)
    return twin.to(next(ours.parameters()).dtype)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", list(CELLS))
def test_dropout_between_layers_against_layers(cell, bidirectional):
    """Train-mode inter-layer dropout (numba: rnnfast's own mask, kernels/numba/dropout.py)
    equals two one-layer torch.nn modules with ``x * mask`` between them, the mask drawn
    from the same seed: outputs, final states and every gradient, float64."""
    from rnnfast.kernels import numba as nk

    dtype, p = torch.float64, 0.4
    ours, _ = make_pair(cell, 3, 5, dtype, "numba", num_layers=2, dropout=p,
                        bidirectional=bidirectional)
    ours.train()
    D = 2 if bidirectional else 1
    width = ours.proj_size if getattr(ours, "proj_size", 0) else ours.hidden_size
    first, second = _one_layer_twin(ours, 0, 3), _one_layer_twin(ours, 1, D * width)
    x = torch.randn(6, 4, 3, dtype=dtype, requires_grad=True)
    g = torch.Generator().manual_seed(3)

    torch.manual_seed(11)
    y, state = ours(x)
    torch.manual_seed(11)
    seed = int(torch.empty((), dtype=torch.int64).random_())
    y0, state0 = first(x)
    mask = nk.dropout_mask(y0, p, seed)
    assert 0 < int((mask == 0).sum()) < mask.numel()
    y1, state1 = second(y0 * mask)
    if isinstance(state, tuple):
        pairs = [("h_n", state[0], torch.cat([state0[0], state1[0]])),
                 ("c_n", state[1], torch.cat([state0[1], state1[1]]))]
    else:
        pairs = [("h_n", state, torch.cat([state0, state1]))]
    pairs.insert(0, ("output", y, y1))
    for name, a, b in pairs:
        assert_close(name, a, b, dtype)
    ups = [torch.randn(a.shape, generator=g, dtype=dtype) for _, a, _ in pairs]
    params = list(ours.parameters())
    twin_params = list(first.parameters()) + list(second.parameters())
    got = torch.autograd.grad([a for _, a, _ in pairs], [x] + params, ups)
    want = torch.autograd.grad([b for _, _, b in pairs], [x] + twin_params, ups)
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert_close(f"grad {name}", a, b, dtype)


@pytest.mark.no_poison  # the real torch.empty, which follows the default device
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_dropout_between_layers_under_another_default_device(backend):
    """A CPU module and input in training under ``torch.device('meta')`` (another default
    device): the mask and its seed are made on the CPU, as torch.nn's dropout is (p = 1:
    comparable with torch.nn; p = 0.5: the same masks as outside the context)."""
    ours, twin = make_pair("gru", 3, 4, torch.float64, backend, num_layers=2, dropout=1.0)
    ours.train(), twin.train()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.device("meta"):
        y, _ = ours(x)
        want, _ = twin(x)
    assert y.device.type == "cpu"
    assert_close("output", y, want, torch.float64)
    ours.dropout = 0.5
    torch.manual_seed(4)
    with torch.device("meta"):
        a, _ = ours(x)
    torch.manual_seed(4)
    b, _ = ours(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("cell", list(CELLS))
def test_dropout_between_layers(cell):
    dtype = torch.float64
    ours, twin = make_pair(cell, 3, 4, dtype, "numba", num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=dtype)
    ours.eval(), twin.eval()
    compare_modules(ours, twin, x)  # eval: no dropout at all
    ours.train()
    torch.manual_seed(0)
    a, _ = ours(x)
    torch.manual_seed(0)
    b, _ = ours(x)
    torch.manual_seed(1)
    c, _ = ours(x)
    assert torch.equal(a, b), "same seed, same dropout masks"
    assert not torch.allclose(a, c), "train-mode dropout had no effect"
    # p = 1 zeroes every inter-layer activation: deterministic, comparable with torch.nn
    one, twin_one = make_pair(cell, 3, 4, dtype, "numba", num_layers=2, dropout=1.0)
    one.train(), twin_one.train()
    compare_modules(one, twin_one, x)


@pytest.mark.parametrize("provider", ["numba", "torch"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_bitwise_deterministic_backward(cell, provider, monkeypatch):
    """Two identical backward passes give identical bits, with the layer GEMMs on either
    provider (kernels/numba/gemm.py: layer_gemm_provider)."""
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", provider)
    ours, _ = make_pair(cell, 7, 33, torch.float32, "numba", num_layers=2, bidirectional=True)
    x = torch.randn(20, 5, 7)
    grads = []
    for _ in range(2):
        ours.zero_grad()
        xl = x.clone().requires_grad_(True)
        y, _ = ours(xl)
        y.square().sum().backward()
        grads.append([xl.grad.clone()] + [p.grad.clone() for p in ours.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_dict_round_trip_strict(kind):
    kw = dict(num_layers=2, bidirectional=True, bias=True)
    for extra in ([{}, {"proj_size": 3}] if kind == "LSTM" else [{}, {"nonlinearity": "relu"}]):
        ref = getattr(torch.nn, kind)(4, 5, **kw, **extra)
        ours = getattr(rnnfast, kind)(4, 5, **kw, **extra)
        assert list(ours.state_dict()) == list(ref.state_dict())
        ours.load_state_dict(ref.state_dict(), strict=True)
        ref.load_state_dict(ours.state_dict(), strict=True)
        for (na, a), (nb, b) in zip(ours.named_parameters(), ref.named_parameters()):
            assert na == nb and a.shape == b.shape and torch.equal(a, b)


def test_constructor_defaults_and_reset_parameters():
    ref, ours = torch.nn.LSTM(3, 8), rnnfast.LSTM(3, 8)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(ref, attr)
    bound = 1 / 8 ** 0.5
    for p in ours.parameters():
        assert p.abs().max() <= bound
    r = rnnfast.RNN(3, 8, 2, "relu", False, True, 0.0, True)  # torch's positional order
    assert (r.nonlinearity, r.bias, r.batch_first, r.bidirectional) == ("relu", False, True, True)
    assert "weight_hh_l1_reverse" in dict(r.named_parameters())
    assert repr(rnnfast.RNN(3, 4, nonlinearity="leaky_relu")).count("negative_slope=0.01") == 1


def test_backend_environment_override(monkeypatch):
    m = rnnfast.RNN(3, 4)
    x = torch.randn(5, 2, 3)
    monkeypatch.setenv("RNNFAST_BACKEND", "torch")
    assert rnnfast.dispatch.resolve("auto", x.device, x.dtype, 4).name == "torch"
    assert rnnfast.dispatch.resolve("numba", x.device, x.dtype, 4).name == "numba"
    a, _ = m(x)
    monkeypatch.setenv("RNNFAST_BACKEND", "numba")
    b, _ = m(x)
    torch.testing.assert_close(a, b)
    monkeypatch.setenv("RNNFAST_BACKEND", "")  # empty: unset, so 'auto' (numba here)
    assert rnnfast.dispatch.resolve("auto", x.device, x.dtype, 4).name == "numba"
    torch.testing.assert_close(m(x)[0], b)
    monkeypatch.setenv("RNNFAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="RNNFAST_BACKEND"):
        m(x)


def test_explain_names_backend_isa_and_gemm_provider(monkeypatch):
    """rnnfast.explain: one line with the backend, the ISA and, for numba, who runs the
    layer-gradient GEMMs and why."""
    from rnnfast.kernels.numba import config
    m = rnnfast.LSTM(3, 4, backend="numba")
    line = rnnfast.explain(m, torch.randn(5, 2, 3))
    assert "\n" not in line
    assert line.startswith(f"LSTM: backend=numba [{config.ISA.name}]: ")
    assert "layer-gradient GEMMs: numba (" in line and "one compiled launch" in line
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", "torch")
    assert line.split("; layer")[0] in rnnfast.explain(m, torch.randn(5, 2, 3))
    assert rnnfast.explain(m, torch.randn(5, 2, 3)).endswith(
        "layer-gradient GEMMs: torch (RNNFAST_LAYER_GEMM=torch)")
    assert "GEMMs" not in rnnfast.explain(rnnfast.GRU(3, 4, backend="torch"),
                                          torch.randn(5, 3))
    # auto's answer for the call's size class, with the times behind it
    from rnnfast.kernels.numba import gemm
    monkeypatch.delenv("RNNFAST_LAYER_GEMM")
    monkeypatch.setattr(gemm, "_CHOICE", {(torch.float32, "large"): (
        "torch", {"numba": 0.2, "torch": 0.1})})
    big = rnnfast.LSTM(512, 512, backend="numba")
    assert rnnfast.explain(big, torch.randn(100, 64, 512)).endswith(
        "layer-gradient GEMMs: torch (large calls, timed numba 200.00 ms vs torch 100.00 ms)")
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert rnnfast.explain(big, torch.randn(100, 64, 512)).endswith(
            "layer-gradient GEMMs: numba (deterministic algorithms: the tile, untimed)")
    finally:
        torch.use_deterministic_algorithms(was)


def test_explain_says_why_recorded_norms_keep_a_call_on_the_kernels():
    """A call that 'auto' hands to torch.nn's operator (here a forward-only RNN call of
    two steps) stays on the kernels where the module records per-step gradient norms
    (torch.nn's operator has none): explain says so, with the rule it would have met."""
    m = rnnfast.RNN(3, 4)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        plain = rnnfast.explain(m, x)
        m.record_grad_norms = True
        kept = rnnfast.explain(m, x)
    assert plain.startswith("RNN: backend=torch.nn: auto: "), plain
    rule = plain.split("auto: ", 1)[1]
    assert kept.startswith("RNN: backend=numba ["), kept
    assert (f"torch.nn's operator would run it ({rule}), but it has no per-step gradient "
            f"norms (record_grad_norms=True)") in kept, kept


@pytest.mark.parametrize("threads", [1, 2])
def test_lstm_inference_regions(monkeypatch, threads):
    """Where auto hands a forward-only float32 LSTM to torch.nn's operator, per ISA
    (modules.TORCH_OP_LSTM_INFERENCE_REGIONS), and nowhere else; the small-batch regions
    only when torch has more than one thread (where they were measured)."""
    from rnnfast.modules import _lstm_inference_to_torch as to_torch
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    many = threads > 1
    for isa in ("avx512", "avx2", "sse2", "neon"):
        assert (to_torch(isa, 1, 256) is not None) == many  # a batch of one, every ISA
        assert (to_torch(isa, 1, 1024) is not None) == many
        assert to_torch(isa, 1, 64) is None and to_torch(isa, 7, 64) is None
    for isa in ("avx2", "sse2", "neon"):
        assert to_torch(isa, 1, 128) is None
        assert to_torch(isa, 7, 256) is None
        assert to_torch(isa, 2, 256) is None and to_torch(isa, 3, 512) is None
    assert (to_torch("avx2", 4, 256) is not None) == many
    assert (to_torch("avx2", 6, 512) is not None) == many
    if many:
        assert "batch 6 in [4, 6]" in to_torch("avx2", 6, 512)
    assert to_torch("avx2", 6, 1024) is None and to_torch("avx2", 64, 512) is None
    assert "8192 on avx512" in to_torch("avx512", 128, 64)
    assert to_torch("avx512", 127, 64) is None
    for B in (2, 7, 63):  # hidden >= 128 on avx512, at any batch, with threads
        assert (to_torch("avx512", B, 128) is not None) == many
        assert to_torch("avx512", B, 127) is None
    if many:
        assert "hidden 128 >= 128 on avx512" in to_torch("avx512", 7, 128)
    assert to_torch("sse2", 128, 64) is None and to_torch("neon", 6, 512) is None


def test_short_inference_rule():
    """Which short forward-only calls auto hands to torch.nn's operator
    (modules._short_inference_to_torch, TORCH_OP_SHORT_INFERENCE): an RNN's or a GRU's
    of few steps, of a few more at a small batch, or of few rows at a wide hidden
    state; never an LSTM's."""
    from rnnfast import modules
    short = modules._short_inference_to_torch
    rule = modules.TORCH_OP_SHORT_INFERENCE
    steps = rule["steps"]
    more, batch = rule["steps_at_batch"]
    rows, min_h = rule["rows_at_hidden"]
    for cell in ("rnn", "gru"):
        assert "of 1 step (< 4)" in short(cell, 1, 64, 32)
        assert short(cell, steps - 1, 512, 1024) is not None
        assert short(cell, steps, batch, 32) is None
        assert "at batch 31 (< 32)" in short(cell, more - 1, batch - 1, 32)
        assert short(cell, more, 1, min_h - 1) is None
        assert short(cell, more, 3, min_h) is not None  # 24 rows
        assert short(cell, rows - 1, 1, min_h) is not None
        assert short(cell, rows, 1, min_h) is None and short(cell, more, 4, min_h) is None
        assert short(cell, 100, 64, 32) is None
    assert short("lstm", 1, 1, 32) is None and short("lstm", 1, 16, 512) is None
    # the early hand-off's shortcut: no call of a batch of one or more with
    # _short_rules_max_steps() steps is handed over by either rule, and one step fewer
    # can be; an empty batch can be at any length (0 rows)
    longest = modules._short_rules_max_steps()
    for cell in ("rnn", "gru"):
        for B in (1, 2, 64):
            assert short(cell, longest, B, 4096) is None
        assert modules._short_training_to_torch(cell, longest) is None
        assert short(cell, longest - 1, 1, 4096) is not None
        assert short(cell, 1000, 0, 4096) is not None


@pytest.mark.parametrize("cell", ["relu", "gru"])
def test_auto_runs_torch_nn_for_short_inference(cell, monkeypatch):
    """A forward-only RNN / GRU call of a few steps: backend='auto' runs torch.nn's
    operator (bitwise its result; explain says why), in float32 and float64, batch
    first or not, with or without hx; a longer call, training, packed input, leaky-ReLU,
    per-step gradient norms and an explicit backend keep the kernels."""
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)
    for dtype in (torch.float32, torch.float64):
        ours, twin = make_pair(cell, 5, 32, dtype, "auto", num_layers=2)
        for batch_first in (False, True):
            ours.batch_first = twin.batch_first = batch_first
            x = torch.randn((3, 2, 5) if batch_first else (2, 3, 5), dtype=dtype)
            h0 = torch.randn(2, 3, 32, dtype=dtype)
            with torch.no_grad():
                line = rnnfast.explain(ours, x)
                assert "backend=torch.nn" in line and "of 2 steps (< 4)" in line, line
                for hx in (None, h0):
                    (y, h), (y2, h2) = ours(x, hx), twin(x, hx)
                    assert torch.equal(y, y2) and torch.equal(h, h2)
        ours.batch_first = twin.batch_first = False
        with torch.no_grad():
            assert "backend=numba" in rnnfast.explain(ours, torch.randn(8, 4, 5, dtype=dtype))
    x = torch.randn(2, 3, 5)
    ours, _ = make_pair(cell, 5, 32, torch.float32, "auto")
    assert "backend=numba" in rnnfast.explain(ours, torch.randn(3, 3, 5))  # training
    with torch.no_grad():
        packed = pack_padded_sequence(x, torch.tensor([2, 2, 1]))
        assert "backend=numba" in rnnfast.explain(ours, packed)
        explicit, _ = make_pair(cell, 5, 32, torch.float32, "numba")
        assert "backend=numba" in rnnfast.explain(explicit, x)
        ours.record_grad_norms = True
        assert "backend=numba" in rnnfast.explain(ours, x)
        if cell == "relu":
            leaky = rnnfast.RNN(5, 32, nonlinearity="leaky_relu")
            assert "backend=numba" in rnnfast.explain(leaky, x)
        monkeypatch.setenv("RNNFAST_BACKEND", "numba")
        ours.record_grad_norms = False
        assert "backend=numba" in rnnfast.explain(ours, x)


@pytest.mark.parametrize("cell", ["relu", "gru"])
def test_auto_runs_torch_nn_for_short_training(cell, monkeypatch):
    """A training call of fewer than TORCH_OP_SHORT_TRAINING_STEPS steps (an RNN's or a
    GRU's): backend='auto' runs torch.nn's operator, bitwise torch.nn's outputs and
    gradients, with in-place changes to the outputs and a bias between forward and
    backward (as the kernels allow them); two layers with dropout take rnnfast's masks
    (the kernels' path draws the same for the seed); longer calls and per-step
    gradient norms keep the kernels; an LSTM's never moves."""
    from rnnfast import modules
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)
    steps = modules.TORCH_OP_SHORT_TRAINING_STEPS
    assert "a training call of 2 steps (< 3)" in modules._short_training_to_torch(cell, 2)
    assert modules._short_training_to_torch("lstm", 1) is None
    ours, twin = make_pair(cell, 5, 32, torch.float64, "auto", num_layers=2,
                           bidirectional=True)
    x = torch.randn(steps - 1, 3, 5, dtype=torch.float64)
    assert "backend=torch.nn" in rnnfast.explain(ours, x)
    assert "backend=numba" in rnnfast.explain(ours, torch.randn(steps, 3, 5).double())
    grads = []
    for m in (ours, twin):
        xr = x.clone().requires_grad_(True)
        y, h = m(xr)
        loss = y.sum() + 2 * h.sum()
        y.add_(1)
        h.mul_(3)
        with torch.no_grad():
            m.bias_hh_l0.add_(1)
        loss.backward()
        with torch.no_grad():
            m.bias_hh_l0.sub_(1)
        grads.append([y, h, xr.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    ours.record_grad_norms = True
    assert "backend=numba" in rnnfast.explain(ours, x)
    ours.record_grad_norms = False
    drop = getattr(rnnfast, ours._mode_name())(5, 32, num_layers=2, dropout=0.5,
                                               **({"nonlinearity": "relu"} if cell == "relu"
                                                  else {})).double()
    xr = x.clone().requires_grad_(True)
    torch.manual_seed(7)
    y1 = drop(xr)[0]
    drop.backend = "numba"
    torch.manual_seed(7)
    y2 = drop(xr)[0]
    assert_close("dropout output", y1, y2, torch.float64)
    lstm, _ = make_pair("lstm", 5, 32, torch.float32, "auto")
    assert "backend=numba" in rnnfast.explain(lstm, torch.randn(1, 3, 5))


@pytest.mark.parametrize("cell", ["relu", "gru", "lstm"])
def test_early_hand_off_follows_the_rules(cell, monkeypatch):
    """backend='auto' hands a call to torch.nn's own forward before rnnfast's checks
    (_torch_forward_if_faster) exactly where the usual path would hand it to torch.nn's
    operator after them (plan / explain say torch.nn, for one of the measured rules),
    over steps, batches, hidden sizes, dtypes, batch_first, unbatched input, hx given or
    not, training and forward-only; there the outputs (and gradients) are torch.nn's,
    bitwise, and rnnfast's own path never runs."""
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)
    if torch.get_num_threads() < 2:  # the LSTM's regions were measured with threads
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    routed = kept = 0
    for H, dtype in ((16, torch.float64), (128, torch.float32), (256, torch.float32)):
        ours, twin = make_pair(cell, 6, H, dtype, "auto")
        for T, B, batch_first, unbatched, with_hx, grad in (
                (1, 1, False, False, False, False), (2, 3, True, False, True, True),
                (3, 40, False, False, True, False), (5, 4, False, True, False, False),
                (9, 2, True, False, False, False), (1, 8, False, False, True, True),
                (40, 1, False, False, False, False), (4, 3, False, False, False, True),
                (40, 0, True, False, False, False), (33, 0, False, False, True, False)):
            ours.batch_first = twin.batch_first = batch_first
            shape = (T, 6) if unbatched else ((B, T, 6) if batch_first else (T, B, 6))
            x = torch.randn(shape, dtype=dtype, requires_grad=grad)
            hx = None
            if with_hx:
                hx = _hx(ours, B, dtype)
                if unbatched:
                    hx = tuple(h[:, 0] for h in hx) if cell == "lstm" else hx[:, 0]
            with torch.set_grad_enabled(grad):
                early = ours._torch_op_call(x, hx) is True
                plan = ours.plan(x, hx)
                assert early == (plan.name == "torch.nn" and "measured faster" in plan.reason), \
                    (cell, H, T, B, grad, plan.reason)
                if not early:
                    kept += 1
                    continue
                routed += 1
                calls = []
                ours.__dict__["_layers"] = lambda *a, **k: calls.append(a)  # must not run
                (y, h), (y2, h2) = ours(x, hx), twin(x, hx)
                del ours.__dict__["_layers"]
                assert not calls
                for a, b in zip((y, *(h if cell == "lstm" else (h,))),
                                (y2, *(h2 if cell == "lstm" else (h2,)))):
                    assert torch.equal(a, b)
                if grad:
                    gx = torch.autograd.grad(y.sum(), x, retain_graph=True)[0]
                    assert torch.equal(gx, torch.autograd.grad(y2.sum(), x)[0])
    assert routed and kept


def test_num_layers_as_numpy_integer(monkeypatch):
    """num_layers given as a numpy integer (torch.nn's constructor and operator take it,
    through __index__) runs on every path, short calls handed to torch.nn and the
    kernels alike, as torch.nn; a bool is refused on every path."""
    import numpy as np
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)
    ours, twin = make_pair("gru", 5, 16, torch.float64, "auto", num_layers=np.int64(2))
    for T, grad in ((2, True), (3, True), (40, False), (3, False)):
        x = torch.randn(T, 3, 5, dtype=torch.float64)
        with torch.set_grad_enabled(grad):
            assert_close("output", ours(x)[0], twin(x)[0], torch.float64)
    ours.num_layers = True
    for T in (2, 40):
        with pytest.raises(TypeError, match="^num_layers should be of type int, got: bool$"):
            ours(torch.randn(T, 3, 5, dtype=torch.float64))


@pytest.mark.parametrize("cell", ["relu", "gru", "lstm"])
def test_last_grad_norms_cleared_by_any_call_without_them(cell, monkeypatch):
    """last_grad_norms is None after a call made with record_grad_norms off, whichever
    implementation ran it: the kernels, or torch.nn's operator (a short training call,
    a forward-only call in the LSTM's regions)."""
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)
    if torch.get_num_threads() < 2:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    ours, _ = make_pair(cell, 5, 256, torch.float32, "auto")
    for T, grad in ((2, True), (3, True), (2, False)):
        ours.record_grad_norms = True
        y, _ = ours(torch.randn(6, 1, 5))
        y.sum().backward()
        assert ours.last_grad_norms is not None
        ours.record_grad_norms = False
        x = torch.randn(T, 1, 5)
        with torch.set_grad_enabled(grad):
            y, _ = ours(x)
        if grad:
            y.sum().backward()
        assert ours.last_grad_norms is None, (T, grad)


def test_parametrized_weight_computed_as_often_as_in_torch_nn(monkeypatch):
    """A parametrized weight (computed on every read: DropConnect, weight_norm) is
    computed as many times per call as torch.nn computes it, on a call that auto would
    hand to torch.nn's operator and on one it keeps on the kernels; so a parametrization
    that draws random numbers draws torch.nn's (the outputs equal torch.nn's)."""
    from torch.nn.utils import parametrize
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)

    class DropConnect(torch.nn.Module):
        calls = 0

        def forward(self, w):
            DropConnect.calls += 1
            return torch.nn.functional.dropout(w, 0.5, training=True)

    for T in (1, 40):
        counts, ys = [], []
        for cls in (torch.nn.GRU, rnnfast.GRU):
            torch.manual_seed(0)
            m = cls(5, 8)
            parametrize.register_parametrization(m, "weight_hh_l0", DropConnect())
            x = torch.randn(T, 3, 5)
            torch.manual_seed(123)
            DropConnect.calls = 0
            with torch.no_grad():
                ys.append(m(x)[0])
            counts.append(DropConnect.calls)
        assert counts[0] == counts[1], (T, counts)
        assert_close("output", ys[1], ys[0], torch.float32)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")
def test_auto_runs_torch_nn_where_it_is_faster(monkeypatch):
    """Forward-only float32 LSTM where torch.nn's operator (oneDNN) measured faster (a
    batch of one at hidden >= TORCH_OP_LSTM_INFERENCE_MIN_H, with more than one thread):
    backend='auto' runs it there, bitwise torch.nn's result, and explain says why;
    training, float64, a projection, packed input, a narrower layer and an explicit
    backend keep the kernels."""
    from rnnfast import modules
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)
    if torch.get_num_threads() < 2:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    H, B = modules.TORCH_OP_LSTM_INFERENCE_MIN_H, 1
    ours, twin = make_pair("lstm", 8, H, torch.float32, "auto")
    x = torch.randn(3, B, 8)
    with torch.no_grad():
        line = rnnfast.explain(ours, x)
        assert "backend=torch.nn" in line and "a batch of one at hidden 256" in line, line
        (y, (h, c)), (y2, (h2, c2)) = ours(x), twin(x)
        for a, b in ((y, y2), (h, h2), (c, c2)):  # torch.nn's own operator: bitwise
            assert torch.equal(a, b)
        narrow, _ = make_pair("lstm", 8, 64, torch.float32, "auto")
        assert "backend=numba" in rnnfast.explain(narrow, x)
        assert "backend=numba" in rnnfast.explain(ours.double(), x.double())
        ours.float()
        packed = pack_padded_sequence(x, torch.full((B,), 3), enforce_sorted=True)
        assert "backend=numba" in rnnfast.explain(ours, packed)
        proj, _ = make_pair("lstm", 8, H, torch.float32, "auto", proj_size=16)
        assert "backend=numba" in rnnfast.explain(proj, x)
        explicit, _ = make_pair("lstm", 8, H, torch.float32, "numba")
        assert "backend=numba" in rnnfast.explain(explicit, x)
    assert "backend=numba" in rnnfast.explain(ours, x)  # training: the kernels
    for p in ours.parameters():  # frozen weights, but an h0 that requires grad
        p.requires_grad_(False)
    h0 = torch.zeros(1, B, H, requires_grad=True)
    c0 = torch.zeros(1, B, H)
    assert "backend=torch.nn" in rnnfast.explain(ours, x)
    for hx in ((h0, c0), [h0, c0]):
        assert "backend=numba" in rnnfast.explain(ours, x, hx)
    def no_torch_op(*args):
        raise AssertionError("torch.nn's operator ran where explain said numba")

    monkeypatch.setattr(ours, "_torch_rnn_op", no_torch_op)
    y, (h, c) = ours(x, (h0, c0))
    h.sum().backward()
    assert h0.grad is not None
    monkeypatch.setenv("RNNFAST_BACKEND", "numba")
    with torch.no_grad():
        assert "backend=numba" in rnnfast.explain(ours, x)


def test_torch_gemm_provider_ignores_autocast(monkeypatch):
    """A backward called inside torch.autocast('cpu') must not run the torch provider's
    weight-gradient GEMMs in bfloat16: the gradients equal those of a plain backward."""
    monkeypatch.setenv("RNNFAST_LAYER_GEMM", "torch")
    m = rnnfast.LSTM(8, 16, backend="numba")
    x = torch.randn(5, 3, 8)
    grads = []
    for cast in (False, True):
        m.zero_grad()
        y, _ = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cast):
            y.square().sum().backward()
            assert torch.is_autocast_enabled("cpu") == cast
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("cell", list(CELLS))
def test_packed_inference_mode(cell):
    """Packed input under torch.inference_mode (whose tensors have no version counter,
    which check_packed_rows' memo reads): torch.nn's outputs, not an error."""
    from torch.nn.utils.rnn import pack_sequence
    ours, twin = make_pair(cell, 4, 5, torch.float64, "numba", num_layers=2,
                           bidirectional=True)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randn(n, 4, generator=g, dtype=torch.float64) for n in (3, 3, 2, 1)]
    with torch.inference_mode():
        for _ in range(2):  # the second call would read a memo, were one kept
            out, state = ours(pack_sequence(seqs))
            ref, ref_state = twin(pack_sequence(seqs))
            torch.testing.assert_close(out.data, ref.data)
            for a, b in zip(state if isinstance(state, tuple) else (state,),
                            ref_state if isinstance(ref_state, tuple) else (ref_state,)):
                torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("T", [1, 3])
def test_state_without_grad_skips_nothing_else(kind, T):
    """A zero hx=None state (the forward skips its first product) and an hx that needs no
    gradient (the backward skips its last one): outputs and every other gradient are
    bitwise those of the same call with an hx that needs one (zeros given), against
    torch.nn within tolerance, numba backend, both directions, two layers, a batch of
    5 (the zero state's product is skipped from 4 rows up)."""
    ref = getattr(torch.nn, kind)(6, 8, num_layers=2, bidirectional=True)
    ours = getattr(rnnfast, kind)(6, 8, num_layers=2, bidirectional=True, backend="numba")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, 5, 6, requires_grad=True)

    def grads(m, hx):
        y, h = m(x, hx)
        h = h if isinstance(h, tuple) else (h,)
        loss = y.pow(2).sum() + sum(t.sum() for t in h)
        return (y, *h, *torch.autograd.grad(loss, [x, *m.parameters()]))

    def state(requires_grad):
        def zeros():
            return torch.zeros(4, 5, 8, requires_grad=requires_grad)
        return (zeros(), zeros()) if kind == "LSTM" else zeros()

    want = grads(ours, state(True))
    for hx in (None, state(False)):
        got = grads(ours, hx)
        for i, (a, b) in enumerate(zip(want, got)):
            assert torch.equal(a, b), f"{kind} T={T} result {i}"
        for i, (a, b) in enumerate(zip(grads(ref, hx), got)):
            assert_close(f"{kind} T={T} result {i}", b, a, torch.float32)


def test_a_checkout_imports_its_own_kernels(tmp_path):
    """rnnfast imported from a source checkout (kernels/ beside rnnfast/, as in this
    repository) takes that checkout's kernels/ as rnnfast.kernels, also where another
    checkout is installed in editable mode: setuptools' editable finder mapped the name
    to the installed checkout's kernels, so ``python -m bench`` in a clone timed and
    tested another checkout's kernels under its own modules, without a word. (The
    checkout here links to this repository's files, from a path of its own.)"""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))
    (tmp_path / "rnnfast").symlink_to(os.path.join(repo, "rnnfast"))
    (tmp_path / "kernels").symlink_to(os.path.join(repo, "kernels"))
    code = "import rnnfast.kernels.numba as n, rnnfast.kernels as k; print(k.__file__, n.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "kernels" / "__init__.py"),
                   str(tmp_path / "kernels" / "numba" / "__init__.py")], out
