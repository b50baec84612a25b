"""The torch.library glue: opcheck on every op, gradcheck in float64 per cell, and
torch.compile(fullgraph=True) over a model that contains rnnfast modules."""

import pytest
import torch
from torch.func import functional_call

import rnnfast
from rnnfast import dispatch, ops
from rnnfast.kernels import ACTIVATIONS

from .cases import CELLS, make_pair
from .tolerances import assert_close


def _rnn_args(dtype=torch.float64, lengths=None, reverse=False, probe=True, act="tanh"):
    T, B, I, H = 4, 3, 2, 5
    r = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=True)  # noqa: E731
    return (r(T, B, I), r(H, I), r(H, H), r(H), r(H), r(B, H), lengths, reverse,
            ACTIVATIONS[act], 0.1, "numba",
            torch.zeros(T, dtype=torch.float64, requires_grad=True) if probe else None)


def _lstm_args(dtype=torch.float64, lengths=None, reverse=False, proj=0, probe=True):
    T, B, I, H = 4, 3, 2, 5
    P = proj or H
    r = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=True)  # noqa: E731
    return (r(T, B, I), r(4 * H, I), r(4 * H, P), r(4 * H), r(4 * H), r(P, H) if proj else None,
            r(B, P), r(B, H), lengths, reverse, "numba",
            torch.zeros(T, dtype=torch.float64, requires_grad=True) if probe else None)


def _gru_args(dtype=torch.float64, lengths=None, reverse=False, bias=True, probe=True):
    T, B, I, H = 4, 3, 2, 5
    r = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=True)  # noqa: E731
    return (r(T, B, I), r(3 * H, I), r(3 * H, H), r(3 * H) if bias else None,
            r(3 * H) if bias else None, r(B, H), lengths, reverse, "numba",
            torch.zeros(T, dtype=torch.float64, requires_grad=True) if probe else None)


OPCHECK_CASES = {
    "rnn": (ops.rnn_layer, _rnn_args()),
    "rnn-relu-reverse-lengths": (ops.rnn_layer, _rnn_args(lengths=torch.tensor([4, 2, 3]),
                                                          reverse=True, act="relu")),
    "rnn-float32-noprobe": (ops.rnn_layer, _rnn_args(torch.float32, probe=False)),
    "lstm": (ops.lstm_layer, _lstm_args()),
    "lstm-proj-reverse-lengths": (ops.lstm_layer, _lstm_args(lengths=torch.tensor([1, 4, 2]),
                                                             reverse=True, proj=2)),
    "gru": (ops.gru_layer, _gru_args()),
    "gru-reverse-lengths": (ops.gru_layer, _gru_args(lengths=torch.tensor([3, 4, 1]),
                                                     reverse=True)),
    "gru-nobias-float32-noprobe": (ops.gru_layer, _gru_args(torch.float32, bias=False,
                                                            probe=False)),
}


@pytest.mark.no_poison
@pytest.mark.parametrize("name", list(OPCHECK_CASES))
def test_opcheck_forward_ops(name):
    op, args = OPCHECK_CASES[name]
    torch.library.opcheck(op, args)


@pytest.mark.no_poison
def test_opcheck_backward_ops():
    x, w_ih, w_hh, b_ih, b_hh, h0, lengths, rev, act, slope, be, _ = _rnn_args()
    y, _ = ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, rev, act, slope, be, None)
    d = lambda t: t.detach().clone()  # noqa: E731
    # need_dh0 False: dh0 comes back as [0, P] (the fake says so too)
    for need_dh0 in (True, False):
        torch.library.opcheck(ops.rnn_layer_bwd, (
            torch.randn_like(y), torch.randn_like(h0), d(x), d(w_ih), d(w_hh), d(h0), d(y),
            None, False, act, slope, be, True, True, need_dh0))
    args = _lstm_args(proj=2)
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = args[:8]
    y, h, c, gates, cs = ops.lstm_layer(*args[:-1], None)
    for need_dh0 in (True, False):
        torch.library.opcheck(ops.lstm_layer_bwd, (
            torch.randn_like(y), torch.randn_like(h), torch.randn_like(c), d(x), d(w_ih),
            d(w_hh), d(w_hr), d(h0), d(c0), d(y), d(gates), d(cs), None, False, "numba", True,
            False, need_dh0))
    args = _gru_args(lengths=torch.tensor([2, 4, 3]), reverse=True)
    x, w_ih, w_hh, b_ih, b_hh, h0, lengths, rev = args[:8]
    y, h, gates = ops.gru_layer(*args[:-1], None)
    for need_dh0 in (True, False):
        torch.library.opcheck(ops.gru_layer_bwd, (
            torch.randn_like(y), torch.randn_like(h), d(x), d(w_ih), d(w_hh), d(h0), d(y),
            d(gates), lengths, rev, "numba", True, True, need_dh0))


