"""Triton backend: launchers that check, allocate and launch (see ``kernels/__init__``).

Same signatures, shapes and semantics as :mod:`rnnfast.kernels.numba`. Tensors are
CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (the interpreter runs the same
kernels on numpy; one step per launch only). dtypes: float32, float64, and on CUDA
float16 / bfloat16, whose recurrent state and accumulation stay float32.

Two ways to run the T steps, one kernel and one step body for both:

* one step per launch (``s_end = s_begin + 1``): the launch boundary is the barrier
  between steps (CPU interpreter; and the GPU fallback when the grid is too large to be
  co-resident);
* all steps in one launch (CUDA, grid <= one program per SM): programs meet at an
  atomic grid barrier after every step (phase).

State lives in float32 (float64 for float64 inputs) ping-pong buffers ``[2, B, *]``;
what programs exchange only as a product's operand (h_{t-1} in ``hx``, dz, r, dh with
projection) travels in the input dtype, the operand's own precision, so bfloat16 and
float16 layers move half the bytes per step;
the host only allocates, launches, and finishes with a few torch ops (h_n = final
state; BPTT's last dh = dz @ W_hh, one small GEMM; norms = sqrt of the per-program
partial sums, added in a fixed order, so the result is deterministic).
"""

import torch

from .._check import check_recurrence_args, full_lengths
from . import config
from .config import BLOCK_B, MAX_WIDTH, grid_size, pick, set_tf32, tf32_enabled
from .gru import gru_bwd, gru_fwd
from .lstm import lstm_bwd_kernel, lstm_fwd_kernel
from .rnn import rnn_bwd_kernel, rnn_fwd_kernel

DTYPES = config.DTYPES
__all__ = ["rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd", "DTYPES", "set_tf32",
           "tf32_enabled", "last_launch"]

# How the last launcher call ran, for tests and benchmarks: {"kernel", "config",
# "grid", "persistent", "launches"}.
last_launch = {}


def _state_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_device(where, t):
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu":
        from rnnfast.dispatch import triton_interpreting
        if triton_interpreting():
            if t.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"{where}: the Triton interpreter runs float32 and float64, "
                                 f"got {t.dtype}")
            return
    raise ValueError(f"{where}: Triton kernels need CUDA tensors (or CPU tensors with "
                     f"TRITON_INTERPRET=1), got device {t.device}")


def _check_width(where, H, P):
    if max(H, P) > MAX_WIDTH:
        raise ValueError(f"{where}: hidden_size and proj_size must be <= {MAX_WIDTH} for the "
                         f"Triton kernels, got {H} and {P}")


