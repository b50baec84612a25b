"""The benchmark's JAX peer (``bench/report/jaxpeer.py``) computes the same layer as
torch.nn with the same weights: outputs and every gradient, float64. A peer that
computed something else would make its timings meaningless. Skipped without JAX
(``pip install -e ".[jax]"``)."""

import numpy as np
import pytest
import torch

from bench.report import common

from .tolerances import assert_close

jax = pytest.importorskip("jax")
jaxpeer = pytest.importorskip("bench.report.jaxpeer")


def _t(a):
    """A JAX array as a torch tensor (a copy)."""
    return torch.from_numpy(np.array(a))


@pytest.mark.parametrize("cell", ["rnn_relu", "rnn_tanh", "lstm", "gru"])
def test_jax_peer_is_torch_nn(cell):
    T, B, H = 7, 3, 5
    dt = torch.float64
    m = common.make_torch(cell, H, H, dt, "cpu", seed=0)
    x, g, gh = common.make_inputs(T, B, H, H, dt, "cpu", seed=1)
    fwd, fwdbwd = jaxpeer.make_fns(cell, m, x, g, gh)

    xr = x.detach().requires_grad_(True)
    y, state = m(xr)
    h_n = common.final_h(state)
    loss = common.loss_of(y, h_n, g, gh)
    loss.backward()

    jy, jh = fwd()
    assert_close("y", _t(jy), y, dt)
    assert_close("h_n", _t(jh), h_n[0], dt)

    jloss, (jparams, jdx) = fwdbwd()
    assert_close("loss", torch.tensor(float(jloss), dtype=dt), loss, dt)
    assert_close("dx", _t(jdx), xr.grad, dt)
    w_ih, w_hh, b_ih, b_hh = (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    assert_close("dW_ih", _t(jparams[0]), w_ih.grad, dt)
    assert_close("dW_hh", _t(jparams[1]), w_hh.grad, dt)
    if cell == "gru":  # b_ih and b_hh apart
        assert_close("db_ih", _t(jparams[2]), b_ih.grad, dt)
        assert_close("db_hh", _t(jparams[3]), b_hh.grad, dt)
    else:  # one bias b = b_ih + b_hh: its gradient is each of theirs
        assert_close("db", _t(jparams[2]), b_ih.grad, dt)