@pytest.mark.parametrize("lengths,reverse", [(None, False), (torch.tensor([4, 1, 3]), True)])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_gradcheck_rnn_op(act, lengths, reverse):
    args = _rnn_args(lengths=lengths, reverse=reverse, act=act, probe=False)
    if act != "tanh":  # keep pre-activations away from the kink at 0
        with torch.no_grad():
            args[0].mul_(3.0)
    f = lambda x, wi, wh, bi, bh, h0: ops.rnn_layer(  # noqa: E731
        x, wi, wh, bi, bh, h0, *args[6:])
    assert torch.autograd.gradcheck(f, args[:6])


@pytest.mark.parametrize("proj", [0, 2])
@pytest.mark.parametrize("lengths,reverse", [(None, False), (torch.tensor([2, 4, 1]), True)])
def test_gradcheck_lstm_op(proj, lengths, reverse):
    args = _lstm_args(lengths=lengths, reverse=reverse, proj=proj, probe=False)
    rest = args[8:]
    if proj:
        f = lambda x, wi, wh, bi, bh, wr, h0, c0: ops.lstm_layer(  # noqa: E731
            x, wi, wh, bi, bh, wr, h0, c0, *rest)[:3]
        assert torch.autograd.gradcheck(f, args[:8])
    else:
        f = lambda x, wi, wh, bi, bh, h0, c0: ops.lstm_layer(  # noqa: E731
            x, wi, wh, bi, bh, None, h0, c0, *rest)[:3]
        assert torch.autograd.gradcheck(f, args[:5] + args[6:8])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lengths,reverse", [(None, False), (torch.tensor([3, 1, 4]), True)])
