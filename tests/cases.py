"""The one case catalogue: cells, shapes, backends that can run here, random problems,
torch.nn twins and readable test ids. Every test module draws its cases from here."""

import os

import torch

import rnnfast
from rnnfast.kernels import ACTIVATIONS

# cell -> (rnnfast class name, constructor options): the six cells every backend runs.
CELLS = {
    "tanh": ("RNN", dict(nonlinearity="tanh")),
    "relu": ("RNN", dict(nonlinearity="relu")),
    "leaky_relu": ("RNN", dict(nonlinearity="leaky_relu", negative_slope=0.1)),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", dict(proj_size=None)),  # proj_size filled from H
    "gru": ("GRU", {}),
}
LEAKY_SLOPE = CELLS["leaky_relu"][1]["negative_slope"]

# (B, T, H) for module tests, including the odd sizes the standards ask for.
SHAPES = [(3, 17, 37), (1, 5, 1), (2, 1, 8), (4, 9, 100), (1, 1, 3)]
# (B, T, H) for the kernel contract; (7, 5, 80) takes the numba batch-parallel path
# (uneven row chunks).
KERNEL_SHAPES = [(3, 17, 37), (1, 1, 1), (2, 6, 100), (5, 4, 2), (7, 5, 80)]
# The Triton interpreter runs one program after another: a smaller set covering several
# hidden programs (H = 37), one unit, one step and a tiny width.
INTERPRETED_SHAPES = [(3, 5, 37), (1, 1, 1), (5, 4, 2)]


def triton_interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_backends():
    """Kernel backends that run on this machine's CPU tensors in this process."""
    return ["triton"] if triton_interpreting() else ["numba"]


def module_backends():
    """Module backends to test in this process (the reference loop in the plain pass)."""
    return ["triton"] if triton_interpreting() else ["numba", "torch"]


def shapes_for(backend, shapes=KERNEL_SHAPES):
    return INTERPRETED_SHAPES if backend == "triton" else shapes


def case_id(cell, B, T, H, dtype, backend, extra=""):
    name = str(dtype).replace("torch.", "")
    return f"{cell}-B{B}-T{T}-H{H}-{name}-{backend}{extra}"


def module_options(cell, H):
    kind, opts = CELLS[cell]
    opts = dict(opts)
    if "proj_size" in opts:
        opts["proj_size"] = max(1, H // 2) if H > 1 else 0
        if opts["proj_size"] == 0:
            del opts["proj_size"]
    return kind, opts


def make_pair(cell, I, H, dtype, backend, seed=0, **kwargs):
    """An rnnfast module and a twin with identical weights: torch.nn when torch.nn has
    the cell, else rnnfast's torch-reference backend (leaky_relu)."""
    kind, opts = module_options(cell, H)
    opts.update(kwargs)
    torch.manual_seed(seed)
    ours = getattr(rnnfast, kind)(I, H, backend=backend, **opts).to(dtype)
    if opts.get("nonlinearity") == "leaky_relu":
        twin = getattr(rnnfast, kind)(I, H, backend="torch", **opts).to(dtype)
    else:
        twin = getattr(torch.nn, kind)(I, H, **{k: v for k, v in opts.items()
                                               if k != "negative_slope"}).to(dtype)
    twin.load_state_dict(ours.state_dict())
    return ours, twin


def gate_width(cell, H):
    return {"lstm": 4 * H, "lstm_proj": 4 * H, "gru": 3 * H}.get(cell, H)


def kernel_problem(cell, B, T, H, dtype, lengths_kind, seed):
    """Random inputs of one layer direction's recurrence: xp, w_hh, h0 (+ c0, w_hr for the
    LSTM, b_hn for the GRU) and lengths (None, or ragged with the longest = T)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    P = max(1, H // 2) if cell == "lstm_proj" else H
    G = gate_width(cell, H)
    p = dict(xp=r(T, B, G), w_hh=r(G, P) / (P ** 0.5), h0=r(B, P))
    if cell.startswith("lstm"):
        p["c0"] = r(B, H)
        p["w_hr"] = r(P, H) / (H ** 0.5) if cell == "lstm_proj" else None
    if cell == "gru":
        p["b_hn"] = r(H)
    if lengths_kind == "ragged":
        p["lengths"] = torch.randint(1, T + 1, (B,), generator=g)
        p["lengths"][0] = T
    else:
        p["lengths"] = None
    return p


def activation_code(cell):
    return ACTIVATIONS[cell]
