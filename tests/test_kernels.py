"""The kernel contract, backend by backend, against autograd on the reference loop:
y, h_n, c_n forward; dxp, dh0, dc0 and the per-step norms ||dL/dh_t|| backward,
with reverse time and ragged lengths."""

import pytest
import torch

from rnnfast import reference
from rnnfast.dispatch import kernels
from rnnfast.kernels import ACTIVATIONS

from .tolerances import assert_close

KERNEL_BACKENDS = ["numba"]
CELLS = ["tanh", "relu", "leaky_relu", "lstm", "lstm_proj"]
# (B, T, H); (7, 5, 80) takes the batch-parallel numba path (uneven row chunks).
SHAPES = [(3, 17, 37), (1, 1, 1), (2, 6, 100), (5, 4, 2), (7, 5, 80)]


def _problem(cell, B, T, H, dtype, lengths_kind, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    lstm = cell.startswith("lstm")
    P = max(1, H // 2) if cell == "lstm_proj" else H
    G = 4 * H if lstm else H
    p = dict(xp=r(T, B, G), w_hh=r(G, P) / (P ** 0.5), h0=r(B, P))
    if lstm:
        p["c0"] = r(B, H)
        p["w_hr"] = r(P, H) / (H ** 0.5) if cell == "lstm_proj" else None
    if lengths_kind == "ragged":
        p["lengths"] = torch.randint(1, T + 1, (B,), generator=g)
        p["lengths"][0] = T
    else:
        p["lengths"] = None
    return p


def _reference(cell, p, reverse, dy, dstates):
    """Autograd through the reference loop: outputs, input grads, per-step norms."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    T = p["xp"].shape[0]
    taps = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    if cell.startswith("lstm"):
        outs = reference.lstm_recurrence(leaves["xp"], leaves["w_hh"], leaves.get("w_hr"),
                                         leaves["h0"], leaves["c0"], p["lengths"], reverse, taps)
    else:
        outs = reference.rnn_recurrence(leaves["xp"], leaves["w_hh"], leaves["h0"],
                                        p["lengths"], reverse, cell, 0.1, taps)
    loss = (outs[0] * dy).sum() + sum((o * d).sum() for o, d in zip(outs[1:], dstates))
    loss.backward()
    return outs, {k: v.grad for k, v in leaves.items()}, taps.grad


CASES = [(be, cell, B, T, H, dt, rev, lk)
         for be in KERNEL_BACKENDS for cell in CELLS for (B, T, H) in SHAPES
         for dt in (torch.float32, torch.float64) for rev in (False, True)
         for lk in ("full", "ragged")]


def _id(c):
    be, cell, B, T, H, dt, rev, lk = c
    return f"{cell}-B{B}-T{T}-H{H}-{str(dt)[6:]}-{be}{'-rev' if rev else ''}-{lk}"


@pytest.mark.parametrize("backend,cell,B,T,H,dtype,reverse,lengths_kind", CASES,
                         ids=[_id(c) for c in CASES])
def test_contract(backend, cell, B, T, H, dtype, reverse, lengths_kind):
    k = kernels(backend)
    p = _problem(cell, B, T, H, dtype, lengths_kind, seed=B * 7 + T * 3 + H)
    g = torch.Generator().manual_seed(99)
    lstm = cell.startswith("lstm")
    if lstm:
        y, h_n, c_n, gates, cs = k.lstm_fwd(p["xp"], p["w_hh"], p["w_hr"], p["h0"], p["c0"],
                                            p["lengths"], reverse)
        outs = (y, h_n, c_n)
    else:
        outs = k.rnn_fwd(p["xp"], p["w_hh"], p["h0"], p["lengths"], reverse,
                         ACTIVATIONS[cell], 0.1)
    dy = torch.randn(outs[0].shape, generator=g, dtype=dtype)
    dstates = [torch.randn(o.shape, generator=g, dtype=dtype) for o in outs[1:]]
    ref_outs, ref_grads, ref_norms = _reference(cell, p, reverse, dy, dstates)
    for name, a, b in zip(["y", "h_n", "c_n"], outs, ref_outs):
        assert_close(name, a, b)
    if lstm:
        dxp, dh0, dc0, dhs, norms = k.lstm_bwd(dy, *dstates, gates, cs, p["c0"], p["w_hh"],
                                               p["w_hr"], p["lengths"], reverse)
        assert_close("dc0", dc0, ref_grads["c0"])
        if p["w_hr"] is None:
            assert dhs.numel() == 0
        else:
            assert dhs.shape == outs[0].shape
    else:
        dxp, dh0, norms = k.rnn_bwd(dy, dstates[0], outs[0], p["w_hh"], p["lengths"], reverse,
                                    ACTIVATIONS[cell], 0.1)
    assert_close("dxp", dxp, ref_grads["xp"])
    assert_close("dh0", dh0, ref_grads["h0"])
    assert norms.dtype == torch.float64 and norms.shape == (T,)
    assert_close("norms", norms, ref_norms, dtype)