def test_gradcheck_gru_op(bias, lengths, reverse):
    args = _gru_args(lengths=lengths, reverse=reverse, bias=bias, probe=False)
    biases = args[3:5] if bias else ()

    def f(x, wi, wh, h0, *b):
        return ops.gru_layer(x, wi, wh, *(b or (None, None)), h0, *args[6:])[:2]
    assert torch.autograd.gradcheck(f, args[:3] + args[5:6] + biases)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_module(cell):
    """gradcheck over input, h0 (c0) and every parameter of a 2-layer bidirectional module."""
    m, _ = make_pair(cell, 2, 3, torch.float64, "numba", num_layers=2, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    if cell in ("relu", "leaky_relu"):
        with torch.no_grad():
            x.mul_(3.0)

    def f(x, *ps):
        y, state = functional_call(m, dict(zip(names, ps)), (x,))
        return (y,) + (state if isinstance(state, tuple) else (state,))
    assert torch.autograd.gradcheck(f, (x, *params))


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnnfast.LSTM(3, 8, num_layers=2, bidirectional=True, backend="numba")
        self.gru = rnnfast.GRU(16, 6, num_layers=2, bidirectional=True, backend="numba")
        self.rnn = rnnfast.RNN(12, 5, nonlinearity="relu", batch_first=False, backend="numba")
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, hg = self.gru(y)
        y, h = self.rnn(y)
        return self.head(y).sum() + h.square().sum() + hg.square().sum()


@pytest.mark.no_poison
def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Model()
    x = torch.randn(6, 4, 3)
    eager = model(x)
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.backward()
    assert_close("loss", out, eager)
    for g, p in zip(grads, model.parameters()):
        assert_close("grad", p.grad, g)


@pytest.mark.no_poison
def test_torch_compile_graph_holds_the_ops():
    """The traced graph calls rnnfast's ops, one per layer and direction of each cell,
    not the reference loop (under dynamo, in_functorch_transform once read a tracing
    artefact as a torch.func transform and every module took the reference loop)."""
    torch._dynamo.reset()
    model = _Model()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    x = torch.randn(6, 4, 3)
    assert_close("loss", torch.compile(model, fullgraph=True, backend=backend)(x), model(x))
    counts = {op: seen.count(f"rnnfast.{op}.default")
              for op in ("lstm_layer", "gru_layer", "rnn_layer")}
    assert counts == {"lstm_layer": 4, "gru_layer": 4, "rnn_layer": 1}, counts


@pytest.mark.no_poison
def test_torch_compile_each_class_has_its_own_frame(monkeypatch):
    """Modules of the three classes compiled directly (not inside a parent) each get a
    graph of their own under a recompile limit of 1, as torch.nn's classes do: each
    class has its own forward (the code object dynamo counts recompiles on). With one
    forward shared by the three, the LSTM and the GRU hit the limit after the RNN and
    ran eagerly."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    x = torch.randn(3, 2, 4)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    for cls in (rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU):
        m = cls(4, 8, backend="numba")
        assert_close(cls.__name__, torch.compile(m, backend=backend)(x)[0], m(x)[0])
    assert len(graphs) == 3, len(graphs)
    torch._dynamo.reset()


@pytest.mark.no_poison
@pytest.mark.parametrize("backend", ["auto", "numba"])
@pytest.mark.parametrize("cls", [rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU], ids=lambda c: c.__name__)
def test_torch_compile_second_call_reuses_the_graph(cls, backend, monkeypatch):
    """A compiled module's second call with the same input runs the first call's graph:
    the traced forward reads no module-level cache that its first call fills (dynamo
    guarded on dispatch._RESOLVED's keys and on kernels._env's encoded names; the
    second call recompiled, and with fullgraph=True under a recompile limit of 1 it
    raised). A fresh process is what the user has: both caches start empty here."""
    torch._dynamo.reset()
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    m = cls(4, 8, backend=backend)
    compiled = torch.compile(m, fullgraph=True, backend=count)
    x = torch.randn(3, 2, 4)
    for _ in range(3):
        assert_close(cls.__name__, compiled(x)[0], m(x)[0])
    assert len(graphs) == 1, len(graphs)
    torch._dynamo.reset()


def test_env_lookup_never_grows_what_dynamo_guards_on(monkeypatch):
    """kernels._env encodes the per-call names once, at import, and never adds one
    after: a name a traced call reads for the first time must not change the dict that
    dynamo guards on (each addition recompiled the next call). Other names still see
    every change made through os.environ."""
    from rnnfast.kernels import _env
    before = dict(_env._KEYS)
    for name in ("RNNFAST_TRITON_TF32", "RNNFAST_TRITON_PERSISTENT", "RNNFAST_BACKEND",
                 "RNNFAST_LAYER_GEMM"):
        assert _env._FAST is False or name in before, name
    monkeypatch.delenv("RNNFAST_TEST_UNSEEN", raising=False)
    assert _env.getenv("RNNFAST_TEST_UNSEEN", "d") == "d"
    monkeypatch.setenv("RNNFAST_TEST_UNSEEN", "x")
    assert _env.getenv("RNNFAST_TEST_UNSEEN") == "x"
    monkeypatch.setenv("RNNFAST_TRITON_TF32", "1")
    assert _env.env_flag("RNNFAST_TRITON_TF32", False) is True
    assert _env._KEYS == before


@pytest.mark.no_poison
@pytest.mark.parametrize("cls", [rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU], ids=lambda c: c.__name__)
def test_torch_compile_packed_sequence_runs_outside_the_graph(cls):
    """A PackedSequence's batch sizes are data, which dynamo cannot guard on: the layer's
    call runs eagerly (a graph break; outputs and gradients those of the eager module)
    and under fullgraph=True dynamo's error says so and what to do (it raised "Could
    not guard on data-dependent expression Eq(u0, u1)" from the hidden-size check)."""
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    torch._dynamo.reset()
    m = cls(4, 6, backend="numba").double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([2, 5, 4])
    outs = []
    for fn in (m, torch.compile(m, backend="eager")):
        xs = x.clone().requires_grad_(True)
        y, _ = fn(pack_padded_sequence(xs, lengths, enforce_sorted=False))
        y.data.pow(2).sum().backward()
        outs.append((y.data, xs.grad))
    assert_close("output", outs[1][0], outs[0][0])
    assert_close("dx", outs[1][1], outs[0][1])
    full = torch.compile(m, fullgraph=True, backend="eager")
    with pytest.raises(torch._dynamo.exc.Unsupported,
                       match="PackedSequence input runs outside the compiled graph"):
        full(pack_padded_sequence(x, lengths, enforce_sorted=False))
    torch._dynamo.reset()

    class Wrap(torch.nn.Module):  # a PackedSequence built inside the exported program
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, data, batch_sizes):
            return self.m(PackedSequence(data, batch_sizes))[0].data

    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    # non-strict export runs the Python as it is (no dynamo): torch.nn's own
    # data-dependent error there, not a call that comes back to itself for good
    with pytest.raises(Exception) as got:
        torch.export.export(Wrap(), (packed.data, packed.batch_sizes), strict=False)
    assert not isinstance(got.value, RecursionError)


@pytest.mark.no_poison
@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Model()
    x = torch.randn(6, 4, 3)
    compiled = torch.compile(model, fullgraph=True)
    assert_close("loss", compiled(x), model(x))


def _eager_rnn(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, act, slope, be, probe):
    """ops.rnn (keyword API, resolved backend) called with the op's positional arguments."""
    backend = dispatch.resolve(be, x.device, x.dtype, h0.shape[-1])
    return ops.rnn(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=lengths, reverse=reverse,
                   activation=act, negative_slope=slope, backend=backend, probe=probe)


