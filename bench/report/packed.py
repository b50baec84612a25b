"""Packed sequences: fwd+bwd time of a PackedSequence batch whose lengths are spread
evenly over [T/4, T] (the longest is T), against the padded [T, B, I] batch of the same
shape, for rnnfast and torch.nn, all four timed interleaved in one process.

The PackedSequence is built once outside the timed region (as a data loader would);
the loss is ``(out.data * g).sum() + (h_n * gh).sum()`` and the grads are taken w.r.t.
``out.data``'s source (the packed input data) and every parameter.
"""

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import common
from .common import DTYPES


def spread_lengths(T, B, seed=2):
    """B lengths spread evenly over [T/4, T] (shuffled; the maximum is T)."""
    lo = max(1, T // 4)
    lengths = torch.linspace(lo, T, B).round().to(torch.int64) if B > 1 else torch.tensor([T])
    gen = torch.Generator().manual_seed(seed)
    return lengths[torch.randperm(B, generator=gen)]


def _packed_fn(m, packed, g, gh):
    data = packed.data.detach().requires_grad_(True)
    pk = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                        packed.unsorted_indices)
    params = list(m.parameters())

    def run():
        out, state = m(pk)
        loss = (out.data * g).sum() + (common.final_h(state) * gh).sum()
        return torch.autograd.grad(loss, [data] + params)
    return run


def run_case(cell, T, B, H, device, backends, timing, dtype="float32"):
    dt = DTYPES[dtype]
    tm = common.make_torch(cell, H, H, dt, device, seed=0)
    x, g, gh = common.make_inputs(T, B, H, H, dt, device, seed=1)
    lengths = spread_lengths(T, B)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    gp = torch.randn(packed.data.shape, generator=torch.Generator().manual_seed(3),
                     dtype=torch.float64).to(device=device, dtype=dt)
    fns = {"torch.nn padded": common.fwdbwd_fn(tm, x, g, gh),
           "torch.nn packed": _packed_fn(tm, packed, gp, gh)}
    for be in backends:
        rm = common.make_rnnfast(cell, H, H, dt, device, be, like=tm)
        fns[f"rnnfast[{be}] padded"] = common.fwdbwd_fn(rm, x, g, gh)
        fns[f"rnnfast[{be}] packed"] = _packed_fn(rm, packed, gp, gh)
    times = common.time_interleaved(fns, device, **timing)
    med = {k: v["median_s"] for k, v in times.items()}
    out = {"cell": cell, "T": T, "B": B, "H": H, "I": H, "dtype": dtype, "mode": "fwdbwd",
           "lengths": lengths.tolist(), "times": times,
           "torch_packed_over_padded": med["torch.nn packed"] / med["torch.nn padded"]}
    for be in backends:
        out[f"{be}_packed_over_padded"] = (med[f"rnnfast[{be}] packed"]
                                           / med[f"rnnfast[{be}] padded"])
        out[f"{be}_speedup_packed"] = med["torch.nn packed"] / med[f"rnnfast[{be}] packed"]
    return out


def default_cases(quick=False):
    if quick:
        return [("rnn_relu", 100, 16, 64), ("lstm", 100, 16, 64)]
    return [(c, T, 16, 64) for c in ("rnn_relu", "lstm") for T in (100, 1000)]
