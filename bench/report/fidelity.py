"""Gradient fidelity: relative error of the output, the final state and every gradient
against a float64 torch.nn run, as T grows, beside torch.nn's own float32 error on the
same inputs.

Weights and inputs are drawn in float32 and upcast for the float64 reference, so the
error measured is the computation's, not the rounding of the inputs. ReLU and
leaky-ReLU RNNs get W_hh rescaled to spectral radius ``RHO`` (near 1, so T = 10000 stays
finite while errors have room to grow); tanh-RNN and LSTM keep torch's default init.
Each (cell, T) is run for several seeds; the figure reported per tensor is the
root-mean-square of the per-seed relative errors, for rnnfast and torch alike.
"""

import math

import torch

from . import common
from .common import CELLS, DTYPES

RHO = 1.0
FID_B, FID_H = 16, 64
RATIO_LIMIT = 1.5  # rnnfast float32 error <= 1.5x torch.nn's float32 error


def _weights(cell, H, seed):
    m = common.make_torch(cell, H, H, torch.float32, torch.device("cpu"), seed=seed)
    if CELLS[cell][1] in ("relu", "leaky_relu"):
        with torch.no_grad():
            w = m.weight_hh_l0.double()
            radius = torch.linalg.eigvals(w).abs().max().item()
            m.weight_hh_l0.copy_((w * (RHO / radius)).float())
    return m.state_dict()


def _run(m, x, h0, c0, g, gh):
    """-> dict name -> tensor: outputs and grads of the loss w.r.t. x, h0(, c0), params."""
    x = x.detach().requires_grad_(True)
    h0 = h0.detach().requires_grad_(True)
    state0 = h0
    leaves = [x, h0]
    if c0 is not None:
        c0 = c0.detach().requires_grad_(True)
        state0 = (h0, c0)
        leaves.append(c0)
    y, state = m(x, state0)
    h_n = common.final_h(state)
    names = ["dx", "dh0"] + (["dc0"] if c0 is not None else [])
    params = dict(m.named_parameters())
    grads = torch.autograd.grad(common.loss_of(y, h_n, g, gh), leaves + list(params.values()))
    out = {"y": y, "h_n": h_n}
    if isinstance(state, tuple):
        out["c_n"] = state[1]
    out.update(zip(names + [f"d{n}" for n in params], grads))
    return {k: v.detach() for k, v in out.items()}


def _module(cell, H, dtype, device, backend, state):
    if backend == "torch.nn":
        m = common.make_torch(cell, H, H, dtype, device)
    else:
        m = common.make_rnnfast(cell, H, H, dtype, device, backend)
    m.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()})
    return m


def run_case(cell, T, backends, dtypes, device, seeds=3, B=FID_B, H=FID_H):
    """Errors at one (cell, T). Returns a JSON-ready dict: per implementation
    ("torch.nn float32", "numba float32", ...), per tensor, the RMS over seeds of the
    relative error against float64 torch.nn, plus the rnnfast/torch float32 ratios."""
    if CELLS[cell][1] == "leaky_relu":
        raise ValueError("torch.nn has no leaky-ReLU RNN to serve as the reference")
    sq = {}
    for seed in range(seeds):
        state = _weights(cell, H, seed)
        gen = torch.Generator().manual_seed(1000 + seed)
        x, g = (torch.randn(T, B, H, generator=gen) for _ in range(2))
        h0, c0, gh = (torch.randn(1, B, H, generator=gen) * 0.5 for _ in range(3))
        if CELLS[cell][0] != "lstm":
            c0 = None
        cast = lambda t, dt: None if t is None else t.to(device=device, dtype=dt)  # noqa: E731
        f64 = torch.float64
        ref = _run(_module(cell, H, f64, device, "torch.nn", state),
                   *(cast(t, f64) for t in (x, h0, c0, g, gh)))
        impls = [("torch.nn", "float32")] + [(be, dt) for be in backends for dt in dtypes]
        for be, dt in impls:
            dtype = DTYPES[dt]
            got = _run(_module(cell, H, dtype, device, be, state),
                       *(cast(t, dtype) for t in (x, h0, c0, g, gh)))
            errs = sq.setdefault(f"{be} {dt}", {})
            for k in ref:
                e = common.rel_err(got[k], ref[k])
                errs[k] = errs.get(k, 0.0) + e * e
    errors = {impl: {k: math.sqrt(v / seeds) for k, v in e.items()} for impl, e in sq.items()}
    torch32 = errors["torch.nn float32"]
    ratios = {}
    for be in backends:
        mine = errors.get(f"{be} float32")
        if mine is None:
            continue
        ratios[be] = {k: (mine[k] / torch32[k] if torch32[k] > 0 else float("inf"))
                      for k in mine}
    return {"cell": cell, "T": T, "B": B, "H": H, "seeds": seeds, "rho": RHO
            if CELLS[cell][1] in ("relu", "leaky_relu") else None,
            "errors": errors, "ratio_vs_torch_float32": ratios,
            "max_ratio": {be: max(r.values()) for be, r in ratios.items()},
            "worst_tensor": {be: max(r, key=r.get) for be, r in ratios.items()}}


def summary_rows(results, backends):
    """One row per (cell, T, backend): worst float32 error of rnnfast and of torch.nn
    over all tensors, and the worst per-tensor ratio."""
    rows = []
    for r in results:
        for be in backends:
            if be not in r["ratio_vs_torch_float32"]:
                continue
            mine = r["errors"][f"{be} float32"]
            theirs = r["errors"]["torch.nn float32"]
            f64 = r["errors"].get(f"{be} float64")
            rows.append({
                "cell": r["cell"], "T": r["T"], "backend": be,
                "rnnfast_max_err": max(mine.values()),
                "torch_max_err": max(theirs.values()),
                "max_ratio": r["max_ratio"][be], "worst_tensor": r["worst_tensor"][be],
                "float64_max_err": max(f64.values()) if f64 else None,
                "pass": r["max_ratio"][be] <= RATIO_LIMIT})
    return rows
