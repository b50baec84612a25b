"""report.md: the short answer, the one figure, then the tables. Layout only: the
sentences come from :mod:`bench.study.prose`, the numbers from the summary."""

import os

from .cells import IRNN_INPUT_STD, LABELS, LEAKY_SLOPE
from .config import CLIP_NORM, COPY
from .prose import (
    cite,
    fmt_steps,
    horizon_text,
    literature,
    mechanism_sentences,
    num,
    pct,
    short_answer,
)

HORIZON_PNG = "horizon.png"
GRADIENT_PNG = "gradients.png"


def _table(header, rows):
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])


def _range(r):
    return f" [{num(r[0])}, {num(r[1])}]" if r else ""


def render(cfg, meta, summary, figures):
    """The markdown text of the report."""
    L = [f"# Why LSTMs, when a ReLU-RNN's gradient never saturates? ({meta['mode']} run)\n"]
    L.append("## Short answer\n")
    L += [f"{i}. {s}" for i, s in enumerate(short_answer(cfg, summary, meta), 1)]
    L.append("")
    if HORIZON_PNG in figures:
        L.append(f"![solved fraction vs T]({HORIZON_PNG})\n")
    L.append(f"Measured {meta['date']} by `{meta['command']}` (code {meta.get('git_commit')}), "
             f"{meta['wall_seconds']:.0f} s wall on {meta['device']} with {meta['workers']} "
             f"worker(s); every number above and below is from this run's `results.json`, "
             "every run is named by its id (task-T-cell-lr-clip-seed).\n")

    L.append("## Setup\n")
    L.append(f"* Model: one rnnfast recurrent layer (backend 'auto'), H = {cfg['hidden']}, a "
             "linear readout (of h_T for adding, of every h_t for copy). Cells: "
             + "; ".join(f"`{c}` {LABELS[c]}" for c in summary["cells"])
             + f". IRNN and leaky cells: W_ih ~ N(0, {IRNN_INPUT_STD:g}^2), leaky slope "
             f"{LEAKY_SLOPE:g}; others torch's default init.")
    L.append(f"* Training: Adam, batch {cfg['batch']}, test set {cfg['test_size']} sequences "
             f"evaluated every {cfg['eval_every']} steps; a run stops when solved (adding: test "
             f"MSE < 0.01, baseline 1/6; copy ({COPY['n_symbols']} symbols of "
             f"{COPY['alphabet']}, length T + {2 * COPY['n_symbols']}): test cross-entropy "
             "below 10% of the memoryless baseline n ln K / (T + 2n)) or diverged (loss NaN/inf, "
             "or test loss above 10x the larger of the baseline and the run's step-0 test "
             "loss).")
    L.append(f"* Learning-rate grid (fixed in advance, the same for every cell): "
             f"{', '.join(num(v) for v in cfg['lr_grid'])}, at T = {cfg['grid_T']} with "
             f"{cfg['grid_steps']:,} steps, clipping (global norm {CLIP_NORM:g}) on and off, "
             f"{cfg['seeds']} seeds. Each cell's ladders use the lr that solved most of its "
             "clipped grid runs (ties: fewer steps, then lower loss, then the smaller lr): "
             + ", ".join(f"{c} {num(v)}" for c, v in summary["lrs"].items()) + ".")
    L.append("* Ladder: T rises until no seed solves; longer T are then not run. "
             "Horizon = the longest T solved by at least half the seeds (>= when the top "
             "rung was solved).")
    oc = summary["outcomes"]
    L.append("* Runs: " + ", ".join(f"{v} {k}" for k, v in sorted(oc.items()))
             + (" (truncated/skipped: the mode's time budget ran out; they count in no share)"
                if oc.get("truncated") or oc.get("skipped") else "") + ".")
    for e in summary["errors"][:5]:
        L.append(f"* **error** in `{e['id']}`: {e['error']}")
    L.append("")

    for task, lad in summary["ladders"].items():
        Ts = cfg["ladders"][task]["Ts"]
        L.append(f"## Horizon: {task}\n")
        L.append("Solved seeds / finished seeds (median steps to solve). Clipped runs at the "
                 "cell's ladder lr.\n")
        rows = []
        for cell, rs in lad.items():
            row = [LABELS[cell], num(summary["lrs"].get(cell))]
            for r in rs:
                if r["status"] != "run":
                    row.append("-" if r["status"].startswith("not run") else "budget")
                else:
                    s = r["solved"]
                    row.append(f"{s['k']}/{s['n']}" + (f" ({fmt_steps(r['median_steps'])})"
                                                       if r["median_steps"] else ""))
            row.append(horizon_text(summary["horizons"][task][cell], Ts))
            rows.append(row)
        steps = cfg["ladders"][task]["steps"]
        L.append(_table(["cell", "lr"] + [f"T={T} ({steps[T]:,} steps)" for T in Ts]
                        + ["horizon"], rows))
        L.append("")

    T = cfg["grid_T"]
    L.append(f"## Robustness: learning-rate grid at T = {T}\n")
    L.append("Share of (lr, seed) runs that solved / diverged, with exact 95% intervals; "
             "then the outcome per lr (solved-diverged-unsolved).\n")
    rows = []
    for cell, rb in summary["robustness"].items():
        for clip in ("clip", "noclip"):
            e = rb[clip]
            ci = lambda p: f" [{num(p['ci'][0])}, {num(p['ci'][1])}]" if p["ci"] else ""  # noqa: E731
            rows.append([LABELS[cell], "yes" if clip == "clip" else "no",
                         pct(e["solved"]) + ci(e["solved"]), pct(e["diverged"]) + ci(e["diverged"])]
                        + [f"{v['solved']}-{v['diverged']}-{v['unsolved']}"
                           for v in e["by_lr"].values()])
    L.append(_table(["cell", "clipping", "solved", "diverged"]
                    + [f"lr {num(v)}" for v in cfg["lr_grid"]], rows))
    L.append("")

    L.append("## Mechanism: gradient norm vs lag (adding loss, float64, BPTT telemetry)\n")
    L.append(f"At initialization, T = {cfg['profile_T']}: ratio ||dL/dh_(T-k)|| / ||dL/dh_T||, "
             f"median [min, max] over {cfg['profile_seeds']} seeds; lag T is the initial "
             "state.\n")
    rows = []
    for cell, e in summary["init"].items():
        rows.append([LABELS[cell], num(e["spectral_radius"]), num(e["sigma_max"])]
                    + [num(e[f"lag_{k}"]) + _range(e.get(f"lag_{k}_range"))
                       for k in (10, 100, "T")])
    L.append(_table(["cell", "rho(W_hh)", "sigma_max(W_hh)", "lag 10", "lag 100", "lag T"],
                    rows))
    L.append("")
    hm = summary["horizon_mechanism"]
    if hm:
        L.append("At each cell's adding horizon (or the first T it failed): the same ratio at "
                 "lag T/2 (the first marker lies at lag T/2 or more) and at the initial "
                 "state, at step 0 and at the run's last step, median over the solved and the "
                 "unsolved runs.\n")
        rows = []
        for cell, e in hm.items():
            for name in ("solved", "unsolved"):
                g = e.get(name)
                if not g:
                    continue
                i, f = g["init"], g["end"]
                rows.append([LABELS[cell], f"{e['T']} ({e['why']})", f"{name} ({g['n']})",
                             f"{num(i['lag_T/2'])} -> {num(f['lag_T/2'])}",
                             f"{num(i['lag_T'])} -> {num(f['lag_T'])}",
                             f"{num(i['spectral_radius'])} -> {num(f['spectral_radius'])}",
                             fmt_steps(f["step"]), cite(g["runs"])])
        L.append(_table(["cell", "T", "runs", "lag T/2: step 0 -> last", "lag T",
                         "rho(W_hh)", "last step", "run ids"], rows))
        L.append("")
        L += [f"* {s}" for s in mechanism_sentences(summary)]
        L.append("")
    if GRADIENT_PNG in figures:
        L.append(f"![gradient vs lag]({GRADIENT_PNG})\n")

    L.append("## Beside the literature\n")
    for e in literature(cfg, summary):
        L.append(f"* {e['source']}. Their setting: {e['setting']}. Their result: {e['result']}. "
                 f"Here: {e['ours']}.")
    L.append("\nThe budgets here are far smaller than the papers' (see the steps per rung); "
             "a cell that fails a rung has not been shown unable to learn it, only unable "
             "within this budget. The gradient measurements at initialization need no "
             "training and do not depend on the budget.\n")

    L.append("## Where the time went\n")
    tb = meta["time"]
    L.append(_table(["part", "wall seconds"],
                    [[k, f"{v:.0f}"] for k, v in tb["stages"].items()]))
    L.append("")
    L.append("Training, summed over runs (workers run in parallel): wall seconds and the "
             "CPU seconds the runs got (their ratio shows how loaded the machine was):\n")
    L.append(_table(["stage", "cell", "runs", "run-seconds", "CPU-seconds"],
                    [[e["stage"], e["cell"], e.get("runs", ""), f"{e['seconds']:.0f}",
                      f"{e.get('cpu_seconds', 0):.0f}"] for e in tb["run_seconds"]]))
    L.append("")
    if meta.get("load"):
        L.append(f"Machine load average at start / end: {meta['load']}.\n")
    return "\n".join(L) + "\n"


def write(out, cfg, meta, summary, figures):
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write(render(cfg, meta, summary, figures))
    return path
