"""rnnfast as a drop-in for torch.nn beyond first-order training (issue 10).

One group per kind of use, each run for every cell (RNN tanh / relu / leaky_relu, LSTM
with and without proj_size, GRU) and backend (numba, torch; triton under
TRITON_INTERPRET=1), and compared with the twin: torch.nn's module with the same
state_dict (rnnfast's backend='torch' for leaky_relu, which torch.nn lacks).

1. second-order gradients (create_graph, gradgradcheck)    6. in-place ops on outputs
2. torch.func (grad, jacrev, vmap, hessian, batched grads) 7. torch.nn's exact errors
3. bfloat16 / float16 modules on the CPU                   8. ONNX export + onnxruntime
4. autocast (CPU, bfloat16 and float16)                    9. whole-model weights_only load
5. TorchScript (script, trace, save/load) and torch.export 10. what traced / exported
                                                               programs record
11. scenarios of torch's own RNN tests: reparametrized weights, pickling, dropout set later
"""

import copy
import functools
import io
import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrizations, prune
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast

from .tolerances import assert_close, tolerance
from .twins import (
    BACKENDS,
    CELLS,
    INTERPRET,
    B,
    H,
    I,
    T,
    as_list,
    as_state,
    backend_params,
    cell_params,
    initial_state,
    layout_kwargs,
    leaves,
    make_pair,
    options,
    problem,
    run,
    state_size,
    torch_class,
    upstream,
)

F64 = torch.float64
STATE_NAMES = ("h0", "c0")


def _names(module, n_state):
    return ["input", *STATE_NAMES[:n_state], *(n for n, _ in module.named_parameters())]


def _compare_lists(what, names, ours, twin, dtype=F64):
    assert len(ours) == len(twin), f"{what}: {len(ours)} tensors != torch.nn's {len(twin)}"
    for name, a, b in zip(names, ours, twin):
        if b is None:
            assert a is None, f"{what} {name}: rnnfast gives a tensor where torch.nn gives None"
            continue
        assert a is not None, f"{what} {name}: rnnfast gives None where torch.nn gives a tensor"
        assert a.dtype == b.dtype, f"{what} {name}: dtype {a.dtype} != torch.nn's {b.dtype}"
        assert_close(f"{what} {name}", a, b, dtype)


def _compare_nonfinite(what, a, b, dtype=F64):
    """rnnfast's a against torch.nn's b where either may hold NaN or Inf: NaN at the same
    places, Inf at the same places (and signs, through the values), the rest close."""
    assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN positions differ"
    fin = ~b.isnan()
    assert torch.equal(a[fin].isinf(), b[fin].isinf()), f"{what}: infinities differ"
    ok = fin & ~b.isinf()
    assert_close(what, a[ok], b[ok], dtype)


# ============================================================ 1. second-order gradients

# (module options, layout): one layer; two bidirectional layers; a packed batch.
SECOND_ORDER = {
    "1layer": ({}, "time_major"),
    "2layer-bidir": (dict(num_layers=2, bidirectional=True), "time_major"),
    "packed-bidir": (dict(bidirectional=True), "packed"),
    "batch_first": (dict(batch_first=True), "batch_first"),
}


def _first_order(module, x, state, layout):
    """Outputs, and first-order gradients of a loss with create_graph=True w.r.t. input,
    initial state and every parameter (in _names order), plus those leaves."""
    xs = leaves([x] + state)
    outs = run(module, xs[0], xs[1:], layout)
    loss = sum((o * u).sum() for o, u in zip(outs, upstream(outs)))
    wrt = xs + list(module.parameters())
    return outs, torch.autograd.grad(loss, wrt, create_graph=True, allow_unused=True), wrt


def _penalty_backward(grads, wrt, mask):
    """A WGAN-GP-shaped penalty on the first-order gradients selected by ``mask``, then
    backward; returns the second-order gradients of every leaf."""
    g = torch.Generator().manual_seed(3)
    penalty = sum((gr * torch.randn(gr.shape, generator=g, dtype=gr.dtype)).sum()
                  + gr.pow(2).sum() for gr, m in zip(grads, mask) if m)
    penalty.backward()
    return [t.grad for t in wrt]


@pytest.mark.parametrize("config", list(SECOND_ORDER))
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_double_backward_matches_torch(cell, backend, config):
    """create_graph=True gradients, a penalty on them, backward (a gradient penalty
    through a recurrent critic): outputs, first-order and second-order gradients of
    input, h0/c0 and every parameter equal torch.nn's in float64."""
    kwargs, layout = SECOND_ORDER[config]
    ours, twin = make_pair(cell, backend, **kwargs)
    x, state = problem(cell, twin)
    names = _names(twin, len(state))
    out_a, g1_a, wrt_a = _first_order(ours, x, state, layout)
    out_b, g1_b, wrt_b = _first_order(twin, x, state, layout)
    _compare_lists("output", ["output", "h_n", "c_n"], out_a, out_b)
    _compare_lists("first-order grad", names, g1_a, g1_b)
    mask = [b is not None and b.requires_grad for b in g1_b]
    for name, a, m in zip(names, g1_a, mask):
        assert not m or a.requires_grad, (
            f"first-order grad of {name} does not require grad (torch.nn's does): "
            f"a penalty on it would silently drop out of the loss")
    g2_a = _penalty_backward(g1_a, wrt_a, mask)
    g2_b = _penalty_backward(g1_b, wrt_b, mask)
    _compare_lists("second-order grad", names, g2_a, g2_b)


def _functional(module, cell):
    """f(params dict, x, state list) -> [output, h_n(, c_n)] through functional_call."""
    def f(params, x, state):
        y, hn = functional_call(module, params, (x, as_state(list(state), cell)))
        return [y] + as_list(hn)
    return f


@pytest.mark.parametrize("config", ["1layer", "2layer-bidir"])
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_gradgradcheck(cell, backend, config):
    """torch.autograd.gradgradcheck in float64 over input, h0/c0 and every weight, on a
    tiny problem (T=2, B=2, I=2, H=2), in fast mode (a random projection of the
    Jacobians). The weights enter as one flat vector: fast mode's cost grows with the
    number of input tensors, not their size."""
    kwargs, _ = SECOND_ORDER[config]
    ours, _ = make_pair(cell, backend, input_size=2, hidden_size=2, **kwargs)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 2, dtype=F64, generator=g)
    state = as_list(initial_state(cell, ours, 2, F64, g))
    names = [n for n, _ in ours.named_parameters()]
    shapes = [p.shape for p in ours.parameters()]
    f = _functional(ours, cell)
    n_state = len(state)

    def fn(x, *rest):
        split = rest[n_state].split([s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, split, shapes)}
        return tuple(f(params, x, rest[:n_state]))

    flat = torch.cat([p.detach().reshape(-1) for p in ours.parameters()])
    inputs = tuple(leaves([x] + state + [flat]))
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


# ============================================================ 2. torch.func

def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _scalar_loss(f, u):
    def loss(params, x, state):
        return sum((o * w).sum() for o, w in zip(f(params, x, state), u))
    return loss


def _func_setup(cell, backend, **kwargs):
    ours, twin = make_pair(cell, backend, **kwargs)
    x, state = problem(cell, twin)
    with torch.no_grad():
        u = upstream(run(twin, x, state))
    return ours, twin, x, state, u


def _flat(tree):
    leaves_, _ = torch.utils._pytree.tree_flatten(tree)
    return leaves_


def _tree_names(tree):
    paths, _ = torch.utils._pytree.tree_flatten_with_path(tree)
    return [torch.utils._pytree.keystr(p) for p, _ in paths]


@pytest.mark.parametrize("grad_mode", ["no_grad", "grad"])
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_forward_ad_dual_tensors(cell, backend, grad_mode):
    """torch.autograd.forward_ad: the tangent of every output for a dual input and a
    dual initial state, as torch.nn computes it (oneDNN off: its LSTM has no forward AD
    rule), in and out of grad mode: never a missing tangent."""
    import torch.autograd.forward_ad as fwAD
    ours, twin = make_pair(cell, backend)
    x, state = problem(cell, ours)
    g = torch.Generator().manual_seed(5)
    tx, ts = torch.randn(x.shape, generator=g, dtype=F64), \
        [torch.randn(s.shape, generator=g, dtype=F64) for s in state]
    res = []
    for m in (ours, twin):
        with fwAD.dual_level(), torch.backends.mkldnn.flags(enabled=False), \
                (torch.no_grad() if grad_mode == "no_grad" else torch.enable_grad()):
            outs = run(m, fwAD.make_dual(x, tx), [fwAD.make_dual(s, t)
                                                  for s, t in zip(state, ts)])
            res.append([fwAD.unpack_dual(o) for o in outs])
    for (p, t), (p2, t2), name in zip(*res, ("output", "h_n", "c_n")):
        assert_close(f"primal {name}", p, p2, F64)
        assert t is not None and t2 is not None, f"tangent of {name} missing"
        assert_close(f"tangent {name}", t, t2, F64)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_inference_mode_with_grad_enabled(cell, backend):
    """torch.inference_mode() with torch.enable_grad() inside: torch.nn returns outputs
    that require no grad; so does rnnfast (nothing to save for backward)."""
    ours, twin = make_pair(cell, backend, torch.float32)
    x, state = problem(cell, ours, dtype=torch.float32)
    res = []
    for m in (ours, twin):
        with torch.inference_mode(), torch.enable_grad():
            res.append(run(m, x, state))
    for a, b, name in zip(*res, ("output", "h_n", "c_n")):
        assert not a.requires_grad and not b.requires_grad
        assert_close(name, a, b, torch.float32)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_func_grad(cell, backend):
    ours, twin, x, state, u = _func_setup(cell, backend, num_layers=2)
    res = [torch.func.grad(_scalar_loss(_functional(m, cell), u), argnums=(0, 1, 2))(
        _params(m), x, state) for m in (ours, twin)]
    _compare_lists("torch.func.grad", _tree_names(res[1]), _flat(res[0]), _flat(res[1]))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_func_jacrev(cell, backend):
    """jacrev of the output w.r.t. every parameter and the input, via functional_call."""
    ours, twin, x, state, _ = _func_setup(cell, backend)
    res = []
    for m in (ours, twin):
        f = _functional(m, cell)
        res.append(torch.func.jacrev(lambda p, x: f(p, x, state)[0], argnums=(0, 1))(_params(m), x))
    _compare_lists("jacrev", _tree_names(res[1]), _flat(res[0]), _flat(res[1]))