def _eager_lstm(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, be, probe):
    backend = dispatch.resolve(be, x.device, x.dtype, max(h0.shape[-1], c0.shape[-1]))
    return ops.lstm(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths=lengths,
                    reverse=reverse, backend=backend, probe=probe)


def _eager_gru(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, be, probe):
    backend = dispatch.resolve(be, x.device, x.dtype, h0.shape[-1])
    return ops.gru(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=lengths, reverse=reverse,
                   backend=backend, probe=probe)


EAGER_CASES = {
    "rnn": (_eager_rnn, ops.rnn_layer, _rnn_args(torch.float32)),
    "rnn-relu-reverse-lengths": (_eager_rnn, ops.rnn_layer, _rnn_args(
        torch.float32, lengths=torch.tensor([4, 2, 3]), reverse=True, act="relu")),
    "lstm": (_eager_lstm, ops.lstm_layer, _lstm_args(torch.float32)),
    "lstm-proj-reverse-lengths": (_eager_lstm, ops.lstm_layer, _lstm_args(
        torch.float32, lengths=torch.tensor([1, 4, 2]), reverse=True, proj=2)),
    "gru": (_eager_gru, ops.gru_layer, _gru_args(torch.float32)),
    "gru-nobias-reverse-lengths": (_eager_gru, ops.gru_layer, _gru_args(
        torch.float32, lengths=torch.tensor([3, 4, 1]), reverse=True, bias=False)),
}


@pytest.mark.parametrize("name", list(EAGER_CASES))
def test_eager_twin_matches_the_op(name):
    """ops.rnn / ops.lstm / ops.gru run an autograd.Function in eager mode; it must give
    the custom op's outputs and gradients bit for bit (the same impl and backward run
    inside)."""
    eager, op, args = EAGER_CASES[name]
    results = []
    n = None
    for fn in (eager, op):
        inputs = [a.detach().clone().requires_grad_() if torch.is_tensor(a) and a.requires_grad
                  else a for a in args]
        # the entry point gives (y, h_n) or, for the LSTM, (y, h_n, c_n); the op adds the
        # state it saves for backward (gates, cell states), left out of the comparison
        out = fn(*inputs)
        n = n or len(out)
        g = torch.Generator().manual_seed(0)
        loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in out[:n])
        loss.backward()
        grads = [a.grad for a in inputs if torch.is_tensor(a) and a.requires_grad]
        results.append([t.detach() for t in out[:n]] + grads)
    assert type(eager(*args)[0].grad_fn).__name__.startswith("_Eager")
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _strides(outs):
    return [(tuple(o.shape), o.stride()) for o in outs]


def _fake_call(op, args):
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode:
        return op(*fake)


@pytest.mark.no_poison
def test_backward_fakes_match_real_strides_for_a_transposed_input():
    """A batch_first module hands its layer ops a transposed x; the backward ops return
    contiguous gradients, and their fake implementations must say so (they copied x's
    strides, and torch.compile's inductor then failed on the real result)."""
    d = lambda t: t.detach().clone()  # noqa: E731
    tr = lambda t: d(t).transpose(0, 1).contiguous().transpose(0, 1)  # noqa: E731
    x, w_ih, w_hh, b_ih, b_hh, h0, lengths, rev, act, slope, be, _ = _rnn_args()
    y, _ = ops.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, rev, act, slope, be, None)
    args = (torch.randn_like(y), torch.randn_like(h0), tr(x), d(w_ih), d(w_hh), d(h0), d(y),
            None, False, act, slope, be, True, True, True)
    cases = [(ops.rnn_layer_bwd, args, 2)]
    a = _lstm_args(proj=2)
    y, h, c, gates, cs = ops.lstm_layer(*a[:-1], None)
    cases.append((ops.lstm_layer_bwd, (
        torch.randn_like(y), torch.randn_like(h), torch.randn_like(c), tr(a[0]), d(a[1]),
        d(a[2]), d(a[5]), d(a[6]), d(a[7]), d(y), d(gates), d(cs), None, False, "numba",
        True, True, True), 3))
    a = _gru_args()
    y, h, gates = ops.gru_layer(*a[:-1], None)
    cases.append((ops.gru_layer_bwd, (
        torch.randn_like(y), torch.randn_like(h), tr(a[0]), d(a[1]), d(a[2]), d(a[5]),
        d(y), d(gates), None, False, "numba", True, True, True), 2))
    for op, args, ix in cases:
        assert not args[ix].is_contiguous()
        assert _strides(_fake_call(op, args)) == _strides(op(*args)), op
