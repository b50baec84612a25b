"""The GRU: the reference loop against torch.nn.GRU, then the numba launchers against
autograd through the reference (y, h_n, dxp, dgh, dh0, per-step norms), a layer built
from the launchers under gradcheck, bitwise determinism and argument errors."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnfast import reference
from rnnfast.kernels import numba as K
from rnnfast.kernels.numba import _host

from .cases import KERNEL_SHAPES, case_id
from .tolerances import assert_close

# (B, T, H) of the kernel contract from the one catalogue (tests/cases.py); its
# (7, 5, 80) takes the batch-parallel path (checked in test_parallel_path).
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def two_threads():
    """Two torch threads (the launchers' thread budget), so the parallel path runs."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _lengths(g, B, T):
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return lengths


# ---------------------------------------------------------------- reference vs torch.nn

def _torch_gru(I, H, bias, bidirectional, seed):
    torch.manual_seed(seed)
    return torch.nn.GRU(I, H, bias=bias, bidirectional=bidirectional, dtype=torch.float64)


def _params(gru, suffix=""):
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    return [getattr(gru, n + suffix, None) for n in names]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_reference_matches_torch_gru(bias, reverse):
    """gru_layer vs torch.nn.GRU (same weights, float64): y, h_n and every gradient;
    reverse time against torch.nn.GRU on the time-flipped input."""
    B, T, I, H = 3, 7, 5, 4
    gru = _torch_gru(I, H, bias, False, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    dy = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dh_n = torch.randn(B, H, generator=g, dtype=torch.float64)
    flip = (lambda t: t.flip(0)) if reverse else (lambda t: t)  # noqa: E731

    xt, ht = _leaf(x), _leaf(h0)
    y_t, hn_t = gru(flip(xt), ht.unsqueeze(0))
    ((flip(y_t) * dy).sum() + (hn_t[0] * dh_n).sum()).backward()

    xr, hr = _leaf(x), _leaf(h0)
    params = [None if p is None else _leaf(p) for p in _params(gru)]
    y_r, hn_r = reference.gru_layer(xr, *params, hr, reverse=reverse)
    ((y_r * dy).sum() + (hn_r * dh_n).sum()).backward()

    assert_close("y", y_r, flip(y_t))
    assert_close("h_n", hn_r, hn_t[0])
    assert_close("dx", xr.grad, xt.grad)
    assert_close("dh0", hr.grad, ht.grad)
    for name, ours, theirs in zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"],
                                  params, _params(gru)):
        if theirs is not None:
            assert_close(f"d{name}", ours.grad, theirs.grad)


def test_reference_matches_torch_gru_packed():
    """Ragged lengths: both directions of gru_layer vs a bidirectional torch.nn.GRU fed
    a PackedSequence (outputs padded with 0, h_n at each row's own length)."""
    B, T, I, H = 4, 6, 3, 5
    gru = _torch_gru(I, H, True, True, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, B, H, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1])
    dy = torch.randn(T, B, 2 * H, generator=g, dtype=torch.float64)
    dh_n = torch.randn(2, B, H, generator=g, dtype=torch.float64)

    xt, ht = _leaf(x), _leaf(h0)
    out, hn_t = gru(pack_padded_sequence(xt, lengths, enforce_sorted=False), ht)
    y_t, _ = pad_packed_sequence(out, total_length=T)
    ((y_t * dy).sum() + (hn_t * dh_n).sum()).backward()

    xr, hr = _leaf(x), _leaf(h0)
    suffixes = ["", "_reverse"]
    params = {s: [_leaf(p) for p in _params(gru, s)] for s in suffixes}
    loss = 0
    for d, s in enumerate(suffixes):
        y_r, hn_r = reference.gru_layer(xr, *params[s], hr[d], lengths, reverse=d == 1)
        assert_close(f"y{s}", y_r, y_t[..., d * H:(d + 1) * H])
        assert_close(f"h_n{s}", hn_r, hn_t[d])
        loss = loss + (y_r * dy[..., d * H:(d + 1) * H]).sum() + (hn_r * dh_n[d]).sum()
    loss.backward()
    assert_close("dx", xr.grad, xt.grad)
    assert_close("dh0", hr.grad, ht.grad)
    for s in suffixes:
        for name, ours, theirs in zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"],
                                      params[s], _params(gru, s)):
            assert_close(f"d{name}{s}", ours.grad, theirs.grad)


# ---------------------------------------------------------------- launchers vs reference