@pytest.mark.parametrize("layout", ["time_major", "unbatched"])
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_func_vmap_over_inputs(cell, backend, layout):
    """vmap over a batch of N inputs (and states) equals torch.nn run on each one
    (torch.nn.LSTM itself has no batching rule, so the twin runs in a loop)."""
    ours, twin = make_pair(cell, backend)
    problems = [problem(cell, twin, seed=s) for s in range(3)]
    xs = torch.stack([p[0] for p in problems])
    states = [torch.stack(s) for s in zip(*(p[1] for p in problems))]
    got = torch.func.vmap(lambda x, *s: tuple(run(ours, x, list(s), layout)))(xs, *states)
    with torch.no_grad():
        want = [torch.stack(o) for o in zip(*(run(twin, x, s, layout) for x, s in problems))]
    _compare_lists("vmap", ["output", "h_n", "c_n"], list(got), want)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_func_per_sample_grads(cell, backend):
    """vmap(grad(loss)) over samples: the per-sample parameter gradients (Opacus-style)
    equal torch.nn's, one autograd backward per sample."""
    ours, twin = make_pair(cell, backend)
    problems = [problem(cell, twin, seed=s) for s in range(3)]
    xs = torch.stack([p[0] for p in problems])
    states = [torch.stack(s) for s in zip(*(p[1] for p in problems))]
    with torch.no_grad():
        u = upstream(run(twin, *problems[0]))
    loss = _scalar_loss(_functional(ours, cell), u)
    got = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(_params(ours), xs, states)
    want = {n: [] for n, _ in twin.named_parameters()}
    for x, s in problems:
        twin.zero_grad(set_to_none=True)
        sum((o * w).sum() for o, w in zip(run(twin, x, s), u)).backward()
        for n, p in twin.named_parameters():
            want[n].append(p.grad)
    for n in want:
        assert_close(f"per-sample grad {n}", got[n], torch.stack(want[n]), F64)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_func_hessian(cell, backend):
    """torch.func.hessian (forward-over-reverse) w.r.t. a tiny input (T=2, B=1, I=2)
    and w.r.t. weight_hh_l0."""
    ours, twin = make_pair(cell, backend, input_size=2, hidden_size=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 2, dtype=F64, generator=g)
    state = as_list(initial_state(cell, twin, 1, F64, g))
    with torch.no_grad():
        u = upstream(run(twin, x, state))
    res = []
    for m in (ours, twin):
        loss = _scalar_loss(_functional(m, cell), u)
        p = _params(m)
        hx = torch.func.hessian(lambda x: loss(p, x, state))(x)
        hw = torch.func.hessian(lambda w: loss({**p, "weight_hh_l0": w}, x, state))(
            p["weight_hh_l0"])
        res.append([hx, hw])
    _compare_lists("hessian", ["w.r.t. input", "w.r.t. weight_hh_l0"], res[0], res[1])


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_func_transforms_after_hessian_default_state(cell, backend):
    """Without hx (the zero initial state rnnfast makes itself): hessian twice, then
    jacrev and grad, each against torch.nn's. A zero state made inside jacfwd belongs
    to that transform's level; one kept for reuse across calls failed functorch's level
    check in every later transform."""
    ours, twin = make_pair(cell, backend, input_size=2, hidden_size=2)
    x = torch.randn(2, 1, 2, dtype=F64, generator=torch.Generator().manual_seed(6))

    def loss(m):
        return lambda x: sum(o.pow(2).sum() for o in run(m, x, []))

    for i, transform in enumerate((torch.func.hessian, torch.func.hessian,
                                   torch.func.jacrev, torch.func.grad)):
        assert_close(f"{transform.__name__} #{i}", transform(loss(ours))(x),
                     transform(loss(twin))(x), F64)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_autograd_grad_is_grads_batched(cell, backend):
    """torch.autograd.grad(outputs, inputs, v, is_grads_batched=True): N=3 upstream
    gradients at once, w.r.t. input, initial state and every parameter."""
    ours, twin = make_pair(cell, backend)
    x, state = problem(cell, twin)
    res = []
    for m in (ours, twin):
        xs = leaves([x] + state)
        outs = run(m, xs[0], xs[1:])
        g = torch.Generator().manual_seed(6)
        vs = [torch.randn((3, *o.shape), generator=g, dtype=o.dtype) for o in outs]
        res.append(list(torch.autograd.grad(outs, xs + list(m.parameters()), vs,
                                            is_grads_batched=True)))
    _compare_lists("batched grad", _names(twin, len(state)), res[0], res[1])


# ============================================================ 3. bfloat16 / float16 modules

LOW = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]


def _forward_backward(module, x, state, u, layout="time_major", autocast=None):
    """Outputs and [input, state..., params...] grads; the loss is formed in float32."""
    module.zero_grad(set_to_none=True)
    xs = leaves([x] + state)
    if autocast is None:
        outs = run(module, xs[0], xs[1:], layout)
    else:
        with torch.autocast("cpu", dtype=autocast):
            outs = run(module, xs[0], xs[1:], layout)
    sum((o.float() * w.float()).sum() for o, w in zip(outs, u)).backward()
    return outs, [t.grad for t in xs] + [p.grad for p in module.parameters()]


def _assert_as_accurate(what, got, want, truth, dtype):
    """got within the table's tolerance for ``dtype`` of torch.nn's own accuracy:
    |got - truth| <= |want - truth| + atol + rtol |truth| elementwise, truth being the
    float64 run. Implied by |got - want| <= atol + rtol |truth|, but it does not fail a
    backend for being closer to float64 than torch.nn (two low-precision
    implementations round differently where a gradient sums terms that cancel)."""
    atol, rtol = tolerance(dtype)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    e_got = (got.detach().double() - truth).abs()
    e_want = (want.detach().double() - truth).abs()
    bad = ~(e_got <= e_want + atol + rtol * truth.abs())
    if bad.any():
        k = int(torch.argmax((e_got - e_want).masked_fill(~bad, -1).flatten()))
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), got.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements less accurate than torch.nn "
            f"beyond atol={atol}, rtol={rtol} ({dtype}); worst at {idx}: rnnfast "
            f"{got[idx].item():.6g}, torch.nn {want[idx].item():.6g}, float64 "
            f"{truth[idx].item():.9g}")


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_low_precision_module(cell, backend, dtype):
    """module.to(bfloat16 / float16) on the CPU runs, forward and backward, with torch.nn's
    output and gradient dtypes, and values as close to float64 as torch.nn's in the same
    dtype, to the table's tolerance for that dtype (see _assert_as_accurate)."""
    ours, twin = make_pair(cell, backend, dtype=dtype, num_layers=2, bidirectional=True)
    x, state = problem(cell, twin, dtype=dtype)
    u = upstream(run(twin, x, state))
    out_a, g_a = _forward_backward(ours, x, state, u)
    out_b, g_b = _forward_backward(twin, x, state, u)
    exact = copy.deepcopy(twin).double()
    out_t, g_t = _forward_backward(exact, x.double(), [s.double() for s in state],
                                   [w.double() for w in u])
    names = ["output", "h_n", "c_n"][:len(u)] + _names(twin, len(state))
    for name, a, b, t in zip(names, out_a + g_a, out_b + g_b, out_t + g_t):
        assert a.dtype == b.dtype, f"{dtype} {name}: dtype {a.dtype} != torch.nn's {b.dtype}"
        _assert_as_accurate(f"{dtype} {name}", a, b, t, dtype)


# ============================================================ 4. autocast

def _policy_dtypes(cell, x, state, dtype, layout):
    """Output dtypes torch.nn gives under autocast for the cell's torch.nn class (the
    policy leaky_relu follows, having no torch.nn module of its own)."""
    kind, opts = options(cell)
    opts.pop("negative_slope", None)
    if opts.get("nonlinearity") == "leaky_relu":
        opts["nonlinearity"] = "relu"
    probe = getattr(nn, kind)(I, H, **opts)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        return [o.dtype for o in run(probe, x, state, layout)]


@pytest.mark.parametrize("layout", ["time_major", "packed"])
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_autocast(cell, backend, dtype, layout):
    """A float32 module inside torch.autocast('cpu', dtype), backward outside it: output
    and gradient dtypes follow torch.nn's (on torch 2.13: RNN/LSTM give the autocast
    dtype, GRU float32; a PackedSequence of unequal lengths into an LSTM without
    projection float32, as aten::lstm's packed overload is not autocast's: see
    test_autocast_packed_lstm_output_dtype), values as close to float64 as
    torch.nn's under the same autocast (see _assert_as_accurate). Where torch.nn itself
    fails (oneDNN has no float16 LSTM without projection) rnnfast may raise too, or
    return the autocast dtype within the table's tolerance of float64."""
    ours, twin = make_pair(cell, backend, dtype=torch.float32)
    x, state = problem(cell, twin, dtype=torch.float32)
    u = upstream(run(twin, x, state, layout))
    exact = copy.deepcopy(twin).double()
    out_t, g_t = _forward_backward(exact, x.double(), [s.double() for s in state],
                                   [w.double() for w in u], layout)
    names = ["output", "h_n", "c_n"][:len(u)] + _names(twin, len(state))
    try:
        expected_dtypes = _policy_dtypes(cell, x, state, dtype, layout)
        out_b, g_b = _forward_backward(twin, x, state, u, layout, autocast=dtype)
    except RuntimeError as exc:
        try:
            out_a, g_a = _forward_backward(ours, x, state, u, layout, autocast=dtype)
        except RuntimeError:
            return
        assert [o.dtype for o in out_a[:2]] == [dtype, dtype], (
            f"torch.nn raises under autocast ({exc}); rnnfast runs but returns "
            f"{[o.dtype for o in out_a]}")
        for name, a, t in zip(names, out_a + g_a, out_t + g_t):
            _assert_as_accurate(f"autocast {name}", a, t.to(a.dtype), t, dtype)
        return
    out_a, g_a = _forward_backward(ours, x, state, u, layout, autocast=dtype)
    assert [o.dtype for o in out_a] == expected_dtypes, (
        f"autocast output dtypes {[o.dtype for o in out_a]} != torch.nn's {expected_dtypes}")
    for name, a, b, t in zip(names, out_a + g_a, out_b + g_b, out_t + g_t):
        assert a.dtype == b.dtype, f"autocast {name}: dtype {a.dtype} != torch.nn's {b.dtype}"
        _assert_as_accurate(f"autocast {name}", a, b, t, dtype)


