"""Pure-torch reference recurrences: the oracle every test and benchmark compares with.

A plain per-step loop, differentiated by autograd. It implements the same contract as
the kernels (``xp`` = input projection, ``lengths`` freezing finished rows, ``reverse``)
and is itself checked once against torch.nn.RNN / LSTM / GRU in the tests. It is also
the ``backend='torch'`` path of the modules.

``probe`` (optional float64 [T] tensor requiring grad) receives, as its gradient, the
per-step norm ||dL/dh_t|| of the total gradient reaching h_t: the same telemetry the
BPTT kernels produce, here from autograd.
"""

import math
import threading

import torch
import torch.nn.functional as F

# A probe's norms from the last backward pass that reached it: (that pass's autograd
# graph task id, float64 [T], whether that pass built a graph); rnnfast.ops._norms_out,
# the tap below, and the modules' last_grad_norms, which stacks them only when every
# probe's came from one pass.
NORMS_ATTR = "_rnnfast_norms"
RECOMPUTE = threading.local()  # .on: a layer op's backward recomputes the loop (no tap keeps)


def _pass_norms(probe):
    """The [T] buffer that the current backward pass keeps its norms in on ``probe``
    (made at the pass's first write), or None where it keeps none: under torch.compile
    or tracing, and after a pass with create_graph=True (grad mode on inside it) kept
    them, unless it is that pass. A later pass through the graph such a pass built (a
    gradient penalty's backward) reaches h_t in ways that depend on the backend (the
    kernels recompute the layer for it; the reference loop's own steps are in that
    graph), so the first-order norms stay."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    task = torch._C._current_graph_task_id()
    kept = getattr(probe, NORMS_ATTR, None)
    if kept is not None and kept[0] != task:
        if kept[2]:
            return None
        kept = None
    if kept is None:
        kept = (task, torch.zeros(probe.shape, dtype=probe.dtype, device=probe.device),
                torch.is_grad_enabled())
        setattr(probe, NORMS_ATTR, kept)
    return kept[1]


def keep_norms(probe, norms):
    """Keep ``norms`` (float64 [T]) on ``probe`` for the current backward pass
    (:func:`_pass_norms`)."""
    buf = _pass_norms(probe)
    if buf is not None:
        buf.copy_(norms.detach())


class _NormTap(torch.autograd.Function):
    """Identity on h; its backward hands ||grad h|| (rows where ``active``) to the tap,
    ``probe[t]``. In eager mode it also writes it into the probe's NORMS_ATTR [t]
    (``where``: (probe, t); None inside a layer op's recomputing backward), so that the
    norms reach ``last_grad_norms`` from any backward, also one that asks autograd for
    other tensors only (see rnnfast.ops._norms_out)."""

    @staticmethod
    def forward(ctx, h, tap, active, where):
        ctx.save_for_backward(active)
        ctx.where = where
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):
        (active,) = ctx.saved_tensors
        g = grad.double() * active
        norm = torch.linalg.vector_norm(g).reshape(())
        if ctx.where is not None:
            probe, t = ctx.where
            buf = _pass_norms(probe)
            if buf is not None:
                buf[t] = norm.detach()
        return grad, norm, None, None


def _tap(h, probe, t, active):
    if probe is None:
        return h
    mask = torch.ones_like(h[:, :1], dtype=torch.float64) if active is None else active.double()
    # inside a layer op's recomputing backward the op itself keeps the norms it returns
    where = None if getattr(RECOMPUTE, "on", False) else (probe, t)
    return _NormTap.apply(h, probe[t], mask, where)


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _active(lengths, t):
    return None if lengths is None else (t < lengths).unsqueeze(1)


def _keep(active, new, old):
    return new if active is None else torch.where(active, new, old)


def _live(active, state):
    """``state`` with the rows of finished sequences zeroed: what a step computes from.
    Those rows' results are dropped (:func:`_keep`), and their gradient is 0; computed
    from a state that went infinite, autograd's 0 * inf would still put NaN into the
    weight gradients, where torch.nn (which runs the active rows only) has none."""
    return state if active is None else torch.where(active, state, 0)


def activation_fn(nonlinearity, negative_slope=0.01):
    if nonlinearity == "tanh":
        return torch.tanh
    if nonlinearity == "relu":
        return torch.relu
    if nonlinearity == "leaky_relu":
        return lambda z: F.leaky_relu(z, negative_slope)
    raise ValueError(f"nonlinearity must be 'tanh', 'relu' or 'leaky_relu', got {nonlinearity!r}")


def rnn_recurrence(xp, w_hh, h0, lengths=None, reverse=False, nonlinearity="tanh",
                   negative_slope=0.01, probe=None):
    """xp [T, B, H], w_hh [H, H], h0 [B, H] -> y [T, B, H] (0 past each length), h_n [B, H]."""
    act = activation_fn(nonlinearity, negative_slope)
    T = xp.shape[0]
    h = h0
    ys = [None] * T
    for t in _steps(T, reverse):
        active = _active(lengths, t)
        h = _keep(active, act(xp[t] + _live(active, h) @ w_hh.t()), h)
        h = _tap(h, probe, t, active)
        ys[t] = _live(active, h)
    return torch.stack(ys) if T else xp.new_zeros(xp.shape), h


def lstm_recurrence(xp, w_hh, w_hr, h0, c0, lengths=None, reverse=False, probe=None):
    """xp [T, B, 4H], w_hh [4H, P], w_hr [P, H] or None, h0 [B, P], c0 [B, H]
    -> y [T, B, P], h_n [B, P], c_n [B, H]. Gate order i, f, g, o."""
    T = xp.shape[0]
    h, c = h0, c0
    ys = [None] * T
    for t in _steps(T, reverse):
        active = _active(lengths, t)
        i, f, g, o = (xp[t] + _live(active, h) @ w_hh.t()).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * _live(active, c) + torch.sigmoid(i) * torch.tanh(g)
        r = torch.sigmoid(o) * torch.tanh(c_new)
        h_new = r @ w_hr.t() if w_hr is not None else r
        c = _keep(active, c_new, c)
        h = _tap(_keep(active, h_new, h), probe, t, active)
        ys[t] = _live(active, h)
    return torch.stack(ys), h, c


def gru_recurrence(xp, w_hh, b_hn, h0, lengths=None, reverse=False, probe=None):
    """xp [T, B, 3H] (x W_ih^T + b_ih + [b_hr, b_hz, 0]), w_hh [3H, H], b_hn [H] or None,
    h0 [B, H] -> y [T, B, H] (0 past each length), h_n [B, H]. Gate order r, z, n::

        r = sigmoid(xp_r + h W_hr^T);  z = sigmoid(xp_z + h W_hz^T)
        n = tanh(xp_n + r * (h W_hn^T + b_hn));  h' = (1 - z) * n + z * h

    h' is computed as torch's GRU cell computes it, (h - n) * z + n: the same rounding,
    and autograd's gradient of n, g - g z, NaN (not an infinity) for an infinite g.
    """
    T, B = xp.shape[:2]
    h = h0
    ys = [None] * T
    for t in _steps(T, reverse):
        active = _active(lengths, t)
        h_in = _live(active, h)
        gh = h_in @ w_hh.t()
        xr, xz, xn = xp[t].chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        if b_hn is not None:
            hn = hn + b_hn
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = _tap(_keep(active, (h_in - n) * z + n, h), probe, t, active)
        ys[t] = _live(active, h)
    return torch.stack(ys) if T else xp.new_zeros((0, B, h0.shape[1])), h


def input_projection(x, w_ih, b_ih, b_hh):
    """x [T, B, I] -> x @ W_ih^T + b_ih + b_hh, [T, B, G]."""
    xp = x @ w_ih.t()
    if b_ih is not None:
        xp = xp + b_ih + b_hh
    return xp


def rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=None, reverse=False,
              nonlinearity="tanh", negative_slope=0.01, probe=None):
    """One direction of one layer: x [T, B, I] -> (y [T, B, H], h_n [B, H])."""
    xp = input_projection(x, w_ih, b_ih, b_hh)
    return rnn_recurrence(xp, w_hh, h0, lengths, reverse, nonlinearity, negative_slope, probe)


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths=None, reverse=False,
               probe=None):
    """One direction of one LSTM layer: -> (y [T, B, P], h_n [B, P], c_n [B, H])."""
    xp = input_projection(x, w_ih, b_ih, b_hh)
    return lstm_recurrence(xp, w_hh, w_hr, h0, c0, lengths, reverse, probe)


def gru_layer(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=None, reverse=False, probe=None):
    """One direction of one GRU layer: x [T, B, I] -> (y [T, B, H], h_n [B, H]).
    b_hr and b_hz fold into the input projection; b_hn stays in the recurrence."""
    xp = x @ w_ih.t()
    b_hn = None
    if b_ih is not None:
        H = w_hh.shape[1]
        xp = xp + b_ih + torch.cat([b_hh[:2 * H], b_hh.new_zeros(H)])
        b_hn = b_hh[2 * H:]
    return gru_recurrence(xp, w_hh, b_hn, h0, lengths, reverse, probe)


# ---------------------------------------------------------------- inter-layer dropout

_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Philox4x32's round multipliers
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # its key increments


def philox4x32_10(ngroups, seed):
    """Philox4x32-10 (Salmon et al., SC 2011) in torch's int64 ops: the four 32-bit
    words (int64 [ngroups, 4]) of the blocks for counters (g, 0), g = 0 .. ngroups - 1,
    under the 64-bit key ``seed``. A product of two 32-bit words may pass 2^63 and wrap
    (two's complement); only its bits are used (masked to 32), so the wrap is harmless."""
    lo = 0xFFFFFFFF
    g = torch.arange(ngroups, dtype=torch.int64, device="cpu")
    c0, c1 = g & lo, g >> 32
    c2 = c3 = torch.zeros_like(g)
    k0, k1 = seed & lo, (seed >> 32) & lo
    for _ in range(10):
        p0 = c0 * _PHILOX_M[0]
        p1 = c2 * _PHILOX_M[1]
        c0, c1, c2, c3 = ((p1 >> 32) & lo) ^ c1 ^ k0, p1 & lo, ((p0 >> 32) & lo) ^ c3 ^ k1, \
            p0 & lo
        k0 = (k0 + _PHILOX_W[0]) & lo
        k1 = (k1 + _PHILOX_W[1]) & lo
    return torch.stack([c0, c1, c2, c3], dim=1)


def dropout_mask(shape, dtype, p, seed):
    """The inter-layer dropout's mask (rnnfast.kernels.numba.dropout_mask, bitwise), from
    torch ops: element i (row-major over ``shape``) takes word i % 4 of the Philox block
    for counter i // 4 and is kept, as 1 / (1 - p) computed in ``dtype``, when that word
    is below round((1 - p) 2^32); else 0. What rnnfast's layers use on the CPU where the
    numba kernel is not compiled yet (``backend='auto'`` while it compiles in the
    background; the reference loop), so that a seed gives the same masks on every CPU
    path: ~1.3 ms for [35, 20, 200] on a Zen 4, against 0.09 ms in the kernel and 1.05
    ms for torch's own ``F.dropout``. dtype: torch.float32 or torch.float64 (CPU)."""
    n = math.prod(shape)
    if n == 0:
        return torch.empty(shape, dtype=dtype, device="cpu")
    zero = torch.zeros((), dtype=dtype, device="cpu")
    # 1 / (1 - p) with 1 - p rounded to dtype first, as torch's dropout divides by it
    scale = torch.ones((), dtype=dtype, device="cpu") / \
        torch.tensor(1.0 - p, dtype=dtype, device="cpu") if p < 1.0 else zero
    keep_below = min(round((1.0 - p) * 2.0 ** 32), 2 ** 32)
    words = philox4x32_10((n + 3) // 4, seed).view(-1)[:n]
    return torch.where(words < keep_below, scale, zero).view(shape)
