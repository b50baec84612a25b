"""Shared test cases: random problems, torch.nn twins, and readable test ids."""

import torch

import rnnfast

# (cell, options): the five cells every backend implements.
CELLS = {
    "tanh": ("RNN", dict(nonlinearity="tanh")),
    "relu": ("RNN", dict(nonlinearity="relu")),
    "leaky_relu": ("RNN", dict(nonlinearity="leaky_relu", negative_slope=0.1)),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", dict(proj_size=None)),  # proj_size filled from H
}

# (B, T, H) including the odd sizes the standards ask for.
SHAPES = [(3, 17, 37), (1, 5, 1), (2, 1, 8), (4, 9, 100), (1, 1, 3)]


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