@pytest.mark.parametrize("case", ["x", "h0", "c0", "weight", "all", "all but h0"])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_autocast_float64_operands(kind, case):
    """Under torch.autocast('cpu', bfloat16), float64 tensors are not cast: a float64
    input, hx or weight among float32 ones makes torch.nn raise (its products meet
    Double and BFloat16), and rnnfast raises the same message before any kernel runs,
    where it used to cast them all and run; an all-float64 module and input run in
    float64 on both, not in bfloat16."""
    if case == "c0" and kind != "LSTM":
        pytest.skip("no c0")
    results = []
    for cls in (getattr(nn, kind), functools.partial(getattr(rnnfast, kind),
                                                       backend="numba")):
        torch.manual_seed(0)
        m = cls(3, 5)
        x, h, c = torch.randn(4, 2, 3), torch.randn(1, 2, 5), torch.randn(1, 2, 5)
        if case.startswith("all"):
            m, x, h, c = m.double(), x.double(), h.double(), c.double()
            h = h.float() if case == "all but h0" else h
        elif case == "weight":
            m.weight_hh_l0.data = m.weight_hh_l0.data.double()
        else:
            x, h, c = [t.double() if case == n else t for t, n in
                       ((x, "x"), (h, "h0"), (c, "c0"))]
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, _ = m(x, (h, c) if kind == "LSTM" else h)
            results.append(out)
        except RuntimeError as e:
            results.append(str(e))
    want, got = results
    if isinstance(want, str):
        assert isinstance(got, str) and got == want, \
            f"torch.nn raises {want!r}; rnnfast: {got if isinstance(got, str) else 'runs'}"
    else:
        assert not isinstance(got, str), f"torch.nn runs; rnnfast raises {got!r}"
        assert got.dtype == want.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


_OPERAND_DTYPES = (torch.float32, torch.float64, torch.int64, torch.bool, torch.complex64)


@pytest.mark.parametrize("layout", ["padded", "packed equal", "packed ragged"])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "LSTM proj", "GRU"])
def test_autocast_operands_torch_does_not_cast(kind, layout):
    """Under torch.autocast('cpu', bfloat16) only float32 / float16 / bfloat16 tensors
    are cast: an integer, bool or complex input or state (or a float64 one among
    float32) reaches a product as it is, and torch.nn raises that product's message
    (the input's first, then an LSTM's oneDNN call or h_0's product). rnnfast raises the
    same message, before any kernel runs, where it used to cast them and run (an int64
    input returned bfloat16, a complex one lost its imaginary part); where torch.nn
    runs (an integer c_0 outside oneDNN is promoted), rnnfast runs, in its dtype. Where
    torch.nn's oneDNN LSTM refuses the bfloat16 call (a CPU without oneDNN's bfloat16
    LSTM: "could not create a primitive descriptor"), rnnfast runs it and returns the
    autocast dtype (README)."""
    cell, proj = kind.split()[0], 3 if kind.endswith("proj") else 0
    kw = {"proj_size": proj} if proj else {}
    P = proj or 7
    lengths = {"padded": None, "packed equal": [4, 4], "packed ragged": [4, 2]}[layout]
    combos = [(x, None, None) for x in _OPERAND_DTYPES] + [
        (torch.float32, h, c) for h in _OPERAND_DTYPES for c in _OPERAND_DTYPES[:3]
        if cell == "LSTM" or c is torch.float32] + [
        (torch.float64, torch.int64, torch.float32), (torch.int64, torch.float64, torch.float64)]
    mismatches = []
    for x_dtype, h_dtype, c_dtype in combos:
        results = []
        for lib in (nn, rnnfast):
            torch.manual_seed(0)
            m = getattr(lib, cell)(5, 7, **kw)
            x = torch.ones(4, 2, 5, dtype=x_dtype)
            if lengths is not None:
                x = pack_padded_sequence(x, lengths)
            hx = None if h_dtype is None else (
                (torch.zeros(1, 2, P, dtype=h_dtype), torch.zeros(1, 2, 7, dtype=c_dtype))
                if cell == "LSTM" else torch.zeros(1, 2, 7, dtype=h_dtype))
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out, _ = m(x, hx)
                results.append((out.data if lengths else out).dtype)
            except RuntimeError as e:
                results.append(str(e))
        refused = isinstance(results[0], str) and "primitive descriptor" in results[0]
        if refused and cell == "LSTM" and results[1] == torch.bfloat16:
            continue  # oneDNN's refusal, which rnnfast runs (see above)
        if results[0] != results[1]:
            mismatches.append(((x_dtype, h_dtype, c_dtype), *results))
    assert not mismatches, "\n".join(map(str, mismatches))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("h_dtype", [torch.float32, torch.bfloat16, torch.float16, None])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16])
def test_autocast_gru_output_dtype(autocast, x_dtype, h_dtype, packed):
    """A float32 GRU under torch.autocast('cpu', dtype) given inputs and h0 of low
    precision: output and h_n come in torch.nn's dtype (its CPU GRU is not in autocast's
    list, its products are: h0's dtype, x's without h0, promoted with the autocast
    dtype), with values as close to torch.nn's as that dtype allows."""
    outs = []
    for cls in (nn.GRU, functools.partial(rnnfast.GRU, backend="numba")):
        torch.manual_seed(0)
        m = cls(3, 5)
        x = torch.randn(4, 2, 3).to(x_dtype)
        h = None if h_dtype is None else torch.randn(1, 2, 5).to(h_dtype)
        if packed:
            x = pack_padded_sequence(x, torch.tensor([4, 3]))
        with torch.autocast("cpu", dtype=autocast):
            y, h_n = m(x, h)
        outs.append((y.data if packed else y, h_n))
    for got, want in zip(outs[1], outs[0]):
        assert got.dtype == want.dtype, f"dtype {got.dtype} != torch.nn's {want.dtype}"
        torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("layout", ["padded", "unbatched"])
@pytest.mark.parametrize("h_dtype", [torch.float32, torch.bfloat16, torch.float16, None])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16])
def test_autocast_lstm_output_dtype(autocast, x_dtype, h_dtype, layout):
    """A float32 LSTM under torch.autocast('cpu', dtype) given a low-precision input and
    state: output, h_n and c_n in torch.nn's dtypes, values as close as that dtype
    allows. A float16 input whose h_0 is not in the autocast dtype (zeros in the input's
    without hx) comes back in float32 from torch.nn; rnnfast returned the autocast dtype.
    Where torch.nn's oneDNN LSTM refuses the call (float16 on CPUs without its float16
    LSTM) rnnfast runs it and returns the autocast dtype (README)."""
    outs = []
    for cls in (nn.LSTM, functools.partial(rnnfast.LSTM, backend="numba")):
        torch.manual_seed(0)
        m = cls(3, 5)
        shape = (4, 2) if layout == "padded" else (4,)
        x = torch.randn(*shape, 3).to(x_dtype)
        h = None if h_dtype is None else tuple(
            torch.randn(1, *shape[1:], 5).to(h_dtype) for _ in range(2))
        try:
            with torch.autocast("cpu", dtype=autocast):
                y, (h_n, c_n) = m(x, h)
        except RuntimeError as e:
            assert cls is nn.LSTM and "primitive descriptor" in str(e), e
            pytest.skip("torch.nn's oneDNN LSTM refuses this call on this CPU")
        outs.append((y, h_n, c_n))
    for got, want in zip(outs[1], outs[0]):
        assert got.dtype == want.dtype, f"dtype {got.dtype} != torch.nn's {want.dtype}"
        torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("lengths", [(4, 4), (4, 3)], ids=["equal", "ragged"])
@pytest.mark.parametrize("state", ["none", "float32", "low", "c0-low"])
@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16])
def test_autocast_packed_lstm_output_dtype(autocast, state, lengths, proj_size):
    """A float32 LSTM given a PackedSequence under torch.autocast('cpu', dtype): output,
    h_n and c_n come in torch.nn's dtypes, which depend on the lengths (all equal: a
    padded batch on oneDNN, the autocast dtype) and on c_0's dtype (otherwise: c_0's
    promoted with the autocast dtype; a projection's output and h_n in the autocast
    dtype), with values as close to torch.nn's as that dtype allows. Where torch.nn's
    oneDNN LSTM refuses (float16, equal lengths) rnnfast returns the autocast dtype."""
    outs = []
    for cls in (nn.LSTM, functools.partial(rnnfast.LSTM, backend="numba")):
        torch.manual_seed(0)
        m = cls(3, 5, proj_size=proj_size)
        P = proj_size or 5
        x = pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor(lengths))
        low = {"none": None, "float32": (torch.float32,) * 2, "low": (autocast,) * 2,
               "c0-low": (torch.float32, autocast)}[state]
        hx = None if low is None else (torch.randn(1, 2, P).to(low[0]),
                                       torch.randn(1, 2, 5).to(low[1]))
        try:
            with torch.autocast("cpu", dtype=autocast):
                y, (h_n, c_n) = m(x, hx)
        except RuntimeError as exc:
            assert cls is nn.LSTM and "primitive descriptor" in str(exc), exc
            outs.append(None)
            continue
        outs.append((y.data, h_n, c_n))
    if outs[0] is None:  # torch.nn's oneDNN LSTM has no float16 here (nor bfloat16
        # on a CPU without oneDNN's bfloat16 support, such as one held to AVX2)
        assert lengths == (4, 4) and proj_size == 0
        assert all(t.dtype == autocast for t in outs[1])
        return
    for got, want in zip(outs[1], outs[0]):
        assert got.dtype == want.dtype, f"dtype {got.dtype} != torch.nn's {want.dtype}"
        torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("data_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sizes, rows", [([2, 2, 0], 4), ([0, 0], 0), ([2, 2], 4)],
                         ids=["trailing-zero", "empty", "equal"])
def test_autocast_packed_lstm_batch_sizes_as_given(sizes, rows, data_dtype):
    """torch.nn's packed LSTM tests the batch_sizes it is given (trailing zeros kept),
    the data's size and its dtype (float16 data: not on a CPU without oneDNN's float16
    support) for its oneDNN route: under CPU autocast a trailing zero, an empty batch or
    data oneDNN does not take make the outputs float32 (c_0's dtype), equal sizes the
    autocast dtype; rnnfast, which runs the batch without the zeros, returns the same
    dtypes (and the autocast dtype where oneDNN refuses bfloat16: a CPU without its
    bfloat16 support, such as one held to AVX2)."""
    got = []
    for cls in (nn.LSTM, functools.partial(rnnfast.LSTM, backend="numba")):
        torch.manual_seed(0)
        m = cls(3, 5)
        packed = PackedSequence(torch.randn(rows, 3).to(data_dtype), torch.tensor(sizes))
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, (h_n, c_n) = m(packed)
        except RuntimeError as exc:
            assert cls is nn.LSTM and "primitive descriptor" in str(exc), exc
            got.append([torch.bfloat16] * 3)
            continue
        got.append([t.dtype for t in (y.data, h_n, c_n)])
    assert got[1] == got[0], f"dtypes {got[1]} != torch.nn's {got[0]}"


