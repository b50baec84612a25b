"""The JAX peer: the same layer as ``jax.lax.scan`` under ``jax.jit`` (forward) and
``jax.value_and_grad`` of the same loss (forward+backward), with torch.nn's weights.

Optional: import this module only when ``jax`` is installed (``pip install rnnfast[jax]``).
float64 runs turn on ``jax_enable_x64``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from .common import CELLS


def _np(t):
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _layer(cell):
    kind, nl = CELLS[cell]
    if kind not in ("rnn", "lstm", "gru"):
        raise ValueError(f"no JAX peer for the {kind} cell")
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh,
           "leaky_relu": lambda z: jax.nn.leaky_relu(z, 0.01)}.get(nl)

    def rnn(params, x):
        w_ih, w_hh, b = params
        xp = x @ w_ih.T + b  # [T, B, H]

        def step(h, xp_t):
            h = act(xp_t + h @ w_hh.T)
            return h, h

        h0 = jnp.zeros((x.shape[1], w_hh.shape[1]), x.dtype)
        h_n, y = jax.lax.scan(step, h0, xp)
        return y, h_n

    def lstm(params, x):
        w_ih, w_hh, b = params
        H = w_hh.shape[1]
        xp = x @ w_ih.T + b  # [T, B, 4H]

        def step(carry, xp_t):
            h, c = carry
            z = xp_t + h @ w_hh.T
            i, f, g, o = (z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:])
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        z0 = jnp.zeros((x.shape[1], H), x.dtype)
        (h_n, _), y = jax.lax.scan(step, (z0, z0), xp)
        return y, h_n

    def gru(params, x):  # torch.nn.GRU's cell: b_hn stays inside r * (...)
        w_ih, w_hh, b_ih, b_hh = params
        H = w_hh.shape[1]
        xp = x @ w_ih.T + b_ih  # [T, B, 3H]

        def step(h, xp_t):
            gh = h @ w_hh.T + b_hh
            r = jax.nn.sigmoid(xp_t[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(xp_t[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(xp_t[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
            return h, h

        h0 = jnp.zeros((x.shape[1], H), x.dtype)
        h_n, y = jax.lax.scan(step, h0, xp)
        return y, h_n

    return {"lstm": lstm, "gru": gru}.get(kind, rnn)


def make_fns(cell, m, x, g, gh):
    """(fwd, fwdbwd) zero-argument callables that block until the result is ready.

    ``m``: the torch.nn module whose weights to use (b = b_ih + b_hh; the GRU keeps
    b_ih and b_hh apart, as torch.nn's cell needs); x, g, gh as in
    :func:`bench.common.make_inputs`. fwdbwd returns (loss, (grads w.r.t. the params,
    grad w.r.t. x)).
    """
    if str(x.dtype) == "torch.float64":
        jax.config.update("jax_enable_x64", True)
    layer = _layer(cell)
    w = (_np(m.weight_ih_l0), _np(m.weight_hh_l0))
    b = ((_np(m.bias_ih_l0), _np(m.bias_hh_l0)) if CELLS[cell][0] == "gru"
         else (_np(m.bias_ih_l0) + _np(m.bias_hh_l0),))
    params = tuple(jnp.asarray(a) for a in (*w, *b))
    xj, gj, ghj = (jnp.asarray(_np(t)) for t in (x, g, gh))

    def loss(params, x):
        y, h_n = layer(params, x)
        return (y * gj).sum() + (h_n * ghj[0]).sum()

    fwd = jax.jit(layer)
    fwdbwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    def run_fwd():
        return jax.block_until_ready(fwd(params, xj))

    def run_fwdbwd():
        return jax.block_until_ready(fwdbwd(params, xj))

    return run_fwd, run_fwdbwd