def _problem(B, T, H, dtype, ragged, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(xp=r(T, B, 3 * H), w_hh=r(3 * H, H) / H ** 0.5, b_hn=r(H), h0=r(B, H),
                lengths=_lengths(g, B, T) if ragged else None,
                dy=r(T, B, H), dh_n=r(B, H))


def _reference(p, reverse):
    """Autograd through gru_recurrence: y, h_n, and the gradients of xp and h0 with the
    per-step norms (probe)."""
    leaves = {k: _leaf(p[k]) for k in ("xp", "w_hh", "b_hn", "h0")}
    T = p["xp"].shape[0]
    probe = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    y, h_n = reference.gru_recurrence(leaves["xp"], leaves["w_hh"], leaves["b_hn"],
                                      leaves["h0"], p["lengths"], reverse, probe)
    ((y * p["dy"]).sum() + (h_n * p["dh_n"]).sum()).backward()
    return y, h_n, leaves["xp"].grad, leaves["h0"].grad, probe.grad


def _reference_dgh(p, reverse):
    """dgh from autograd: the reference run one step at a time, each step with its own
    b_hn leaf of shape [B, H], whose gradient is then dgh's n block at that step (the
    r and z blocks are the step's xp gradient, as gh_r, gh_z enter beside xp_r, xp_z)."""
    T, B, G = p["xp"].shape
    H = G // 3
    h = p["h0"]
    xps, bhns, loss = [None] * T, [None] * T, 0
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        xps[t] = _leaf(p["xp"][t:t + 1])
        bhns[t] = _leaf(p["b_hn"].expand(B, H))
        # the step's lengths: 1 where the row is active at t, else 0 (frozen)
        active = None if p["lengths"] is None else (t < p["lengths"]).long()
        y, h = reference.gru_recurrence(xps[t], p["w_hh"], bhns[t], h, active)
        loss = loss + (y[0] * p["dy"][t]).sum()
    (loss + (h * p["dh_n"]).sum()).backward()
    return torch.stack([torch.cat([x.grad[0, :, :2 * H], b.grad], 1)
                        for x, b in zip(xps, bhns)])


CASES = [(B, T, H, dt, rev, ragged) for (B, T, H) in KERNEL_SHAPES for dt in DTYPES
         for rev in (False, True) for ragged in (False, True)]


def _id(c):
    B, T, H, dt, rev, ragged = c
    return case_id("gru", B, T, H, dt, "numba",
                   f"{'-rev' if rev else ''}-{'ragged' if ragged else 'full'}")


@pytest.mark.parametrize("B,T,H,dtype,reverse,ragged", CASES, ids=[_id(c) for c in CASES])
def test_contract(B, T, H, dtype, reverse, ragged):
    p = _problem(B, T, H, dtype, ragged, seed=B * 7 + T * 3 + H)
    y, h_n, gates = K.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"], p["lengths"], reverse)
    assert gates.shape == (T, B, 4 * H) and gates.dtype == dtype
    y_r, hn_r, dxp_r, dh0_r, norms_r = _reference(p, reverse)
    assert_close("y", y, y_r)
    assert_close("h_n", h_n, hn_r)
    dxp, dgh, dh0, norms = K.gru_bwd(p["dy"], p["dh_n"], y, gates, p["h0"], p["w_hh"],
                                     p["lengths"], reverse)
    assert_close("dxp", dxp, dxp_r)
    assert_close("dgh", dgh, _reference_dgh(p, reverse))
    assert_close("dh0", dh0, dh0_r)
    assert norms.dtype == torch.float64 and norms.shape == (T,)
    assert_close("norms", norms, norms_r, dtype)


def test_parallel_path():
    """(7, 5, 80) splits the batch across threads, and the split changes no bit."""
    B, T, H = 7, 5, 80
    assert _host.recurrence_chunks(B, B * H * 3 * H, T) > 1
    p = _problem(B, T, H, torch.float32, True, seed=5)
    args = (p["xp"], p["w_hh"], p["b_hn"], p["h0"], p["lengths"], True)
    par = K.gru_fwd(*args)
    par_b = K.gru_bwd(p["dy"], p["dh_n"], par[0], par[2], p["h0"], p["w_hh"], p["lengths"],
                      True)
    torch.set_num_threads(1)
    ser = K.gru_fwd(*args)
    ser_b = K.gru_bwd(p["dy"], p["dh_n"], ser[0], ser[2], p["h0"], p["w_hh"], p["lengths"],
                      True)
    for name, a, b in zip(["y", "h_n", "gates", "dxp", "dgh", "dh0"],
                          par + par_b[:3], ser + ser_b[:3]):
        assert torch.equal(a, b), name
    # norms: per-chunk float64 partial sums, added in chunk order
    assert_close("norms", par_b[3], ser_b[3], torch.float64)


def test_no_bias_is_zero_bias():
    p = _problem(3, 4, 5, torch.float64, True, seed=6)
    a = K.gru_fwd(p["xp"], p["w_hh"], None, p["h0"], p["lengths"])
    b = K.gru_fwd(p["xp"], p["w_hh"], torch.zeros(5, dtype=torch.float64), p["h0"],
                  p["lengths"])
    for x, z in zip(a, b):
        assert torch.equal(x, z)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_backward_bitwise_deterministic(dtype):
    p = _problem(7, 5, 80, dtype, True, seed=7)
    y, _, gates = K.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"], p["lengths"])
    runs = [K.gru_bwd(p["dy"], p["dh_n"], y, gates, p["h0"], p["w_hh"], p["lengths"])
            for _ in range(2)]
    for name, a, b in zip(["dxp", "dgh", "dh0", "norms"], *runs):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- a layer from the launchers

class _Layer(torch.autograd.Function):
    """One GRU layer direction from the numba launchers: project, gru_fwd; gru_bwd,
    layer_grads(dgh=...). Inputs x [T, B, I], h0 [B, H], w_ih [3H, I], w_hh [3H, H],
    b_ih [3H], b_hh [3H]."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
        H = w_hh.shape[1]
        bias = b_ih + torch.cat([b_hh[:2 * H], b_hh.new_zeros(H)])
        xp = K.project(x, w_ih, bias)
        y, h_n, gates = K.gru_fwd(xp, w_hh, b_hh[2 * H:], h0, lengths, reverse)
        ctx.save_for_backward(x, h0, w_ih, w_hh, y, gates)
        ctx.lengths, ctx.reverse = lengths, reverse
        return y, h_n

    @staticmethod
    def backward(ctx, dy, dh_n):
        x, h0, w_ih, w_hh, y, gates = ctx.saved_tensors
        dxp, dgh, dh0, _ = K.gru_bwd(dy.contiguous(), dh_n.contiguous(), y, gates, h0, w_hh,
                                     ctx.lengths, ctx.reverse)
        dx, dw_ih, dw_hh, db_ih, db_hh = K.layer_grads(dxp, x, y, h0, w_ih, ctx.lengths,
                                                       ctx.reverse, dgh=dgh)
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None


def _layer_inputs(B, T, I, H, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return [r(T, B, I), r(B, H), r(3 * H, I) / I ** 0.5, r(3 * H, H) / H ** 0.5,
            r(3 * H) / 3, r(3 * H) / 3]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
def test_layer_gradcheck(reverse, ragged):
    B, T, I, H = 3, 4, 3, 5
    lengths = torch.tensor([4, 1, 3]) if ragged else None
    inputs = [_leaf(t) for t in _layer_inputs(B, T, I, H, torch.float64, seed=8)]
    assert torch.autograd.gradcheck(
        lambda *a: _Layer.apply(*a, lengths, reverse), inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_layer_matches_reference(dtype, reverse):
    """The launcher layer's weight and bias gradients (dW_hh, db_hh come from dgh) vs
    autograd through reference.gru_layer."""
    B, T, I, H = 5, 9, 7, 37
    g = torch.Generator().manual_seed(9)
    lengths = _lengths(g, B, T)
    inputs = _layer_inputs(B, T, I, H, dtype, seed=10)
    dy = torch.randn(T, B, H, generator=g, dtype=dtype)
    dh_n = torch.randn(B, H, generator=g, dtype=dtype)
    ours, ref = [_leaf(t) for t in inputs], [_leaf(t) for t in inputs]
    y, h_n = _Layer.apply(*ours, lengths, reverse)
    ((y * dy).sum() + (h_n * dh_n).sum()).backward()
    x, h0, w_ih, w_hh, b_ih, b_hh = ref
    y_r, hn_r = reference.gru_layer(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse)
    ((y_r * dy).sum() + (hn_r * dh_n).sum()).backward()
    assert_close("y", y, y_r)
    assert_close("h_n", h_n, hn_r)
    for name, a, b in zip(["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"], ours, ref):
        assert_close(f"d{name}", a.grad, b.grad)


# ---------------------------------------------------------------- errors

def test_bad_arguments_raise():
    p = _problem(2, 3, 4, torch.float32, False, seed=11)
    xp, w_hh, b_hn, h0 = p["xp"], p["w_hh"], p["b_hn"], p["h0"]
    with pytest.raises(ValueError, match="3\\*hidden_size"):
        K.gru_fwd(xp[..., :-1], w_hh, b_hn, h0)
    with pytest.raises(ValueError, match="b_hn must have shape"):
        K.gru_fwd(xp, w_hh, b_hn[:-1], h0)
    with pytest.raises(ValueError, match="w_hh dtype"):
        K.gru_fwd(xp, w_hh.double(), b_hn, h0)
    with pytest.raises(ValueError, match="lengths must lie"):
        K.gru_fwd(xp, w_hh, b_hn, h0, torch.tensor([3, 0]))
    y, _, gates = K.gru_fwd(xp, w_hh, b_hn, h0)
    with pytest.raises(ValueError, match="gates must be"):
        K.gru_bwd(p["dy"], p["dh_n"], y, gates[..., :-1], h0, w_hh)
    with pytest.raises(ValueError, match="dy must be"):
        K.gru_bwd(p["dy"].double(), p["dh_n"], y, gates, h0, w_hh)