@pytest.mark.parametrize("layout", ["padded", "equal", "ragged"])
def test_autocast_projected_lstm_c_n_dtype(layout):
    """A projected LSTM under torch.autocast('cpu', dtype): torch.nn returns output and
    h_n in the autocast dtype and c_n in c_0's dtype promoted with it (c_0: hx's, or the
    input's without hx), for every mix of float32 / bfloat16 / float16 input and hx, one
    layer or two bidirectional, padded or packed; rnnfast returns the same dtypes (where
    torch.nn itself fails, "Unexpected floating ScalarType" in autocast, rnnfast runs)."""
    checked = 0
    for opts in ({}, {"num_layers": 2, "bidirectional": True}):
        outs = []
        for cls in (nn.LSTM, functools.partial(rnnfast.LSTM, backend="numba")):
            torch.manual_seed(0)
            outs.append(cls(3, 5, proj_size=2, **opts))
        twin, ours = outs
        D = twin.num_layers * (2 if twin.bidirectional else 1)
        for cast in (torch.bfloat16, torch.float16):
            for x_dtype in (torch.float32, torch.bfloat16, torch.float16):
                for h_dtype in (None, torch.float32, torch.bfloat16, torch.float16):
                    x = torch.randn(4, 2, 3).to(x_dtype)
                    if layout != "padded":
                        lengths = (4, 4) if layout == "equal" else (4, 2)
                        x = pack_padded_sequence(x, torch.tensor(lengths))
                    hx = None if h_dtype is None else (torch.randn(D, 2, 2).to(h_dtype),
                                                       torch.randn(D, 2, 5).to(h_dtype))
                    try:
                        with torch.autocast("cpu", dtype=cast):
                            want = twin(x, hx)
                    except RuntimeError as exc:
                        assert "Unexpected floating ScalarType" in str(exc), exc
                        continue
                    with torch.autocast("cpu", dtype=cast):
                        got = ours(x, hx)
                    dtypes = [(o.data if layout != "padded" else o).dtype
                              for o in (got[0], *got[1])]
                    expected = [(o.data if layout != "padded" else o).dtype
                                for o in (want[0], *want[1])]
                    assert dtypes == expected, (opts, cast, x_dtype, h_dtype, dtypes, expected)
                    checked += 1
    assert checked >= 40


# ============================================================ 5. TorchScript, torch.export

class Head(nn.Module):
    """A small model around a recurrent submodule: what TorchScript and tracing see."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        width = rnn.proj_size if rnn.proj_size > 0 else rnn.hidden_size
        self.fc = nn.Linear(width * (2 if rnn.bidirectional else 1), 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y)


def _head(cell, backend, seed=0):
    ours, _ = make_pair(cell, backend, dtype=torch.float32, seed=seed)
    torch.manual_seed(seed)
    return Head(ours).eval()


def _inputs(*shapes, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


def _grads_of(model, x):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [y, x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.no_poison
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_jit_script(cell, backend):
    """torch.jit.script of a model that calls an rnnfast submodule runs and matches eager,
    forward and backward; leaky_relu, which torch.nn (what TorchScript scripts) lacks,
    refuses with a clear error instead."""
    model = _head(cell, backend)
    if cell == "leaky_relu":
        with pytest.raises(rnnfast.RNNArgumentError, match="leaky_relu.*not supported"):
            torch.jit.script(model)
        return
    scripted = torch.jit.script(model)
    x, = _inputs((T, B, I))
    names = ["output", "input grad"] + [n for n, _ in model.named_parameters()]
    _compare_lists("scripted", names, _grads_of(scripted, x), _grads_of(model, x), torch.float32)


@pytest.mark.parametrize("cell", cell_params(["tanh", "lstm", "gru"]))
def test_jit_script_says_when_it_swaps_a_submodule(cell):
    """torch.jit.script writes what a submodule's __prepare_scriptable__ returns (here
    torch.nn's twin) into the parent for good, so the user's eager model then runs
    torch's kernels: rnnfast warns exactly then (a new user's pass found the swap
    silent). A top-level module is left as it is, and no warning comes."""
    message = "torch.jit.script puts a torch.nn"
    model = _head(cell, "numba")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.script(model)
    warned = any(message in str(w.message) for w in caught)
    swapped = not isinstance(model.rnn, rnnfast.modules._FusedRNNBase)
    assert warned and swapped, (warned, swapped)
    copy_kept = _head(cell, "numba")
    torch.jit.script(copy.deepcopy(copy_kept))
    assert isinstance(copy_kept.rnn, rnnfast.modules._FusedRNNBase)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.script(copy_kept.rnn)
    assert not any(message in str(w.message) for w in caught)


@pytest.mark.no_poison
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_jit_trace_and_save_load(cell, backend, tmp_path):
    """torch.jit.trace runs and matches eager on new values, and on a new (T, B) as a
    traced torch.nn module does (not for backend='torch': its reference loop is Python
    over T, which a trace unrolls), and survives torch.jit.save / torch.jit.load."""
    model = _head(cell, backend)
    x, x_new, x_shape = _inputs((T, B, I), (T, B, I), (T - 1, B - 1, I))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)
    path = tmp_path / "traced.pt"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        for name, prog in (("traced", traced), ("loaded", loaded)):
            for xi in (x_new, x_shape) if backend != "torch" else (x_new,):
                assert_close(f"{name} T={xi.shape[0]} B={xi.shape[1]}", prog(xi), model(xi))
    names = ["output", "input grad"] + [n for n, _ in model.named_parameters()]
    _compare_lists("traced", names, _grads_of(traced, x_new), _grads_of(model, x_new),
                   torch.float32)


@pytest.mark.parametrize("cell", cell_params())
def test_jit_trace_warns_as_torch_nn_does(cell):
    """torch.jit.trace of a two-layer bidirectional module gives the TracerWarnings
    torch.nn's gives (its own hx and hidden-size checks), not one more per weight from
    rnnfast's checks of the weights' shapes."""
    kind, opts = options(cell)
    if opts.get("nonlinearity") == "leaky_relu":
        pytest.skip("torch.nn has no leaky-ReLU RNN to compare with")
    opts.pop("negative_slope", None)
    x = torch.randn(T, B, I)
    counts = []
    for cls in (getattr(nn, kind), functools.partial(getattr(rnnfast, kind), backend="numba")):
        m = cls(I, H, num_layers=2, bidirectional=True, **opts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.jit.trace(m, (x,), check_trace=False)
        counts.append(sum(issubclass(w.category, torch.jit.TracerWarning) for w in caught))
    assert counts[1] == counts[0], f"TracerWarnings: rnnfast {counts[1]}, torch.nn {counts[0]}"


class WordLM(nn.Module):
    """PyTorch's example word-level language model (examples/word_language_model):
    embedding, a two-layer recurrent stack with dropout, linear decoder, log-softmax."""

    def __init__(self, rnn, ntoken=11):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, rnn.input_size)
        self.rnn = rnn
        width = rnn.proj_size if rnn.proj_size > 0 else rnn.hidden_size
        self.decoder = nn.Linear(width, ntoken)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden


def _word_lm(cell, backend, seed=0):
    ours, _ = make_pair(cell, backend, dtype=torch.float32, input_size=4, seed=seed,
                        num_layers=2, dropout=0.2)
    torch.manual_seed(seed)
    return WordLM(ours).eval()


def _lm_inputs(cell, model, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.ntoken, (T, B), generator=g)
    return tokens, as_state(as_list(initial_state(cell, model.rnn, B, torch.float32, g)), cell)


# torch.export: "auto" is what a user gets (numba on the CPU, resolved at run time);
# each export takes seconds, so the explicit backends are left to the eager tests.
EXPORT_BACKENDS = ["triton"] if INTERPRET else ["auto"]


@functools.lru_cache(maxsize=None)
def _exported(cell, backend):
    model = _word_lm(cell, backend)
    ep = torch.export.export(model, _lm_inputs(cell, model, seed=8))
    return model, ep


@pytest.mark.no_poison
@pytest.mark.parametrize("backend", backend_params(EXPORT_BACKENDS))
@pytest.mark.parametrize("cell", cell_params())
def test_torch_export(cell, backend):
    """torch.export.export of the word LM runs and matches eager on new inputs."""
    model, ep = _exported(cell, backend)
    tokens, hidden = _lm_inputs(cell, model, seed=9)
    with torch.no_grad():
        got = _flat(ep.module()(tokens, hidden))
        want = _flat(model(tokens, hidden))
    _compare_lists("exported", ["log_softmax", "h_n", "c_n"], got, want, torch.float32)


# ============================================================ 6. in-place ops on outputs

# name -> (layout, module options, output index, in-place op). Output 0 is y (a
# PackedSequence's data for "packed"), 1 is h_n, 2 is c_n.
INPLACE = {
    "output-relu_": ("time_major", {}, 0, lambda t: t.relu_()),
    "h_n-mul_": ("time_major", {}, 1, lambda t: t.mul_(2)),
    "c_n-mul_": ("time_major", {}, 2, lambda t: t.mul_(2)),
    "2layer-bidir-output-sigmoid_": ("time_major", dict(num_layers=2, bidirectional=True), 0,
                                     lambda t: t.sigmoid_()),
    "batch_first-output-relu_": ("batch_first", {}, 0, lambda t: t.relu_()),
    "batch_first-h_n-add_": ("batch_first", {}, 1, lambda t: t.add_(1)),
    "packed-output-relu_": ("packed", {}, 0, lambda t: t.relu_()),
    "unbatched-output-mul_": ("unbatched", {}, 0, lambda t: t.mul_(3)),
    "output-slice-zero_": ("time_major", {}, 0, lambda t: t[0].zero_()),
}


@pytest.mark.parametrize("case", list(INPLACE))
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_inplace_on_outputs(cell, backend, case):
    """An in-place op on a returned tensor, then backward: works, and every gradient
    equals torch.nn's doing the same (no returned tensor is one backward reads)."""
    layout, kwargs, index, op = INPLACE[case]
    if index == 2 and CELLS[cell][0] != "LSTM":
        pytest.skip("c_n exists for LSTM only")
    ours, twin = make_pair(cell, backend, **kwargs, **layout_kwargs(layout))
    x, state = problem(cell, twin)
    res = []
    for m in (ours, twin):
        xs = leaves([x] + state)
        outs = run(m, xs[0], xs[1:], layout)
        op(outs[index])
        sum((o * w).sum() for o, w in zip(outs, upstream(outs))).backward()
        res.append((outs, [t.grad for t in xs] + [p.grad for p in m.parameters()]))
    _compare_lists("output", ["output", "h_n", "c_n"], res[0][0], res[1][0])
    _compare_lists("grad", _names(twin, len(state)), res[0][1], res[1][1])


