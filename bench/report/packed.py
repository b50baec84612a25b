"""Packed sequences: fwd+bwd time of a PackedSequence batch against the padded
[T, B, I] batch of the same sequences, for rnnfast and torch.nn, all four timed
interleaved in one process.

Length distributions (``draw_lengths``; B lengths in [1, T], drawn from a fixed seed, in
the order drawn: the batch is packed with ``enforce_sorted=False``, so PackedSequence
sorts them):

* ``uniform``: integers uniform in [1, T] (about half the padded batch's tokens);
* ``longtail``: ``T * min(1, LogNormal(log(1/8), 1))`` rounded up to >= 1 (median T/8,
  a long tail up to T; about a fifth of the tokens), as sentence or utterance lengths
  in a batch padded to a fixed maximum;
* ``spread``: evenly spread over [T/4, T] (the first version of this section).

In every distribution the longest sequence is set to T, so the padded batch is exactly
as long as its longest sequence (no all-padding steps). The token fraction is
``sum(lengths) / (T * B)``.

The PackedSequence is built once outside the timed region (as a data loader would);
the loss is ``(out.data * g).sum() + (h_n * gh).sum()`` and the grads are taken w.r.t.
``out.data``'s source (the packed input data) and every parameter.
"""

import math

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import common
from .common import DTYPES

DISTRIBUTIONS = ("uniform", "longtail", "spread")
LONGTAIL_MEDIAN = 1 / 8  # of T
LONGTAIL_SIGMA = 1.0


def spread_lengths(T, B, seed=2):
    """B lengths spread evenly over [T/4, T] (shuffled; the maximum is T)."""
    lo = max(1, T // 4)
    lengths = torch.linspace(lo, T, B).round().to(torch.int64) if B > 1 else torch.tensor([T])
    gen = torch.Generator().manual_seed(seed)
    return lengths[torch.randperm(B, generator=gen)]


def draw_lengths(dist, T, B, seed=2):
    """B int64 lengths in [1, T] from distribution ``dist`` (see the module docstring);
    the longest is T. Raises ValueError for an unknown distribution."""
    if dist == "spread":
        return spread_lengths(T, B, seed)
    gen = torch.Generator().manual_seed(seed)
    if dist == "uniform":
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
    elif dist == "longtail":
        z = torch.randn(B, generator=gen, dtype=torch.float64)
        frac = torch.exp(math.log(LONGTAIL_MEDIAN) + LONGTAIL_SIGMA * z).clamp(max=1.0)
        lengths = torch.ceil(T * frac).to(torch.int64).clamp(1, T)
    else:
        raise ValueError(f"unknown length distribution {dist!r} (choose from "
                         f"{', '.join(DISTRIBUTIONS)})")
    lengths[torch.argmax(lengths)] = T
    return lengths


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


def run_case(cell, T, B, H, device, backends, timing, dtype="float32", dist="spread"):
    """Time padded and packed fwd+bwd of torch.nn and each rnnfast backend at one case.
    Returns a JSON-ready dict: times, lengths, token fraction, and per backend
    ``<be>_packed_over_padded``, ``<be>_speedup_packed`` (torch.nn packed / rnnfast
    packed) and ``<be>_speedup_padded`` (the same on the padded batch)."""
    dt = DTYPES[dtype]
    tm = common.make_torch(cell, H, H, dt, device, seed=0)
    x, g, gh = common.make_inputs(T, B, H, H, dt, device, seed=1)
    lengths = draw_lengths(dist, T, B)
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
           "dist": dist, "lengths": lengths.tolist(),
           "token_fraction": int(lengths.sum()) / (T * B), "times": times,
           "torch_packed_over_padded": med["torch.nn packed"] / med["torch.nn padded"]}
    for be in backends:
        out[f"{be}_packed_over_padded"] = (med[f"rnnfast[{be}] packed"]
                                           / med[f"rnnfast[{be}] padded"])
        out[f"{be}_speedup_packed"] = med["torch.nn packed"] / med[f"rnnfast[{be}] packed"]
        out[f"{be}_speedup_padded"] = med["torch.nn padded"] / med[f"rnnfast[{be}] padded"]
    return out


def default_cases(quick=False):
    """(cell, T, B, H, dist) cases. Full: issue 13's grid, B = 32, H = 128, T = 100 and
    1000, ReLU-RNN, LSTM and GRU, uniform and long-tailed lengths. Quick: T = 100, both
    distributions for the ReLU-RNN, uniform for the LSTM."""
    if quick:
        return [("rnn_relu", 100, 32, 128, "uniform"), ("lstm", 100, 32, 128, "uniform"),
                ("rnn_relu", 100, 32, 128, "longtail")]
    return [(c, T, 32, 128, d) for c in ("rnn_relu", "lstm", "gru") for T in (100, 1000)
            for d in ("uniform", "longtail")]