def _launch_grid(device, n_units, n_tiles, T):
    """(grid, persistent). Persistent (all steps in one launch) on CUDA when the unit
    programs fit one per SM; batch tiles then share the remaining SMs, each program
    looping over its tiles every step. Otherwise one program per (unit tile, batch tile)
    and one launch per step."""
    cap = config.MAX_BATCH_PROGRAMS
    if device.type == "cuda" and T > 1 and config.persistent_enabled():
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        if n_units <= sms:
            n_b = min(n_tiles, sms // n_units, cap or n_tiles)
            return (n_units, n_b), True
    return (n_units, min(n_tiles, cap or n_tiles)), False


def _run(kernel, name, cfg, grid, T, args, two_phase, persistent, device):
    """Launch ``kernel`` for steps 0..T-1: once (persistent) or once per step (per phase).
    ``args(s_begin, s_end, phases, sync)`` -> the launch's argument list."""
    launches = 0
    if persistent:
        kernel[grid](*args(0, T, 3, 1), **cfg.constexprs(), **cfg.launch_options())
        launches = 1
    else:
        for s in range(T):
            for phases in ((1, 2) if two_phase else (3,)):
                kernel[grid](*args(s, s + 1, phases, 0), **cfg.constexprs(),
                             **cfg.launch_options())
                launches += 1
    last_launch.clear()
    last_launch.update(kernel=name, config=cfg, grid=grid, persistent=persistent,
                       launches=launches, device=str(device))


def _ping_pong(first, shape_tail, dtype, device, B):
    """[2, B, *shape_tail] state buffer whose slot 0 holds ``first`` (or zeros)."""
    buf = torch.zeros((2, B) + tuple(shape_tail), dtype=dtype, device=device)
    if first is not None:
        buf[0].copy_(first)
    return buf


def _counter(device):
    return torch.zeros(1, dtype=torch.int32, device=device)


def _scalar(value, dtype, device):
    return torch.full((1,), float(value), dtype=dtype, device=device)


def _final(buf, T):
    return buf[T % 2]


# ---------------------------------------------------------------- Elman RNN

def rnn_fwd(xp, w_hh, h0, lengths=None, reverse=False, activation=0, negative_slope=0.01,
            reuse_xp=False):
    """Forward recurrence of an Elman RNN.

    Parameters
    ----------
    xp : Tensor [T, B, H]   input projection x @ W_ih^T + b_ih + b_hh
    w_hh : Tensor [H, H];  h0 : Tensor [B, H]
    lengths : int64 Tensor [B] or None   sequence b is active for t < lengths[b]
    reverse : bool;  activation : int (kernels.TANH, RELU, LEAKY_RELU);  negative_slope
    reuse_xp : accepted for the contract (the CPU backend writes y over xp); here y is
    always a new buffer

    Returns
    -------
    y : Tensor [T, B, H] (0 where t >= lengths[b]),  h_n : Tensor [B, H]
    """
    T, B, H = check_recurrence_args("rnn", xp, w_hh, h0, None, None, lengths,
                                    activation, negative_slope, DTYPES, "triton")
    _check_device("rnn_fwd[triton]", xp)
    _check_width("rnn_fwd[triton]", H, H)
    dev = xp.device
    sdt = _state_dtype(xp.dtype)
    xp, w_hh = xp.contiguous(), w_hh.contiguous()
    lens = full_lengths(lengths, T, B, dev)
    y = torch.empty_like(xp)
    hbuf = _ping_pong(h0, (H,), sdt, dev, B)
    hx = _ping_pong(h0, (H,), xp.dtype, dev, B)
    if T > 0 and B > 0:
        cfg = pick("rnn_fwd", H, H, xp.dtype)
        grid, persistent = _launch_grid(dev, *grid_size(cfg, H, H, B), T)
        counter = _counter(dev)
        slope = _scalar(negative_slope, sdt, dev)
        _run(rnn_fwd_kernel, "rnn_fwd", cfg, grid, T,
             lambda s0, s1, phases, sync: (
                 xp, w_hh, lens, y, hbuf, hx, slope, counter, T, B, H, s0, s1,
                 int(bool(reverse)), int(activation), sync),
             False, persistent, dev)
    return y, _final(hbuf, T).to(xp.dtype)


def rnn_bwd(dy, dh_n, y, w_hh, lengths=None, reverse=False, activation=0,
            negative_slope=0.01):
    """BPTT of an Elman RNN.

    Parameters: dy [T, B, H], dh_n [B, H], y [T, B, H] (the forward output), the rest
    as :func:`rnn_fwd`.

    Returns
    -------
    dxp : Tensor [T, B, H], dh0 : Tensor [B, H],
    norms : float64 Tensor [T]   ||dL/dh_t|| over batch and units, t = input position
    """
    T, B, H = y.shape
    for name, t, shape in (("dy", dy, (T, B, H)), ("dh_n", dh_n, (B, H))):
        if tuple(t.shape) != shape or t.dtype != y.dtype:
            raise ValueError(f"rnn_bwd: {name} must be {y.dtype} of shape {shape}, "
                             f"got {t.dtype} of shape {tuple(t.shape)}")
    _check_device("rnn_bwd[triton]", y)
    _check_width("rnn_bwd[triton]", H, H)
    dev = y.device
    sdt = _state_dtype(y.dtype)
    dy, y, w_hh = dy.contiguous(), y.contiguous(), w_hh.contiguous()
    lens = full_lengths(lengths, T, B, dev)
    dxp = torch.empty_like(y)
    dzbuf = _ping_pong(None, (H,), y.dtype, dev, B)
    dhbuf = _ping_pong(dh_n, (H,), sdt, dev, B)
    if T == 0 or B == 0:
        return dxp, dh_n.clone(), torch.zeros(T, dtype=torch.float64, device=dev)
    cfg = pick("rnn_bwd", H, H, y.dtype)
    tiles = grid_size(cfg, H, H, B)
    grid, persistent = _launch_grid(dev, *tiles, T)
    partial = torch.zeros((T, tiles[0] * tiles[1]), dtype=sdt, device=dev)
    counter = _counter(dev)
    slope = _scalar(negative_slope, sdt, dev)
    _run(rnn_bwd_kernel, "rnn_bwd", cfg, grid, T,
         lambda s0, s1, phases, sync: (
             dy, y, w_hh, lens, dxp, dzbuf, dhbuf, partial, slope, counter, T, B, H, s0, s1,
             int(bool(reverse)), int(activation), sync),
         False, persistent, dev)
    dh0 = _last_dh(dzbuf, dhbuf, w_hh, lens, T, reverse)
    return dxp, dh0.to(y.dtype), _norms(partial)


def _last_dh(dzbuf, dhbuf, w_hh, lens, T, reverse):
    """dh0: dz of the last BPTT step @ W_hh for rows active there, else the carried dh."""
    carry = _final(dhbuf, T)
    dz = _final(dzbuf, T).to(carry.dtype)  # [B, G]
    back = dz @ w_hh.to(carry.dtype)  # [B, P]
    t_last = T - 1 if reverse else 0
    return torch.where((t_last < lens)[:, None], back, carry)


def _norms(partial):
    # Per-program partial sums added in a fixed order: deterministic.
    return partial.to(torch.float64).sum(1).sqrt()


# ---------------------------------------------------------------- LSTM

def lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths=None, reverse=False, reuse_xp=False):
    """Forward recurrence of an LSTM (gate order i, f, g, o).

    Parameters
    ----------
    xp : Tensor [T, B, 4H];  w_hh : Tensor [4H, P];  w_hr : Tensor [P, H] or None
    h0 : Tensor [B, P];  c0 : Tensor [B, H];  lengths, reverse, reuse_xp: as
    :func:`rnn_fwd`

    Returns
    -------
    y [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H] (activated), cs [T, B, H]
    """
    T, B, G = check_recurrence_args("lstm", xp, w_hh, h0, c0, w_hr, lengths,
                                    0, 0.0, DTYPES, "triton")
    _check_device("lstm_fwd[triton]", xp)
    H = G // 4
    P = h0.shape[1]
    _check_width("lstm_fwd[triton]", H, P)
    proj = w_hr is not None
    dev = xp.device
    sdt = _state_dtype(xp.dtype)
    xp, w_hh = xp.contiguous(), w_hh.contiguous()
    w_hr_c = w_hr.contiguous() if proj else w_hh
    lens = full_lengths(lengths, T, B, dev)
    y = xp.new_empty((T, B, P))
    gates = torch.empty_like(xp)
    cs = xp.new_empty((T, B, H))
    hbuf = _ping_pong(h0, (P,), sdt, dev, B)
    hx = _ping_pong(h0, (P,), xp.dtype, dev, B)
    cbuf = _ping_pong(c0, (H,), sdt, dev, B)
    rbuf = torch.zeros((B, H) if proj else (1,), dtype=xp.dtype, device=dev)
    if T > 0 and B > 0:
        cfg = pick("lstm_fwd", H, P, xp.dtype)
        grid, persistent = _launch_grid(dev, *grid_size(cfg, H, P, B), T)
        counter = _counter(dev)
        _run(lstm_fwd_kernel, "lstm_fwd", cfg, grid, T,
             lambda s0, s1, phases, sync: (
                 xp, w_hh, w_hr_c, lens, y, gates, cs, hbuf, hx, cbuf, rbuf, counter,
                 T, B, H, P, s0, s1, int(bool(reverse)), phases, sync),
             proj, persistent, dev)
    return (y, _final(hbuf, T).to(xp.dtype), _final(cbuf, T).to(xp.dtype), gates, cs)