# Which outputs a loss reads -> which gradients torch.nn leaves None. One time step and a
# loss on c_n alone: h_1 = W_hr (o * tanh(c_1)) feeds nothing, so weight_hr gets None.
UNUSED = {"c_n-T1": (1, (2,)), "c_n-T1-2layer-bidir": (1, (2,)), "h_n-T1": (1, (1,)),
          "c_n-T3": (T, (2,)), "output-T1": (1, (0,))}


@pytest.mark.parametrize("case", list(UNUSED))
@pytest.mark.parametrize("create_graph", [False, True], ids=["first", "create_graph"])
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_unused_parameter_gets_no_gradient(cell, backend, create_graph, case):
    """A parameter no output of the loss depends on gets None as its gradient, where
    torch.nn's does (not a tensor of zeros), and autograd.grad raises torch's error
    for it; every other gradient equals torch.nn's."""
    steps, used = UNUSED[case]
    if max(used) >= (3 if CELLS[cell][0] == "LSTM" else 2):
        pytest.skip("c_n exists for LSTM only")
    kwargs = dict(num_layers=2, bidirectional=True) if "2layer" in case else {}
    ours, twin = make_pair(cell, backend, **kwargs)
    x = torch.randn(steps, B, I, dtype=F64, generator=torch.Generator().manual_seed(5))

    def loss_of(m, x):
        out, state = m(x)
        outs = [out, *(state if isinstance(state, tuple) else (state,))]
        return sum(outs[i].pow(2).sum() for i in used)

    grads = []
    for m in (ours, twin):
        xs, params = leaves([x]), list(m.parameters())
        g = torch.autograd.grad(loss_of(m, xs[0]), xs + params, create_graph=create_graph,
                                allow_unused=True)
        grads.append(list(g))
        unused = [p for p, gp in zip(params, g[len(xs):]) if gp is None]
        if unused:
            with pytest.raises(RuntimeError, match="appears to not have been used in the graph"):
                torch.autograd.grad(loss_of(m, xs[0]), unused[:1])
    _compare_lists(case, _names(twin, 0), grads[0], grads[1])


# ============================================================ 7. torch.nn's exact errors

def _hx(cell, n, batch, hsize, csize, dims=3):
    """A state of given sizes: h [n, batch, hsize] (and c [n, batch, csize] for LSTM);
    dims=2 drops the batch dimension."""
    shape = (lambda s: (n, batch, s)) if dims == 3 else (lambda s: (n, s))
    h = torch.zeros(shape(hsize))
    return (h, torch.zeros(shape(csize))) if CELLS[cell][0] == "LSTM" else h


# name -> (module options, cells it applies to or None for all, builder(cell) -> (input, hx)).
# Each is a check torch.nn makes before any computation; the test asserts torch.nn raises.
_x = functools.partial(torch.zeros, T, B, I)
ERRORS = {
    "input-dtype": ({}, None, lambda c: (_x(dtype=F64), None)),
    "input-size": ({}, None, lambda c: (torch.zeros(T, B, I + 1), None)),
    "input-4d": ({}, None, lambda c: (torch.zeros(T, B, I, 1), None)),
    "input-1d": ({}, None, lambda c: (torch.zeros(I), None)),
    "zero-length": ({}, None, lambda c: (torch.zeros(0, B, I), None)),
    "zero-length-float64": ({}, None, lambda c: (torch.zeros(0, B, I, dtype=F64), None)),
    "hidden-size": ({}, None, lambda c: (_x(), _hx(c, 1, B, state_size(c) + 1, H))),
    "hidden-batch": ({}, None, lambda c: (_x(), _hx(c, 1, B + 1, state_size(c), H))),
    "hidden-layers": ({}, None, lambda c: (_x(), _hx(c, 2, B, state_size(c), H))),
    "hidden-layers-2layer": (dict(num_layers=2), None,
                             lambda c: (_x(), _hx(c, 1, B, state_size(c), H))),
    "hidden-directions": (dict(bidirectional=True), None,
                          lambda c: (_x(), _hx(c, 1, B, state_size(c), H))),
    "cell-size": ({}, ["lstm", "lstm_proj"], lambda c: (_x(), _hx(c, 1, B, state_size(c), H + 1))),
    "cell-batch": ({}, ["lstm", "lstm_proj"], lambda c: (
        _x(), (torch.zeros(1, B, state_size(c)), torch.zeros(1, B + 1, H)))),
    "proj-hidden-of-hidden-size": ({}, ["lstm_proj"], lambda c: (_x(), _hx(c, 1, B, H, H))),
    "unbatched-cell-size": ({}, ["lstm", "lstm_proj"],
                            lambda c: (_x()[:, 0], _hx(c, 1, B, state_size(c), H + 1, dims=2))),
    "batched-input-2d-hidden": ({}, None, lambda c: (_x(), _hx(c, 1, B, state_size(c), H, dims=2))),
    "unbatched-input-3d-hidden": ({}, None,
                                  lambda c: (_x()[:, 0], _hx(c, 1, 1, state_size(c), H))),
    "packed-2d-hidden": ({}, ["tanh", "relu", "leaky_relu", "gru"], lambda c: (
        pack_padded_sequence(_x(), torch.tensor([3, 2])), _hx(c, 1, B, state_size(c), H, dims=2))),
    "packed-hidden-size": ({}, None, lambda c: (
        pack_padded_sequence(_x(), torch.tensor([3, 2])), _hx(c, 1, B, state_size(c) + 1, H))),
}


# (case, class) where torch.nn raises from deep inside its computation rather than from a
# check of its own (for a packed LSTM it never compares the hidden size): the wording is
# not one to copy, so only the exception class must match.
INCIDENTAL = {("packed-hidden-size", "LSTM")}


def _error_params():
    out = []
    for name, (_, cells, _) in ERRORS.items():
        for p in cell_params(cells):
            out.append(pytest.param(p.values[0], name, id=f"{p.id}-{name}", marks=p.marks))
    return out


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell,case", _error_params())
def test_error_matches_torch(cell, case, backend):
    """The same bad input raises torch.nn's exception class with torch.nn's message
    (rnnfast may add text around it, e.g. the module name in front as torch does), except
    where torch.nn's message is incidental (INCIDENTAL): then the class alone."""
    kwargs, _, build = ERRORS[case]
    kind, opts = options(cell, **kwargs)
    torch_opts = {k: v for k, v in opts.items() if k != "negative_slope"}
    if torch_opts.get("nonlinearity") == "leaky_relu":
        torch_opts["nonlinearity"] = "relu"
    ours = getattr(rnnfast, kind)(I, H, backend=backend, **opts)
    twin = torch_class(cell)(I, H, **torch_opts)
    x, hx = build(cell)
    with pytest.raises(Exception) as caught:
        twin(x, hx)
    torch_exc = caught.value
    message = None if (case, kind) in INCIDENTAL else re.escape(str(torch_exc))
    with pytest.raises(type(torch_exc), match=message):
        ours(x, hx)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_hidden_dtype_mismatch_raises_like_torch(cell, backend):
    """h0 in float64 for a float32 module: torch.nn raises a RuntimeError (from its
    matmul, so its wording is not a check to copy); rnnfast must raise the same class."""
    ours, twin = make_pair(cell, backend, dtype=torch.float32)
    x = torch.zeros(T, B, I)
    hx = as_state([t.double() for t in as_list(initial_state(cell, twin, B, torch.float32))], cell)
    with pytest.raises(Exception) as caught:
        twin(x, hx)
    with pytest.raises(type(caught.value)):
        ours(x, hx)


@pytest.mark.parametrize("which", ["weight_hh_l0", "bias_ih_l0"])
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_parameter_of_another_dtype_raises_like_torch(cell, backend, which):
    """One float32 parameter in a float64 module: torch.nn fails inside its operator
    (RNN and GRU: "self and mat2 must have the same dtype, but got Double and Float");
    rnnfast raises that message up front, naming the parameter, where its kernels ran
    each weight in its own dtype before (a new user's pass, 2026-12-05)."""
    ours, twin = make_pair(cell, backend)
    for m in (ours, twin):
        setattr(m, which, nn.Parameter(getattr(m, which).detach().float()))
    x = torch.randn(T, B, I, dtype=F64)
    with pytest.raises(RuntimeError):
        twin(x)
    with pytest.raises(RuntimeError, match=re.escape(
            f"parameter {which} has dtype torch.float32, but weight_ih_l0 has "
            f"torch.float64: self and mat2 must have the same dtype, but got Double "
            f"and Float")):
        ours(x)


def _packed_pair(cell, backend):
    ours, twin = make_pair(cell, backend)
    x = torch.randn(6, 4, I, dtype=F64)
    return ours, twin, pack_padded_sequence(x, torch.tensor([6, 4, 2, 1]))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_malformed_packed_sequence_follows_torch(cell, backend):
    """PackedSequences that torch's pack functions never make: int32 batch_sizes and a
    zero or an increase inside batch_sizes raise before any kernel reads them (torch.nn
    raises too: "expected scalar type Long but found Int", a size mismatch); trailing
    zeros in batch_sizes are steps with no row, and rows of data past sum(batch_sizes)
    are ignored, as torch.nn ignores both."""
    from torch.nn.utils.rnn import PackedSequence
    ours, twin, p = _packed_pair(cell, backend)
    for m in (twin, ours):
        with pytest.raises(RuntimeError, match="expected scalar type Long but found Int"):
            m(PackedSequence(p.data, p.batch_sizes.int()))
    # a 0 inside or an increase: torch.nn raises (a size mismatch) or runs on with rows
    # out of place; rnnfast raises
    for sizes in ([4, 3, 0, 2, 2, 1, 1], [3, 4, 2, 2, 1, 1]):
        bad = PackedSequence(p.data, torch.tensor(sizes))
        with pytest.raises(RuntimeError):
            twin(bad)
        with pytest.raises(RuntimeError, match=re.escape(
                f"batch_sizes must be non-increasing and positive before any trailing "
                f"zeros (as pack_padded_sequence and pack_sequence make them), got "
                f"{sizes}")):
            ours(bad)
    # trailing zeros: steps with no row, which torch.nn runs as no-ops; so does rnnfast,
    # and the output keeps them in its batch_sizes
    for sizes in ([4, 3, 2, 2, 1, 1, 0], [4, 3, 2, 2, 1, 1, 0, 0]):
        got = []
        for m in (ours, twin):
            data = p.data.clone().requires_grad_()
            outs = run(m, PackedSequence(data, torch.tensor(sizes)), [])
            got.append(outs + list(torch.autograd.grad(outs, data, upstream(outs))))
        _compare_lists("trailing zeros", ["output", "h_n", "c_n"][:len(got[1]) - 1] +
                       ["d data"], *got)
        assert ours(PackedSequence(p.data, torch.tensor(sizes)))[0].batch_sizes.tolist() \
            == sizes
    for sizes in ([0], [0, 0]):  # no row at all: an empty output, states of batch 0
        empty = PackedSequence(p.data[:0], torch.tensor(sizes))
        assert ours(empty)[0].batch_sizes.tolist() == sizes
        _compare_lists("all zeros", ["output", "h_n", "c_n"], run(ours, empty, []),
                       run(twin, empty, []))
    with pytest.raises(RuntimeError, match="PackedSequence data has 12 rows, but its "
                                           "batch_sizes sum to 13"):
        ours(PackedSequence(p.data[:12], p.batch_sizes))
    extra = PackedSequence(torch.cat([p.data, p.data[:2]]), p.batch_sizes)
    got, want = run(ours, extra, []), run(twin, extra, [])
    _compare_lists("extra packed rows", ["output", "h_n", "c_n"], got, want)


