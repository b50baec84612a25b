"""Gradient telemetry: ``rnnfast.diagnostics.hidden_grad_norms`` and the training opt-in
(``record_grad_norms`` / ``last_grad_norms``) against an independent oracle.

The oracle is written here, not taken from ``rnnfast.reference``: a per-step loop over
every layer and direction with the module's own weights, where each h_t is a fresh
tensor whose ``retain_grad()`` gives the total gradient reaching it (from the output at
t and from the next processed step, and from h_n). Everything in float64; the norms
must agree to a relative 1e-5 (the issue's bar), checked through ``assert_close`` with
the float64 "kernel" row of the tolerance table, which is tighter.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast.diagnostics import hidden_grad_norms

from .cases import CELLS as CASE_CELLS
from .cases import module_backends, triton_interpreting
from .tolerances import assert_close

DT = torch.float64
T, B, I, H, P = 7, 3, 4, 5, 3

# Every cell of the catalogue, as constructor kwargs plus its kind; the leaky slope and
# projection width sized for this file's small problems.
CELLS = {name: dict(kind=cls.lower(), **{k: (P if k == "proj_size" else v)
                                        for k, v in opts.items()})
         for name, (cls, opts) in CASE_CELLS.items()}
CELLS["leaky_relu"]["negative_slope"] = 0.3
BACKENDS = tuple(module_backends())


def make_module(cell, num_layers, bidirectional, batch_first, backend, seed=0):
    spec = dict(CELLS[cell])
    kind = spec.pop("kind")
    torch.manual_seed(seed)
    cls = {"lstm": rnnfast.LSTM, "gru": rnnfast.GRU}.get(kind, rnnfast.RNN)
    m = cls(I, H, num_layers=num_layers, bidirectional=bidirectional,
            batch_first=batch_first, backend=backend, **spec).to(DT)
    if kind == "rnn" and spec["nonlinearity"] != "tanh":
        # Make the ReLU cells' gradients non-trivial: keep most units active.
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.startswith("bias"):
                    p.add_(0.3)
    return m


# ---------------------------------------------------------------- the oracle

def _act(cell_spec):
    nl = cell_spec.get("nonlinearity")
    if nl == "tanh":
        return torch.tanh
    if nl == "relu":
        return torch.relu
    return lambda z: F.leaky_relu(z, cell_spec["negative_slope"])


def oracle(module, cell, x, lengths=None, hx=None):
    """Per-step autograd loop. x [T, B, I] time-major (padded); lengths [B] or None.

    Returns (y [T, B, D*S], h_n [L*D, B, S], hs) where hs[idx][t] is the tensor h_t of
    layer/direction idx (``retain_grad`` on), or None where no row is active at t.
    """
    spec = CELLS[cell]
    is_lstm = spec["kind"] == "lstm"
    is_gru = spec["kind"] == "gru"
    L, D = module.num_layers, (2 if module.bidirectional else 1)
    S = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    Tn, Bn = x.shape[:2]
    lengths = torch.full((Bn,), Tn) if lengths is None else lengths
    if hx is None:
        h0s = torch.zeros(L * D, Bn, S, dtype=x.dtype)
        c0s = torch.zeros(L * D, Bn, module.hidden_size, dtype=x.dtype)
    else:
        h0s, c0s = hx if is_lstm else (hx, None)
    act = None if is_lstm or is_gru else _act(spec)
    hs, h_n = [], []
    inp = x
    for layer in range(L):
        outs = []
        for d in range(D):
            idx = layer * D + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih = getattr(module, "weight_ih" + sfx)
            w_hh = getattr(module, "weight_hh" + sfx)
            b_ih = getattr(module, "bias_ih" + sfx)
            b_hh = getattr(module, "bias_hh" + sfx)
            w_hr = getattr(module, "weight_hr" + sfx, None)
            h = h0s[idx]
            c = c0s[idx] if is_lstm else None
            ys = [None] * Tn
            taps = [None] * Tn
            order = range(Tn - 1, -1, -1) if d else range(Tn)
            for t in order:
                active = (t < lengths).unsqueeze(1)
                z = inp[t] @ w_ih.t() + b_ih + b_hh + h @ w_hh.t()
                if is_gru:  # torch.nn.GRU's cell: r multiplies h W_hn^T + b_hn
                    i_r, i_z, i_n = (inp[t] @ w_ih.t() + b_ih).chunk(3, dim=1)
                    h_r, h_z, h_n_ = (h @ w_hh.t() + b_hh).chunk(3, dim=1)
                    r, zg = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
                    h_new = (1 - zg) * torch.tanh(i_n + r * h_n_) + zg * h
                elif is_lstm:
                    i, f, g, o = z.chunk(4, dim=1)
                    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h_new = torch.sigmoid(o) * torch.tanh(c_new)
                    if w_hr is not None:
                        h_new = h_new @ w_hr.t()
                    c = torch.where(active, c_new, c)
                else:
                    h_new = act(z)
                # h_new is h_t for the active rows; where() routes no gradient to the
                # inactive rows, so h_new.grad is the total gradient reaching h_t there.
                h_new.retain_grad()
                taps[t] = (h_new, active)
                h = torch.where(active, h_new, h)
                ys[t] = torch.where(active, h_new, torch.zeros_like(h_new))
            outs.append(torch.stack(ys))
            hs.append(taps)
            h_n.append(h)
        inp = torch.cat(outs, dim=2) if D == 2 else outs[0]
    return inp, torch.stack(h_n), hs


def oracle_norms(hs):
    """[L*D, T] float64 norms of the retained gradients over the active rows."""
    rows = []
    for taps in hs:
        row = []
        for h_new, active in taps:
            g = h_new.grad
            row.append(torch.zeros((), dtype=DT) if g is None
                       else torch.linalg.vector_norm(g * active))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def rel_check(name, actual, expected):
    """The issue's criterion (max relative difference < 1e-5, relative to the largest
    norm of the row so that exact zeros compare) plus the tolerance table."""
    assert actual.dtype == torch.float64, f"{name}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, \
        f"{name}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    scale = expected.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    rel = ((actual - expected).abs() / scale).max().item()
    assert rel < 1e-5, f"{name}: max relative difference {rel:.3g}"
    assert_close(name, actual, expected, dtype=DT)
    assert (expected > 0).any(), f"{name}: degenerate case, all gradient norms zero"


def _to_time_major(module, t):
    return t.transpose(0, 1) if module.batch_first else t


# ---------------------------------------------------------------- tests

GRID = list(itertools.product(CELLS, (1, 2), (False, True), (False, True), BACKENDS))


@pytest.mark.parametrize("cell,num_layers,bidirectional,batch_first,backend", GRID,
                         ids=lambda v: str(v))
def test_hidden_grad_norms_match_autograd(cell, num_layers, bidirectional, batch_first,
                                          backend):
    m = make_module(cell, num_layers, bidirectional, batch_first, backend)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, dtype=DT, generator=g)
    D = 2 if bidirectional else 1
    S = P if cell == "lstm_proj" else H
    gy = torch.randn(T, B, D * S, dtype=DT, generator=g)
    xin = x.transpose(0, 1).contiguous() if batch_first else x
    gin = gy.transpose(0, 1).contiguous() if batch_first else gy

    norms = hidden_grad_norms(m, xin, gin)
    assert norms.shape == (num_layers * D, T)
    assert all(p.grad is None for p in m.parameters()), "parameter .grad must be untouched"

    y, _, hs = oracle(m, cell, x)
    torch.autograd.backward(y, gy)
    rel_check(f"{cell} L{num_layers} D{D} bf{batch_first} {backend}", norms, oracle_norms(hs))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_opt_in_matches(cell, backend):
    """record_grad_norms / last_grad_norms: a loss on the output *and* on h_n (so the
    kernel's dh_n path counts), with a non-zero initial state, 2 layers, bidirectional."""
    m = make_module(cell, 2, True, False, backend, seed=3)
    assert m.last_grad_norms is None
    g = torch.Generator().manual_seed(4)
    S = P if cell == "lstm_proj" else H
    x = torch.randn(T, B, I, dtype=DT, generator=g)
    h0 = 0.5 * torch.randn(4, B, S, dtype=DT, generator=g)
    hx = (h0, 0.5 * torch.randn(4, B, H, dtype=DT, generator=g)) if "lstm" in cell else h0
    gy = torch.randn(T, B, 2 * S, dtype=DT, generator=g)
    gh = torch.randn(4, B, S, dtype=DT, generator=g)

    m.record_grad_norms = True
    y, hn = m(x, hx)
    hn = hn[0] if "lstm" in cell else hn
    ((y * gy).sum() + (hn * gh).sum()).backward()
    got = m.last_grad_norms
    assert got is not None

    yo, hno, hs = oracle(m, cell, x, hx=hx)
    ((yo * gy).sum() + (hno * gh).sum()).backward()
    rel_check(f"opt-in {cell} {backend}", got, oracle_norms(hs))

    # Off again: no telemetry, and the module still trains.
    m.record_grad_norms = False
    y, _ = m(x, hx)
    y.sum().backward()
    assert m.last_grad_norms is None


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_last_grad_norms_is_the_last_backwards(cell, backend):
    """Two backwards through one forward (retain_graph): last_grad_norms holds the
    second one's norms, not their sum (the probes' .grad would accumulate)."""
    m = make_module(cell, 2, False, False, backend, seed=7)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(T, B, I, dtype=DT, generator=g)
    S = P if cell == "lstm_proj" else H
    g1, g2 = (torch.randn(T, B, S, dtype=DT, generator=g) for _ in range(2))
    m.record_grad_norms = True
    y, _ = m(x)
    (y * g1).sum().backward(retain_graph=True)
    first = m.last_grad_norms.clone()
    (y * g2).sum().backward()
    yo, _, hs = oracle(m, cell, x)
    torch.autograd.backward(yo, g2)
    rel_check(f"second backward {cell} {backend}", m.last_grad_norms, oracle_norms(hs))
    assert not torch.equal(first, m.last_grad_norms)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hidden_grad_norms_leaves_last_grad_norms(backend):
    """diagnostics.hidden_grad_norms runs its own forward and backward: the module's
    last_grad_norms (a training step's) stay what they were, as its parameters' .grad
    do (the call left None there)."""
    m = make_module("lstm", 2, True, False, backend, seed=9)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(T, B, I, dtype=DT, generator=g)
    m.record_grad_norms = True
    y, _ = m(x)
    y.sum().backward()
    before = m.last_grad_norms.clone()
    probe = hidden_grad_norms(m, x, torch.randn(T, B, 2 * H, dtype=DT, generator=g))
    assert not torch.equal(probe, before)
    assert m.record_grad_norms and torch.equal(m.last_grad_norms, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hidden_grad_norms_under_no_grad_and_inference_mode(backend):
    """hidden_grad_norms runs its own backward whatever the caller's grad mode: under
    no_grad and under inference_mode (where it raised autograd's "element 0 of tensors
    does not require grad") the same norms as outside; an input made under
    inference_mode gets torch's own error for an inference tensor."""
    m = make_module("gru", 2, True, False, backend, seed=11)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(T, B, I, dtype=DT, generator=g)
    gy = torch.randn(T, B, 2 * H, dtype=DT, generator=g)
    want = hidden_grad_norms(m, x, gy)
    with torch.no_grad():
        assert torch.equal(hidden_grad_norms(m, x, gy), want)
    with torch.inference_mode():
        assert torch.equal(hidden_grad_norms(m, x, gy), want)
        x_inf = x.clone()
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
            hidden_grad_norms(m, x_inf, gy)


@pytest.mark.parametrize("how", ["autograd.grad", "backward(inputs=x)", "create_graph"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_last_grad_norms_from_any_backward(cell, backend, how):
    """A training step that asks autograd for other tensors only
    (``torch.autograd.grad(loss, params)``, ``backward(inputs=[x])``), which never
    delivers the probes' gradients, still fills last_grad_norms with that backward's
    norms, as ``backward()`` does; so does a backward with ``create_graph=True``."""
    m = make_module(cell, 2, True, False, backend, seed=9)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(T, B, I, dtype=DT, generator=g, requires_grad=True)
    S = P if cell == "lstm_proj" else H
    gy = torch.randn(T, B, 2 * S, dtype=DT, generator=g)
    m.record_grad_norms = True
    y, _ = m(x)
    loss = (y * gy).sum()
    if how == "autograd.grad":
        torch.autograd.grad(loss, list(m.parameters()))
    elif how == "backward(inputs=x)":
        loss.backward(inputs=[x])
    else:
        torch.autograd.grad(loss, [x], create_graph=True)
    got = m.last_grad_norms
    assert got is not None, how
    yo, _, hs = oracle(m, cell, x.detach())
    torch.autograd.backward(yo, gy)
    rel_check(f"{how} {cell} {backend}", got, oracle_norms(hs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_grad_norms_never_mixes_backward_passes(backend):
    """A second backward that reaches one direction only (``backward(inputs=...)`` on a
    weight of the forward direction) leaves the rows of two passes: last_grad_norms is
    None then, not a stack of both. After a backward with create_graph=True, a later
    backward through the graph it built (a gradient penalty's) keeps its first-order
    norms, on every backend alike."""
    m = make_module("gru", 1, True, False, backend, seed=11)
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    m.record_grad_norms = True
    y, _ = m(x)
    y.sum().backward(retain_graph=True)
    assert m.last_grad_norms is not None
    (y ** 2).sum().backward(inputs=[m.weight_hh_l0])
    assert m.last_grad_norms is None
    y, _ = m(x)
    params = list(m.parameters())
    first = torch.autograd.grad((y ** 2).sum(), params, create_graph=True)
    got = m.last_grad_norms.clone()
    yo, _, hs = oracle(m, "gru", x.detach())
    torch.autograd.backward(yo, 2 * yo.detach())
    rel_check(f"create_graph {backend}", got, oracle_norms(hs))
    sum((g ** 2).sum() for g in first).backward()
    assert torch.equal(m.last_grad_norms, got)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_last_grad_norms_through_checkpoint(cell, backend):
    """Under torch.utils.checkpoint, reentrant or not, last_grad_norms holds what the
    same calls give without it: the last forward's norms, also where an earlier call
    was checkpointed and is recomputed in the backward, where each call's loss has a
    backward of its own, and after a second backward through one call (retain_graph).
    (Non-reentrant: it read None, the recomputing forward's probes had replaced the
    module's.)"""
    from torch.utils.checkpoint import checkpoint

    m = make_module(cell, 2, False, False, backend, seed=12)
    g = torch.Generator().manual_seed(13)
    x1 = torch.randn(T, B, I, dtype=DT, generator=g, requires_grad=True)
    x2 = torch.randn(T + 2, B, I, dtype=DT, generator=g, requires_grad=True)
    m.record_grad_norms = True

    def run(first, second):
        ys = [m(x)[0] if how is None else checkpoint(m, x, use_reentrant=how)[0]
              for x, how in ((x1, first), (x2, second))]
        sum((y * torch.linspace(-1, 1, y.numel(), dtype=DT).view_as(y)).sum()
            for y in ys).backward()
        return m.last_grad_norms

    def apart(first, second):  # each call's loss backward on its own, in call order
        ys = [m(x)[0] if how is None else checkpoint(m, x, use_reentrant=how)[0]
              for x, how in ((x1, first), (x2, second))]
        for k, y in enumerate(ys):
            ((k + 2) * y.pow(2)).sum().backward()
        return m.last_grad_norms

    def twice(how):  # two backwards through one call (retain_graph)
        y = m(x1)[0] if how is None else checkpoint(m, x1, use_reentrant=how)[0]
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=DT).view_as(y)).sum()
        loss.backward(retain_graph=True)
        once = m.last_grad_norms.clone()
        (3 * loss).backward()
        return once, m.last_grad_norms

    want, want_apart = run(None, None), apart(None, None)
    assert want is not None and want.shape[1] == T + 2
    for first, second in ((None, False), (False, None), (False, False), (None, True),
                          (True, None), (True, False), (False, True), (True, True)):
        what = f"checkpoint {first}, {second} {cell} {backend}"
        got = run(first, second)
        assert got is not None, what
        rel_check(what, got, want)
        got = apart(first, second)
        assert got is not None, what
        rel_check(f"{what}, backwards apart", got, want_apart)
    for how in (None, False, True):
        once, again = twice(how)
        rel_check(f"checkpoint {how} {cell} {backend}, second backward", again, 3 * once)


def test_record_grad_norms_in_a_dual_level_without_dual_tensors():
    """Inside forward_ad.dual_level() a call with no dual tensor is an ordinary one: it
    records its norms (a dual input raises, see the test below)."""
    import torch.autograd.forward_ad as fwAD
    m = rnnfast.GRU(I, H, backend="numba").double()
    m.record_grad_norms = True
    x = torch.randn(T, B, I, dtype=DT)
    with fwAD.dual_level():
        m(x)[0].sum().backward()
    assert m.last_grad_norms is not None and m.last_grad_norms.shape == (1, T)


@pytest.mark.parametrize("where", ["func.grad", "vmap", "forward_ad", "jit.trace",
                                   "jit.script"])
def test_record_grad_norms_where_no_backward_can_record_them(where):
    """Where the norms cannot reach last_grad_norms (a torch.func transform, forward-mode
    AD, a trace, a scripted twin), a module with record_grad_norms=True raises a clear
    error naming the cause, not autograd's or the tracer's; with it off, each runs."""
    import torch.autograd.forward_ad as fwAD
    m = rnnfast.GRU(I, H, backend="numba").double()
    x = torch.randn(T, B, I, dtype=DT)

    def run():
        if where == "func.grad":
            return torch.func.grad(lambda xx: m(xx)[0].sum())(x)
        if where == "vmap":
            return torch.func.vmap(lambda xx: m(xx)[0])(x.unsqueeze(0))
        if where == "forward_ad":
            with fwAD.dual_level():
                return m(fwAD.make_dual(x, torch.ones_like(x)))[0]
        if where == "jit.trace":
            return torch.jit.trace(m, (x,))
        return torch.jit.script(m)

    m.record_grad_norms = True
    with pytest.raises(rnnfast.RNNArgumentError, match="record_grad_norms"):
        run()
    m.record_grad_norms = False
    run()


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", (False, True))
def test_packed_sequence(cell, backend, bidirectional):
    """PackedSequence input (unsorted lengths): rows stop at their length; h_t of a row
    exists only for t < length, and the norm at t is over the rows still active."""
    m = make_module(cell, 2, bidirectional, False, backend, seed=5)
    g = torch.Generator().manual_seed(6)
    lengths = torch.tensor([5, T, 2])
    x = torch.randn(T, B, I, dtype=DT, generator=g)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    D = 2 if bidirectional else 1
    S = P if cell == "lstm_proj" else H
    gy_pad = torch.randn(T, B, D * S, dtype=DT, generator=g)
    g_data = pack_padded_sequence(gy_pad, lengths, enforce_sorted=False).data

    norms = hidden_grad_norms(m, packed, g_data)
    y, _, hs = oracle(m, cell, x, lengths)
    mask = (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(2)
    torch.autograd.backward(y, gy_pad * mask)
    expected = oracle_norms(hs)
    rel_check(f"packed {cell} {backend} D{D}", norms, expected)
    # Column T-1 only has the longest row; nothing is missing or invented there.
    assert (expected[:, -1] > 0).all()


def test_known_case_identity_relu():
    """A hand-computable case: ReLU with W_hh = I, positive states, loss on h_T only.
    Every Jacobian is the identity, so ||dL/dh_t|| is the same for every t."""
    m = rnnfast.RNN(2, 4, nonlinearity="relu", backend="numba").to(DT)
    with torch.no_grad():
        m.weight_hh_l0.copy_(torch.eye(4))
        m.weight_ih_l0.fill_(0.1)
        m.bias_ih_l0.fill_(0.5)
        m.bias_hh_l0.zero_()
    x = torch.rand(6, 2, 2, dtype=DT)
    gy = torch.zeros(6, 2, 4, dtype=DT)
    gy[-1] = torch.tensor([[1.0, 2.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    norms = hidden_grad_norms(m, x, gy)
    assert_close("identity relu", norms, torch.full((1, 6), 3.0, dtype=DT))


def test_float32_module_returns_float64():
    m = make_module("lstm", 1, False, False, "numba").float()
    x = torch.randn(T, B, I)
    norms = hidden_grad_norms(m, x, torch.randn(T, B, H))
    assert norms.dtype == torch.float64 and norms.shape == (1, T)
    assert torch.isfinite(norms).all() and (norms > 0).all()


@pytest.mark.parametrize("scale", [2.0 ** -100, 2.0 ** -70, 2.0 ** 70])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_norms_keep_their_range(cell, backend, scale):
    """A float32 module's norms far from 1 (the study's vanishing gradients pass 1e-30):
    a loss scaled by a power of two scales every gradient, and so every norm, exactly.
    Each square is taken in float64, as torch's own norm sums float32 values in double;
    squared in float32 the kernels' norms read 0 below ~1e-19 and inf above ~2e19."""
    m = make_module(cell, 2, True, False, backend, seed=5).float()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(T, B, I, generator=g)
    gy = torch.randn(T, B, 2 * (P if cell == "lstm_proj" else H), generator=g)
    m.record_grad_norms = True
    got = []
    for s in (1.0, scale):
        y, _ = m(x)
        ((y * gy).sum() * s).backward()
        got.append(m.last_grad_norms)
    assert (got[0] > 0).all() and torch.isfinite(got[0]).all()
    torch.testing.assert_close(got[1] / scale, got[0], rtol=1e-12, atol=0)


# ---------------------------------------------------------------- Triton (interpreter)

@pytest.mark.skipif(not triton_interpreting(),
                    reason="Triton kernels on CPU tensors need TRITON_INTERPRET=1 "
                           "(tests/run.sh's interpreter process)")
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("packed", (False, True))
def test_triton_backend(cell, packed):
    """The Triton kernels' norms, run by the interpreter: 2 layers, bidirectional."""
    m = make_module(cell, 2, True, False, "triton", seed=7)
    g = torch.Generator().manual_seed(8)
    S = P if cell == "lstm_proj" else H
    x = torch.randn(T, B, I, dtype=DT, generator=g)
    gy = torch.randn(T, B, 2 * S, dtype=DT, generator=g)
    lengths = torch.tensor([5, T, 2]) if packed else None
    if packed:
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
        norms = hidden_grad_norms(m, inp, pack_padded_sequence(gy, lengths,
                                                               enforce_sorted=False).data)
        gy = gy * (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(2)
    else:
        norms = hidden_grad_norms(m, x, gy)
    y, _, hs = oracle(m, cell, x, lengths)
    torch.autograd.backward(y, gy)
    rel_check(f"triton {cell} packed={packed}", norms, oracle_norms(hs))
