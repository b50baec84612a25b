"""The study's modes, fixed before any run: what is trained, for how long, with which
learning rates. Nothing here is tuned on the results it produces.

Stages, in order:
1. ``mechanism``: gradient norm vs lag at initialization (float64, telemetry), no training.
2. ``grid``: the adding problem at ``grid_T`` for every cell x learning rate in ``lr_grid``
   x clipping on/off x ``seeds`` seeds: the robustness shares, and each cell's learning rate for
   the ladders (``stats.choose_lr``: the lr that solved most clipped runs).
3. ``ladder``: for each task and cell, T up the ladder with that lr and clipping, until a
   T at which no seed solves (longer T are then not run). The grid's clipped runs at
   the chosen lr are the adding ladder's rung at ``grid_T``.

Why these settings (from pilots, which are not part of any report): at T = 50 and
2,000 steps the LSTM and the IRNN solved the adding problem only at lr 0.01 (not 0.001 or
0.0001), so every grid holds 0.01; the quick grid runs at T = 25, where 1,000 steps are
enough to separate solving from diverging. Memory task: copy with 3 symbols of 4 (not
Arjovsky et al.'s 10 of 8), because the LSTM solved the 3-of-4 copy at delay 20 within
1,500 steps (lr 0.01), while with 5 symbols of 8, or 10 of 8 at delays 10 and 20, no
cell did within the quick budget; a memory task no cell solves shows nothing about
which cell remembers longest.
"""

COPY = {"name": "copy", "n_symbols": 3, "alphabet": 4}
CLIP_NORM = 1.0  # global gradient-norm clipping (Pascanu, Mikolov & Bengio 2013)

MODES = {
    # <= 10 minutes on 2 CPU cores: the mechanism, the clipping contrast, and the adding
    # ladder to where the cells separate.
    "quick": dict(
        hidden=64, batch=32, test_size=256, eval_every=50,
        lr_grid=(1e-3, 1e-2), grid_T=25, seeds=2, grid_steps=1000,
        ladders={"adding": dict(Ts=(25, 50), steps={25: 1000, 50: 2000}),
                 "copy": dict(Ts=(5, 10, 20), steps={5: 1500, 10: 1500, 20: 1500})},
        profile_T=200, profile_seeds=3, time_budget_s=540, workers=2,
    ),
    # <= 60 minutes on 2 CPU cores: three seeds, a three-point lr grid, the ladders far
    # enough to tell the LSTM from the identity-initialised ReLU cells.
    "standard": dict(
        hidden=64, batch=32, test_size=256, eval_every=50,
        lr_grid=(1e-3, 3e-3, 1e-2), grid_T=50, seeds=3, grid_steps=2000,
        ladders={"adding": dict(Ts=(25, 50, 100, 200, 400),
                                steps={25: 2000, 50: 2000, 100: 3000, 200: 4000, 400: 4000}),
                 "copy": dict(Ts=(5, 10, 20, 40, 80),
                              steps={5: 2000, 10: 2000, 20: 2000, 40: 3000, 80: 4000})},
        profile_T=200, profile_seeds=3, time_budget_s=3300, workers=2,
    ),
    # Sized for a GPU: the literature's lengths (T >= 1000) and budgets closer to theirs.
    "full": dict(
        hidden=128, batch=64, test_size=1000, eval_every=100,
        lr_grid=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2), grid_T=100, seeds=5, grid_steps=10000,
        ladders={"adding": dict(Ts=(25, 50, 100, 200, 400, 750, 1000),
                                steps={25: 10000, 50: 10000, 100: 10000, 200: 20000,
                                       400: 30000, 750: 40000, 1000: 50000}),
                 "copy": dict(Ts=(10, 20, 50, 100, 200, 500),
                              steps={10: 10000, 20: 10000, 50: 20000, 100: 30000,
                                     200: 40000, 500: 50000})},
        # several processes share one GPU: each run's kernels are small and latency-bound
        profile_T=1000, profile_seeds=5, time_budget_s=None, workers=4,
    ),
    # Seconds, for the tests only: the numbers mean nothing.
    "micro": dict(
        hidden=8, batch=8, test_size=16, eval_every=5,
        lr_grid=(1e-3, 1e-2), grid_T=8, seeds=1, grid_steps=10,
        ladders={"adding": dict(Ts=(4, 8), steps={4: 10, 8: 10}),
                 "copy": dict(Ts=(2,), steps={2: 10})},
        profile_T=12, profile_seeds=1, time_budget_s=None, workers=1,
    ),
}

TASK_SPECS = {"adding": "adding", "copy": COPY}


def mode_config(mode):
    """A copy of the named mode's config. Raises KeyError for an unknown mode."""
    import copy
    if mode not in MODES:
        raise KeyError(f"unknown mode {mode!r}; choose from {sorted(MODES)}")
    return copy.deepcopy(MODES[mode])