@pytest.mark.parametrize("backend", backend_params())
def test_lstm_hx_of_one_tensor_is_an_index_error_like_torch(backend):
    ours, twin = make_pair("lstm", backend)
    x = torch.randn(T, B, I, dtype=F64)
    h0 = torch.zeros(1, B, H, dtype=F64)
    for m in (twin, ours):
        with pytest.raises(IndexError):
            m(x, (h0,))
    # a 2-D (h, c) with a PackedSequence: torch.nn's LSTM fails in aten::lstm with an
    # IndexError; rnnfast gives torch.nn's size-check message as one
    p = pack_padded_sequence(x, torch.tensor([T] * B))
    h2 = torch.zeros(1, H, dtype=F64)
    for m in (twin, ours):
        with pytest.raises(IndexError):
            m(p, (h2, h2))
    with pytest.raises(IndexError, match=re.escape(f"Expected hidden[0] size (1, {B}, {H})")):
        ours(p, (h2, h2))


@pytest.mark.parametrize("kwargs", [{"num_layers": True}, {"bidirectional": None},
                                    {"bidirectional": 1}])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_layer_options_of_wrong_type_raise_like_torch(cell, kwargs):
    """num_layers=True, bidirectional=None or 1: torch.nn builds the module and raises
    a TypeError at the call (aten's signature check); rnnfast ran them as 1 layer /
    one direction. Now a TypeError naming the option, before any kernel runs."""
    x = torch.randn(T, B, I)
    with pytest.raises(TypeError):
        getattr(nn, cell)(I, H, **kwargs)(x)
    name, value = next(iter(kwargs.items()))
    with pytest.raises(TypeError, match=f"{name} should be of type "
                                        f"{'int' if name == 'num_layers' else 'bool'}, "
                                        f"got: {type(value).__name__}"):
        getattr(rnnfast, cell)(I, H, **kwargs)(x)


@pytest.mark.parametrize("backend", ["auto", "numba"])
@pytest.mark.parametrize("name,value", [("bias", 1), ("batch_first", 1),
                                        ("batch_first", None)])
@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_bool_options_set_to_another_type_raise_like_torch(cell, name, value, backend):
    """bias or batch_first set after construction to a value that is not a bool: torch.nn
    raises aten's TypeError at the call (its constructor: "bias should be of type bool,
    got: int"); the kernels took 1 as True. Now that TypeError, on every path (a short
    call that auto hands to torch.nn's operator, and training calls)."""
    x = torch.randn(2, 3, I)
    for grad in (False, True):
        twin, ours = getattr(nn, cell)(I, H), getattr(rnnfast, cell)(I, H, backend=backend)
        setattr(twin, name, value)
        setattr(ours, name, value)
        with torch.set_grad_enabled(grad):
            with pytest.raises(TypeError):
                twin(x)
            with pytest.raises(TypeError, match=f"^{name} should be of type bool, got: "
                                                f"{type(value).__name__}$"):
                ours(x)


def test_explain_and_negative_slope_type_errors():
    """rnnfast.explain of a torch.nn module, and a negative_slope that is not a number:
    TypeErrors that say so (before: an AttributeError, a bare comparison TypeError)."""
    x = torch.randn(T, B, I)
    with pytest.raises(TypeError, match="expects an rnnfast RNN, LSTM or GRU module, "
                                        "got torch.nn.modules.rnn.LSTM"):
        rnnfast.explain(nn.LSTM(I, H), x)
    with pytest.raises(TypeError, match="negative_slope should be of type float, got: str"):
        rnnfast.RNN(I, H, nonlinearity="leaky_relu", negative_slope="0.1")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_empty_batch_matches_torch(cell, backend):
    """B=0 is not an error in torch.nn: the outputs are empty tensors of the right shape."""
    ours, twin = make_pair(cell, backend)
    x = torch.zeros(T, 0, I, dtype=F64)
    with torch.no_grad():
        got, want = run(ours, x, []), run(twin, x, [])
    _compare_lists("empty batch", ["output", "h_n", "c_n"], got, want)
    # and its backward: empty input gradients, zero weight gradients
    u = upstream(want)
    out_a, g_a = _forward_backward(ours, x, [], u)
    out_b, g_b = _forward_backward(twin, x, [], u)
    _compare_lists("empty batch backward", _names(twin, 0), g_a, g_b)


# ============================================================ 8. ONNX export

def _exception_text(exc):
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _clear_refusal(exc):
    """Whether an exception in the chain is a deliberate refusal: rnnfast's own (its
    class is defined in rnnfast, or code in rnnfast's package raised it), or torch.onnx's
    "Unsupported: ONNX export of operator ..." (what torch.nn.LSTM with proj_size gets).
    An exporter's internal failure that merely mentions an rnnfast op is not one."""
    package = os.path.dirname(os.path.dirname(rnnfast.__file__))
    roots = tuple(os.path.join(package, d) + os.sep for d in ("rnnfast", "kernels"))
    while exc is not None:
        if type(exc).__module__.split(".")[0] == "rnnfast":
            return True
        if (type(exc).__module__.startswith("torch.onnx")
                and str(exc).startswith("Unsupported: ONNX export of operator")):
            return True
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename).startswith(roots):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


ONNX_CELLS = ["lstm", "relu", "tanh", "gru", "leaky_relu", "lstm_proj"]
# The dynamo exporter takes seconds per model: the four cells of PyTorch's example.
DYNAMO_ONNX_CELLS = ["lstm", "relu", "tanh", "gru"]


def _onnx_params():
    out = []
    for p in cell_params(ONNX_CELLS):
        for backend in BACKENDS:
            out.append(pytest.param(p.values[0], backend, False, marks=p.marks,
                                    id=f"{p.id}-{backend}-legacy"))
        if p.values[0] in DYNAMO_ONNX_CELLS:
            for backend in EXPORT_BACKENDS:
                out.append(pytest.param(p.values[0], backend, True, marks=p.marks,
                                        id=f"{p.id}-{backend}-dynamo"))
    return out


