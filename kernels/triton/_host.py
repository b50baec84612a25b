"""Host-side helpers shared by the Triton launchers: device and width checks, the launch
grid (persistent or one step per launch), state buffers, and the record of the last
launch. Nothing here is a kernel."""

import torch

from . import config
from .config import MAX_WIDTH, triton_interpreting

# How the last launcher call ran, for tests and benchmarks: {"kernel", "config",
# "grid", "persistent", "launches", "device"}.
last_launch = {}


def state_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense(t):
    """t as a kernel reads it: contiguous, with its negative bit resolved (a lazily
    negated view, e.g. torch._neg_view, keeps the un-negated values in memory: a kernel
    that reads the storage would get the wrong sign)."""
    return t.resolve_neg().contiguous()


def check_device(where, t):
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu":
        if triton_interpreting():
            if t.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"{where}: the Triton interpreter runs float32 and float64, "
                                 f"got {t.dtype}")
            return
    raise ValueError(f"{where}: Triton kernels need CUDA tensors (or CPU tensors with "
                     f"TRITON_INTERPRET=1), got device {t.device}")


def check_width(where, H, P):
    if max(H, P) > MAX_WIDTH:
        raise ValueError(f"{where}: hidden_size and proj_size must be <= {MAX_WIDTH} for the "
                         f"Triton kernels, got {H} and {P}")


def launch_grid(device, n_units, n_tiles, T):
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


def run(kernel, name, cfg, grid, T, args, two_phase, persistent, device):
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


def ping_pong(first, shape_tail, dtype, device, B):
    """[2, B, *shape_tail] state buffer whose slot 0 holds ``first`` (or zeros)."""
    buf = torch.zeros((2, B) + tuple(shape_tail), dtype=dtype, device=device)
    if first is not None:
        buf[0].copy_(first)
    return buf


def counter(device):
    return torch.zeros(1, dtype=torch.int32, device=device)


def scalar(value, dtype, device):
    return torch.full((1,), float(value), dtype=dtype, device=device)


def final(buf, T):
    return buf[T % 2]


def last_dh(dzbuf, dhbuf, w_hh, lens, T, reverse):
    """dh0: dz of the last BPTT step @ W_hh for rows active there, else the carried dh."""
    carry = final(dhbuf, T)
    dz = final(dzbuf, T).to(carry.dtype)  # [B, G]
    back = dz @ w_hh.to(carry.dtype)  # [B, P]
    t_last = T - 1 if reverse else 0
    return torch.where((t_last < lens)[:, None], back, carry)


def norms_from_partials(partial):
    # Per-program partial sums added in a fixed order: deterministic.
    return partial.to(torch.float64).sum(1).sqrt()