def lstm_bwd(dy, dh_n, dc_n, gates, cs, c0, w_hh, w_hr, lengths=None, reverse=False):
    """BPTT of an LSTM.

    Parameters: dy [T, B, P], dh_n [B, P], dc_n [B, H]; gates, cs from :func:`lstm_fwd`;
    c0, w_hh, w_hr, lengths, reverse as in the forward.

    Returns
    -------
    dxp [T, B, 4H], dh0 [B, P], dc0 [B, H],
    dhs [T, B, P] (total gradient reaching h_t, for dW_hr; [0] without projection),
    norms : float64 [T]
    """
    T, B, G = gates.shape
    H = G // 4
    P = dh_n.shape[1]
    proj = w_hr is not None
    _check_device("lstm_bwd[triton]", gates)
    _check_width("lstm_bwd[triton]", H, P)
    dev = gates.device
    sdt = _state_dtype(gates.dtype)
    dy, gates, cs, c0 = dy.contiguous(), gates.contiguous(), cs.contiguous(), c0.contiguous()
    w_hh = w_hh.contiguous()
    w_hr_c = w_hr.contiguous() if proj else w_hh
    lens = full_lengths(lengths, T, B, dev)
    dxp = torch.empty_like(gates)
    dhs = gates.new_empty((T, B, P) if proj else (0,))
    dzbuf = _ping_pong(None, (G,), gates.dtype, dev, B)
    dhbuf = _ping_pong(dh_n, (P,), sdt, dev, B)
    dcbuf = _ping_pong(dc_n, (H,), sdt, dev, B)
    gbuf = torch.zeros((B, P) if proj else (1,), dtype=gates.dtype, device=dev)
    if T == 0 or B == 0:
        return (dxp, dh_n.clone(), dc_n.clone(), dhs,
                torch.zeros(T, dtype=torch.float64, device=dev))
    cfg = pick("lstm_bwd", H, P, gates.dtype)
    tiles = grid_size(cfg, H, P, B)
    grid, persistent = _launch_grid(dev, *tiles, T)
    partial = torch.zeros((T, tiles[0] * tiles[1]), dtype=sdt, device=dev)
    counter = _counter(dev)
    _run(lstm_bwd_kernel, "lstm_bwd", cfg, grid, T,
         lambda s0, s1, phases, sync: (
             dy, gates, cs, c0, w_hh, w_hr_c, lens, dxp, dhs if proj else dxp, dzbuf, dhbuf,
             dcbuf, gbuf, partial, counter, T, B, H, P, s0, s1, int(bool(reverse)), phases,
             sync),
         proj, persistent, dev)
    dh0 = _last_dh(dzbuf, dhbuf, w_hh, lens, T, reverse)
    return (dxp, dh0.to(gates.dtype), _final(dcbuf, T).to(gates.dtype), dhs,
            _norms(partial))