@pytest.mark.no_poison
@pytest.mark.parametrize("cell,backend,dynamo", _onnx_params())
def test_onnx_export_matches_onnxruntime(cell, backend, dynamo, tmp_path):
    """torch.onnx.export of the word LM (default exporter: dynamo=True; legacy:
    dynamo=False) either gives a model onnxruntime loads and runs to the float32
    tolerance on a DIFFERENT input than the export's (so a traced output baked in as a
    constant fails), or raises a clear refusal (see _clear_refusal). Never a wrong or
    unloadable model."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    # The module itself, as PyTorch's word-LM example exports it (torch.onnx.export of an
    # already torch.export'ed program holding rnnfast ops is not supported: README).
    model = program = _word_lm(cell, backend)
    path = tmp_path / "lm.onnx"
    example = _lm_inputs(cell, model, seed=8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(program, example, str(path), dynamo=dynamo)
    except Exception as exc:
        assert _clear_refusal(exc), (
            f"ONNX export failed without a clear refusal:\n{_exception_text(exc)}")
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens, hidden = _lm_inputs(cell, model, seed=9)
    feeds = _flat((tokens, hidden))
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(feeds), (
        f"the ONNX model takes inputs {names}, the model {len(feeds)} tensors (tokens, "
        f"hidden state): an input it ignores means an eager result baked in as a constant")
    got = session.run(None, {n: t.numpy() for n, t in zip(names, feeds)})
    with torch.no_grad():
        want = _flat(model(tokens, hidden))
    assert len(got) == len(want), f"ONNX gives {len(got)} outputs, eager {len(want)}"
    for name, a, b in zip(["log_softmax", "h_n", "c_n"], got, want):
        assert_close(f"onnxruntime {name}", torch.from_numpy(a), b)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell, attr, value", [
    ("tanh", "nonlinearity", "relu"), ("tanh", "mode", "RNN_RELU"),
    ("relu", "nonlinearity", "tanh"), ("relu", "mode", "RNN_TANH")])
def test_rnn_activation_follows_mode_like_torch(cell, backend, attr, value):
    """torch.nn.RNN's forward picks tanh or ReLU from ``mode`` (set from nonlinearity at
    construction), never from ``nonlinearity``: the same assignment after construction
    leaves both modules computing the same function."""
    ours, twin = make_pair(cell, backend)
    setattr(ours, attr, value)
    setattr(twin, attr, value)
    x, state = problem(cell, ours)
    with torch.no_grad():
        _compare_lists(f"{attr}={value!r}", ["output", "h_n"], run(ours, x, state),
                       run(twin, x, state))


# ============================================================ 9. checkpoints

@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_weights_only_load_of_whole_module(cell, backend, tmp_path):
    """torch.save(an rnnfast module) loads with torch.load(weights_only=True) and no
    allowlist: same class, backend, state and outputs."""
    ours, _ = make_pair(cell, backend, dtype=torch.float32, num_layers=2, bidirectional=True)
    path = tmp_path / "rnn.pt"
    torch.save(ours, path)
    loaded = torch.load(path, weights_only=True)
    assert type(loaded) is type(ours)
    assert loaded.backend == ours.backend
    assert repr(loaded) == repr(ours)
    x, state = problem(cell, ours, dtype=torch.float32)
    with torch.no_grad():
        _compare_lists("reloaded", ["output", "h_n", "c_n"], run(loaded, x, state),
                       run(ours, x, state), torch.float32)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_weights_only_load_of_word_lm(cell, backend, tmp_path):
    """PyTorch's example saves the whole language model and reloads it with
    weights_only=True, allowlisting its own class and the torch.nn classes it uses; the
    rnnfast submodule must need no entry of its own."""
    model = _word_lm(cell, backend)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with torch.serialization.safe_globals([WordLM, nn.Dropout, nn.Embedding, nn.Linear]):
        loaded = torch.load(path, weights_only=True)
    assert type(loaded.rnn) is type(model.rnn)
    tokens, hidden = _lm_inputs(cell, model, seed=9)
    with torch.no_grad():
        _compare_lists("reloaded", ["log_softmax", "h_n", "c_n"], _flat(loaded(tokens, hidden)),
                       _flat(model(tokens, hidden)), torch.float32)


# ============================================================ 10. traced / exported programs

@pytest.mark.no_poison
@pytest.mark.parametrize("backend", backend_params([b for b in BACKENDS if b != "torch"]))
@pytest.mark.parametrize("cell", cell_params())
def test_trace_records_custom_op(cell, backend, tmp_path):
    """torch.jit.trace records rnnfast's custom op (rnnfast::...), not a Python
    autograd.Function (prim::PythonOp, which torch.jit.save cannot export)."""
    model = _head(cell, backend)
    x, = _inputs((T, B, I))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)
    graph = str(traced.inlined_graph)
    assert "rnnfast::" in graph, f"no rnnfast op in the traced graph:\n{graph}"
    assert "prim::PythonOp" not in graph, f"a Python function in the traced graph:\n{graph}"
    torch.jit.save(traced, str(tmp_path / "traced.pt"))


def _rnnfast_nodes(ep):
    return [n for n in ep.graph.nodes if n.op == "call_function"
            and str(n.target).startswith("rnnfast.")]


@pytest.mark.no_poison
@pytest.mark.parametrize("cell", cell_params())
def test_exported_program_resolves_backend_at_run_time(cell, monkeypatch):
    """A torch.export'ed program of a backend='auto' model does not fix the backend
    chosen at export time. Checked two ways: (a) no rnnfast op in the graph has a
    concrete backend name ('numba', 'triton') among its arguments; (b) at run time the
    program consults the dispatcher: with RNNFAST_BACKEND set to an invalid name (which
    backend='auto' reads on every call) the program raises the dispatcher's error instead
    of running a backend baked in at export time."""
    model, ep = _exported(cell, "auto")
    nodes = _rnnfast_nodes(ep)
    assert nodes, f"no rnnfast op in the exported graph:\n{ep.graph}"
    for node in nodes:
        args = list(node.args) + list(node.kwargs.values())
        baked = [a for a in args if isinstance(a, str) and a in ("numba", "triton")]
        assert not baked, f"{node.target} has the backend {baked} fixed in the graph"
    tokens, hidden = _lm_inputs(cell, model, seed=9)
    monkeypatch.setenv("RNNFAST_BACKEND", "no-such-backend")
    with pytest.raises(Exception, match="RNNFAST_BACKEND"):
        ep.module()(tokens, hidden)


@pytest.mark.no_poison
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", cell_params())
def test_exported_program_runs_on_cuda(cell):
    """Exported on CPU tensors, the program runs on CUDA tensors (Triton there)."""
    model, ep = _exported(cell, "auto")
    tokens, hidden = _lm_inputs(cell, model, seed=9)
    with torch.no_grad():
        want = _flat(model(tokens, hidden))
        gm = ep.module().to("cuda")
        got = _flat(gm(tokens.cuda(), as_state([h.cuda() for h in as_list(hidden)], cell)))
    _compare_lists("exported on cuda", ["log_softmax", "h_n", "c_n"], got, want, torch.float32)


# ============================================================ 11. torch.nn's own RNN tests

# Scenarios of PyTorch's test_nn.py / test_pruning.py (test_rnn_weight_norm,
# test_rnn_pruning, test_save_lstm_compatibility, test_RNN_dropout_state,
# test_RNN_change_dropout) that the groups above do not reach, run side by side with the
# twin: a reparametrized weight is a plain tensor recomputed before every forward.
REPARAMETRIZATIONS = {
    "weight_norm": lambda m: parametrizations.weight_norm(m, "weight_hh_l0"),
    "prune": lambda m: prune.l1_unstructured(m, "weight_ih_l0", 0.5),
}


@pytest.mark.parametrize("how", list(REPARAMETRIZATIONS))
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_reparametrized_weight_matches_torch(cell, backend, how):
    """weight_norm / pruning of one weight: the same values and gradients (w.r.t. the
    input and every parameter, the reparametrization's own included) as the twin, the
    same count of Parameters in _flat_weights, and removal restores the Parameter."""
    ours, twin = make_pair(cell, backend)
    for m in (ours, twin):
        REPARAMETRIZATIONS[how](m)
    assert sum(isinstance(p, nn.Parameter) for p in ours._flat_weights) == \
        sum(isinstance(p, nn.Parameter) for p in twin._flat_weights)
    x, state = problem(cell, twin)
    results = []
    for m in (ours, twin):
        xs = leaves([x] + state)
        outs = run(m, xs[0], xs[1:])
        sum((o * u).sum() for o, u in zip(outs, upstream(outs))).backward()
        results.append(outs + [t.grad for t in xs + list(m.parameters())])
    _compare_lists(how, ["output", "h_n", "c_n"][:len(state) + 1] + _names(ours, len(state)),
                   *results)
    if how == "prune":
        prune.remove(ours, "weight_ih_l0")
        assert isinstance(ours._parameters["weight_ih_l0"], nn.Parameter)
        assert sum(isinstance(p, nn.Parameter) for p in ours._flat_weights) == \
            len(ours._flat_weights)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_pickled_module_and_old_checkpoint_state_match_torch(cell, backend):
    """A whole module pickled and loaded (weights_only=False, then flatten_parameters)
    and a module restored by __setstate__ from a pre-1.8 LSTM's __dict__ (no proj_size)
    compute what the original computes."""
    ours, _ = make_pair(cell, backend, num_layers=2)
    x, state = problem(cell, ours)
    with torch.no_grad():
        want = run(ours, x, state)
        buf = io.BytesIO()
        torch.save(ours, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        loaded.flatten_parameters()
        _compare_lists("pickled", ["output", "h_n", "c_n"], run(loaded, x, state), want)
        if CELLS[cell][0] == "LSTM" and not ours.proj_size:
            old = dict(ours.__dict__)
            del old["proj_size"]
            restored = rnnfast.LSTM(I, H, backend=backend)
            restored.__setstate__(old)
            assert restored.proj_size == 0
            _compare_lists("__setstate__", ["output", "h_n", "c_n"], run(restored, x, state),
                           want)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_dropout_changed_after_construction(cell, backend):
    """``module.dropout = p`` after construction takes effect as in torch.nn: p=1 in
    training zeroes the second layer's input (the twin's output, exactly), p=0.5 draws a
    new mask per call, and eval mode ignores it."""
    ours, twin = make_pair(cell, backend, num_layers=2)
    x, state = problem(cell, ours)
    with torch.no_grad():
        plain = run(ours, x, state)
        for m in (ours, twin):
            m.dropout = 1.0
        _compare_lists("dropout=1", ["output", "h_n", "c_n"], run(ours, x, state),
                       run(twin, x, state))
        ours.dropout = 0.5
        first, second = run(ours, x, state), run(ours, x, state)
        assert not torch.equal(first[0], second[0]), "dropout=0.5 set later had no effect"
        ours.eval()
        _compare_lists("eval", ["output", "h_n", "c_n"], run(ours, x, state), plain)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_final_state_is_contiguous_for_any_initial_state_layout(cell, backend):
    """h_n (and c_n) come back contiguous, as torch.nn's, when h0 (c0) is a transposed
    view: the kernels used to allocate them like h0, so h_n.view(-1) raised and
    randn_like(h_n) drew different numbers than for torch.nn's h_n."""
    ours, twin = make_pair(cell, backend)
    x, state = problem(cell, ours)
    # each state [L*D, B, *] as a transposed view of [L*D, *, B] storage
    state = [s.transpose(1, 2).contiguous().transpose(1, 2) for s in state]
    assert not any(s.is_contiguous() for s in state)
    got, want = run(ours, x, state), run(twin, x, state)
    _compare_lists("transposed h0", ["output", "h_n", "c_n"], got, want)
    for name, t in zip(["h_n", "c_n"], got[1:]):
        assert t.is_contiguous(), f"{name} strides {t.stride()}"


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params(["tanh", "relu", "leaky_relu", "lstm", "gru"]))
def test_nan_input_gradients_follow_torch(cell, backend):
    """A NaN in the input: outputs NaN where the twin's are, and every gradient as the
    twin's, NaN for NaN. torch's ReLU backward (threshold_backward) zeroes the gradient
    only where the output is <= 0, so a NaN unit passes it on; rnnfast's ReLU kernels
    zeroed it (x.grad all 0 where torch.nn's is finite)."""
    ours, twin = make_pair(cell, backend)
    x, state = problem(cell, ours)
    x = x.clone()
    x[0, 0, 0] = float("nan")
    grads = []
    for m in (ours, twin):
        xs = leaves([x] + state)
        out = run(m, xs[0], xs[1:])
        (out[0].sum() + sum(o.sum() for o in out[1:])).backward()
        grads.append([out[0].detach()] + [t.grad for t in xs] +
                     [p.grad for p in m.parameters()])
    for i, (a, b) in enumerate(zip(*grads)):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {i}: NaN pattern differs"
        torch.testing.assert_close(a.nan_to_num(0.0), b.nan_to_num(0.0),
                                   rtol=1e-9, atol=1e-12, msg=f"tensor {i}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params(["tanh", "relu", "leaky_relu", "lstm", "gru"]))
@pytest.mark.parametrize("with_state", [False, True], ids=["hx_none", "hx"])
def test_infinite_output_gradient_follows_torch(cell, backend, with_state):
    """An infinite upstream gradient (a loss that overflowed) at one output unit of the
    first step (the last one BPTT reaches, so it spreads no further than that step's
    terms; with hx=None, 0 * inf in dW_hh's h_0 term): every gradient as the twin's, NaN
    for NaN and infinity for infinity. At a ReLU unit that is off, torch's
    threshold_backward selects 0 and every gradient stays finite (rnnfast's kernels
    multiplied: inf * 0 = NaN in every weight gradient); torch's GRU cell forms n's
    gradient as g - g z, NaN for an infinite g (the kernels' g (1 - z) gave an
    infinity). Tried at the unit whose output is lowest (off, for a ReLU) and
    highest."""
    ours, twin = make_pair(cell, backend)
    x, state = problem(cell, ours, with_state=with_state)
    with torch.no_grad():
        y = run(twin, x, state)[0]
    off = cell == "relu" and bool(y[0].min() <= 0)
    for unit in (y[0].argmin(), y[0].argmax()):
        got = []
        for m in (ours, twin):
            xs = leaves([x] + state)
            outs = run(m, xs[0], xs[1:])
            ups = upstream(outs)
            ups[0][0].view(-1)[unit] = float("inf")
            grads = torch.autograd.grad(outs, xs + list(m.parameters()), ups)
            got.append(list(grads))
        for i, (a, b) in enumerate(zip(*got)):
            _compare_nonfinite(f"unit {int(unit)}, tensor {i}", a, b)
        if off:  # the case that matters: the unit that is off keeps everything finite
            assert all(g.isfinite().all() for g in got[1]), "torch.nn's: not finite"
            off = False


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params(["relu", "leaky_relu"]))
def test_finished_sequence_with_infinite_state_stays_out_of_gradients(cell, backend):
    """A packed batch whose shorter sequence's state went infinite (an infinite input at
    its only step, weights that carry it) and a loss on the longer one alone: torch.nn
    computes the active rows only, so its dW_hh stays finite. The reference loop kept
    computing the finished row (its result dropped by torch.where) and autograd's
    0 * inf put NaN into dW_hh; it now computes from a zeroed state there."""
    ours, twin = make_pair(cell, backend, input_size=1)
    for m in (ours, twin):
        with torch.no_grad():
            m.weight_ih_l0.abs_()  # a positive input weight: the state goes to +inf
    x = torch.rand(T, B, 1, dtype=F64)
    x[0, 1, 0] = float("inf")  # sequence 1 has length 1
    got = []
    for m in (ours, twin):
        m.zero_grad()
        out, _ = m(pack_padded_sequence(x, torch.tensor([T, 1])))
        out.data[out.batch_sizes.cumsum(0) - out.batch_sizes].sum().backward()  # seq 0
        got.append([p.grad for p in m.parameters()])
    assert got[1][1].isfinite().all()  # the twin's dW_hh (leaky_relu: the reference's)
    for i, (a, b) in enumerate(zip(*got)):
        _compare_nonfinite(f"tensor {i}", a, b)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
