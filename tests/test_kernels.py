"""The kernel contract, on every kernel backend that runs here (numba; Triton under
TRITON_INTERPRET=1), against autograd through the reference loop: y, h_n (, c_n)
forward; dxp, dh0 (, dc0), the GRU's recurrent gradient and the per-step norms
||dL/dh_t|| backward, with reverse time and ragged lengths. (The reference loop itself is
checked against torch.nn in test_modules.)"""

import pytest
import torch

from rnnfast import dispatch, reference

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
