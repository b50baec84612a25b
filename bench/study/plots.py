"""The study's figures (matplotlib, Agg backend): the one figure that carries the
answer (solved fraction vs T, one line per cell, a panel per task) and the gradient
mechanism (gradient norm vs lag at initialization and at each cell's horizon)."""

import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .cells import LABELS

COLORS = {"tanh": "tab:blue", "relu": "tab:orange", "irnn": "tab:green",
          "leaky": "tab:purple", "lstm": "tab:red", "gru": "tab:brown"}
MARKERS = {"tanh": "v", "relu": "o", "irnn": "s", "leaky": "D", "lstm": "^", "gru": "P"}
TITLES = {"adding": "adding problem (test MSE < 0.01)",
          "copy": "copy memory, 3 symbols of 4 (CE < 10% of baseline)"}


def horizon_figure(path, summary, cfg):
    """Solved fraction vs T per cell; rungs not run (a shorter T failed) drawn at 0,
    hollow; rungs cut by the time budget left out."""
    tasks = list(summary["ladders"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for k, (cell, rows) in enumerate(summary["ladders"][task].items()):
            jitter = 1 + 0.015 * (k - 2.5)  # overlapping lines stay visible
            run = [(r["T"] * jitter, r["solved"]["share"]) for r in rows
                   if r["status"] == "run" and r["solved"]["n"]]
            skipped = [r["T"] * jitter for r in rows if r["status"].startswith("not run: no")]
            if run:
                xs, ys = zip(*run)
                ax.plot(xs, ys, marker=MARKERS[cell], color=COLORS[cell], label=LABELS[cell])
            if skipped:
                ax.plot(skipped, [0] * len(skipped), ls=":", marker=MARKERS[cell],
                        mfc="none", color=COLORS[cell])
        ax.set_xscale("log")
        Ts = cfg["ladders"][task]["Ts"]
        ax.set_xticks(Ts, [str(t) for t in Ts])
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("sequence length / delay T")
        ax.set_ylabel(f"solved fraction of {cfg['seeds']} seeds")
        ax.set_title(TITLES.get(task, task), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("How far back each cell learns (hollow: not run, a shorter T failed)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gradient_figure(path, profiles, runs, summary, cfg):
    """Left: gradient ratio vs lag at initialization (median over seeds). Right: at each
    cell's horizon T, one run's profile at step 0 (dashed) and at its last step."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for cell, ps in profiles.items():
        lags = ps[0]["lags"]
        med = [statistics.median(v) for v in zip(*[p["ratio"] for p in ps])]
        a.semilogy(lags, [max(v, 1e-300) for v in med], color=COLORS[cell], label=LABELS[cell])
    a.set_xlabel(f"lag k (T = {cfg['profile_T']}: the initial state)")
    a.set_ylabel("||dL/dh_{T-k}|| / ||dL/dh_T||")
    a.set_title("at initialization", fontsize=9)
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    by_id = {r["id"]: r for r in runs}
    for cell, e in summary["horizon_mechanism"].items():
        group = e.get("solved") or e.get("unsolved")
        r = by_id.get(group["runs"][0]) if group else None
        if r is None or len(r.get("profiles", [])) < 2:
            continue
        p0, p1 = r["profiles"][0], r["profiles"][-1]
        b.semilogy(p0["lags"], [max(v, 1e-300) for v in p0["ratio"]], ls="--",
                   color=COLORS[cell], lw=1)
        b.semilogy(p1["lags"], [max(v, 1e-300) for v in p1["ratio"]], color=COLORS[cell],
                   label=f"{cell} T={e['T']} ({r['outcome']} at step {r['stop_step']})")
    b.set_xlabel("lag k (k = T: the initial state)")
    b.set_title("at each cell's horizon: step 0 (dashed) and last step", fontsize=9)
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