@pytest.mark.parametrize("layout", ["time_major", "packed"])
def test_bias_changed_in_place_before_backward(cell, backend, layout):
    """An in-place change of a bias between forward and backward (an optimizer step, an
    edit under no_grad): torch.nn's RNN and GRU do not save their biases, and their
    backward returns the gradients of the forward as it ran; so does rnnfast's, for
    every cell (torch.nn's padded LSTM raises autograd's in-place error there). A
    second-order backward, which recomputes the layer from its inputs, raises that
    error instead of differentiating with the changed bias."""
    ours, twin = make_pair(cell, backend)
    x, state = problem(cell, ours)
    grads = []
    for m in (ours, twin):
        xs = leaves([x] + state)
        out = run(m, xs[0], xs[1:], layout)
        loss = sum((o * w).sum() for o, w in zip(out, upstream(out)))
        with torch.no_grad():
            m.bias_hh_l0.add_(1.0)
        if m is twin and (layout, CELLS[cell][0]) == ("time_major", "LSTM"):
            # torch.nn's padded LSTM raises: its gradients of the forward as it ran
            with torch.no_grad():
                m.bias_hh_l0.sub_(1.0)
            out = run(m, xs[0], xs[1:], layout)
            loss = sum((o * w).sum() for o, w in zip(out, upstream(out)))
        grads.append(torch.autograd.grad(loss, xs + list(m.parameters())))
    _compare_lists("after an in-place bias change", [str(i) for i in range(len(grads[0]))],
                   list(grads[0]), list(grads[1]))
    if backend == "torch":  # autograd through torch ops, which do not save a bias
        return
    xs = leaves([x] + state)
    out = run(ours, xs[0], xs[1:], layout)
    with torch.no_grad():
        ours.bias_ih_l0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out[0].pow(2).sum(), xs[0], create_graph=True)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
@pytest.mark.parametrize("layout", ["time_major", "packed"])
def test_first_w_ih_changed_in_place_when_x_needs_no_grad(cell, backend, layout):
    """W_ih of the first layer changed in place between forward and backward (an
    optimizer step, a weight average) where the input is plain data: torch.nn's
    autograd keeps no W_ih there (it is read only for dx), so its RNN, GRU and float64
    LSTM run the backward; so does rnnfast, and its gradients are those of the forward
    as it ran. Where x needs a gradient, or a second-order backward recomputes the
    layer, the change raises autograd's in-place error on both."""
    ours, twin = make_pair(cell, backend, num_layers=2)
    x, state = problem(cell, ours)
    want_state = leaves(state)
    out = run(twin, x, want_state, layout)  # no change: the forward as it ran
    w = upstream(out)
    want = torch.autograd.grad(sum((o * g).sum() for o, g in zip(out, w)),
                               want_state + list(twin.parameters()))
    got_state = leaves(state)
    out = run(ours, x, got_state, layout)
    with torch.no_grad():
        ours.weight_ih_l0.mul_(0.5)
    got = torch.autograd.grad(sum((o * g).sum() for o, g in zip(out, w)),
                              got_state + list(ours.parameters()))
    _compare_lists("after an in-place W_ih change", [str(i) for i in range(len(want))],
                   list(got), list(want))
    for m in (ours, twin):  # x needs a gradient: both raise
        if m is twin and CELLS[cell][1].get("nonlinearity") == "leaky_relu":
            continue  # the twin is rnnfast's reference loop
        xs = leaves([x])
        out = run(m, xs[0], leaves(state), layout)
        with torch.no_grad():
            m.weight_ih_l0.mul_(0.5)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(out[0].sum(), xs[0])
    if backend == "torch":  # autograd through torch ops, which keep no W_ih here
        return
    hs = leaves(state)
    out = run(ours, x, hs, layout)
    with torch.no_grad():
        ours.weight_ih_l0.mul_(0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out[0].pow(2).sum(), hs[0], create_graph=True)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_options_changed_after_construction_raise_like_torch(cell, backend):
    """torch.nn fixes its weights at construction and reads num_layers, bidirectional,
    bias, proj_size, input_size and hidden_size again at every call: an option changed
    afterwards makes its operator raise. rnnfast raises the same messages (the weight
    shapes: a message naming the parameter) where it ran the weights the new options
    name and dropped the others."""
    changes = [("bias", False, {}), ("bidirectional", False, {"bidirectional": True}),
               ("num_layers", 1, {"num_layers": 2}), ("bidirectional", True, {}),
               ("num_layers", 2, {}), ("hidden_size", H + 1, {}),
               ("input_size", I + 1, {})]
    if "proj_size" in CELLS[cell][1]:
        changes.append(("proj_size", 0, {}))
    for attr, value, opts in changes:
        ours, twin = make_pair(cell, backend, **opts)
        for m in (ours, twin):
            setattr(m, attr, value)
        x = torch.randn(T, B, ours.input_size, dtype=F64)
        with pytest.raises(RuntimeError) as want:
            twin(x)
        if attr in ("hidden_size", "input_size"):
            match = r"parameter weight_ih_l0 has shape \(\d+, \d+\), but input_size="
        else:
            match = re.escape(str(want.value))
        with pytest.raises(RuntimeError, match=match):
            ours(x)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params(["tanh", "lstm", "lstm_proj", "gru"]))
def test_saturated_gates_match_torch_at_inf_and_huge_inputs(cell, backend):
    """A gate driven past exp's range is exactly 0 or 1, as torch's: with inf or 1e305
    in x or h0, outputs and gradients match torch.nn's, NaN positions included (a
    sigmoid of 1e-304 instead of 0 turned torch's 0 * inf = NaN into inf, and moved
    weight gradients at 1e300 inputs by 1e-4)."""
    for where, value in (("x", float("inf")), ("x", -float("inf")), ("x", 1e305),
                         ("h0", float("inf"))):
        ours, twin = make_pair(cell, backend)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(T, B, I, dtype=F64, generator=g)
        state = as_list(initial_state(cell, ours, B, F64, g))
        if where == "x":
            x[T // 2, B - 1, :2] = value
        else:
            state[0][0, B - 1, 1] = value
        got = []
        for m in (ours, twin):
            m.zero_grad()
            xs = [x.clone().requires_grad_()] + [s.clone().requires_grad_() for s in state]
            outs = run(m, xs[0], xs[1:])
            ups = upstream(outs)
            torch.autograd.backward(outs, ups)
            got.append(outs + [t.grad for t in xs] + [p.grad for p in m.parameters()])
        for a, b in zip(*got):
            _compare_nonfinite(f"{where}={value}", a, b)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", cell_params())
def test_negative_bit_operands_match_torch(cell, backend):
    """A tensor with its negative bit set (a lazily negated view, torch._neg_view: torch's
    ops read it as negated values, numpy() refuses it) as x, as the initial state or as
    a weight: outputs and every gradient as torch.nn's (the numba launchers raised
    numpy()'s RuntimeError on each)."""
    for where in ("x", "state", "weight"):
        ours, twin = make_pair(cell, backend)
        g = torch.Generator().manual_seed(4)
        x = torch.randn(T, B, I, dtype=F64, generator=g)
        state = as_list(initial_state(cell, ours, B, F64, g))
        if where == "weight":
            for m in (ours, twin):
                w = m.weight_hh_l0.detach()
                m.weight_hh_l0 = nn.Parameter(torch._neg_view(-w))
                assert m.weight_hh_l0.is_neg() and m.weight_hh_l0.is_contiguous()
        got = []
        for m in (ours, twin):
            xs = [x.clone().requires_grad_()] + [s.clone().requires_grad_() for s in state]
            if where == "x":
                operands = [torch._neg_view(-xs[0])] + xs[1:]
            elif where == "state":
                operands = xs[:1] + [torch._neg_view(-s) for s in xs[1:]]
            else:
                operands = xs
            assert where == "weight" or any(t.is_neg() for t in operands)
            outs = run(m, operands[0], operands[1:])
            grads = torch.autograd.grad(
                sum((o * u).sum() for o, u in zip(outs, upstream(outs))),
                xs + list(m.parameters()))
            got.append(outs + list(grads))
        _compare_lists(f"negative bit on {where}", [str(i) for i in range(len(got[0]))],
                       *got)


def test_auto_reference_fallback_warns_only_where_it_computes():
    """backend='auto' on what no kernel takes runs the reference loop: a meta tensor
    (shapes only, nothing computed, as torch.nn) silently; a complex module with one
    warning that says auto runs the reference loop, and why."""
    # device= rather than `with torch.device("meta")`: torch caches the constructors that
    # context intercepts on first use, and conftest's NaN-poisoned torch.empty is not one
    m = rnnfast.GRU(3, 4, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, h = m(torch.randn(5, 2, 3, device="meta"))
    assert out.shape == (5, 2, 4) and h.shape == (1, 2, 4) and out.is_meta
    m = rnnfast.GRU(3, 4).to(torch.complex64)
    with pytest.warns(UserWarning, match=r"backend='auto' runs the torch reference loop "
                                         r"here \(backend 'numba' supports dtypes"):
        m(torch.randn(5, 2, 3, dtype=torch.complex64))
