"""PNG plots of a benchmark report: speedup over the grid, time vs T, error vs T."""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PEER_COLORS = {"torch.nn": "tab:blue", "torch.compile": "tab:orange", "jax": "tab:green"}


def _short(r):
    return f"{r['cell']}\nT{r['T']} B{r['B']} H{r['H']}"


def speedup(results, backend, path):
    """Bars: peer time / rnnfast time at each point, one panel per mode."""
    modes = [m for m in ("fwd", "fwdbwd") if any(r["mode"] == m for r in results)]
    if not modes:
        return None
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(8, 0.55 * len(results)), 4.2 * len(modes)),
                             squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        rows = [r for r in results if r["mode"] == mode and backend in r["ratios"]]
        peers = [p for p in PEER_COLORS if any(p in r["ratios"][backend] for r in rows)]
        w = 0.8 / max(1, len(peers))
        for k, peer in enumerate(peers):
            xs = [i + (k - (len(peers) - 1) / 2) * w for i in range(len(rows))]
            ys = [r["ratios"][backend].get(peer, float("nan")) for r in rows]
            ax.bar(xs, ys, width=w, color=PEER_COLORS[peer], label=f"{peer} / rnnfast")
        for i, r in enumerate(rows):
            if r.get("floor_target"):
                ax.hlines(r["floor_target"], i - 0.4, i + 0.4, colors="red", linewidth=1.5)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([_short(r) for r in rows], fontsize=7)
        ax.set_ylabel("speedup of rnnfast (x)")
        ax.set_title(f"rnnfast[{backend}] speedup, {mode} (red: speed floor)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def time_vs_T(results, path):
    """Median time vs T for every (cell, B, H, mode) series measured at >= 2 T."""
    series = {}
    for r in results:
        series.setdefault((r["cell"], r["B"], r["H"], r["dtype"], r["mode"]), []).append(r)
    series = {k: sorted(v, key=lambda r: r["T"]) for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    n = len(series)
    cols = min(4, n)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    for ax, ((cell, B, H, dtype, mode), rs) in zip(axes.flat, series.items()):
        impls = []
        for r in rs:
            impls += [k for k in r["times"] if k not in impls]
        for impl in impls:
            pts = [(r["T"], r["times"][impl]["median_s"] * 1e3) for r in rs if impl in r["times"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_ylabel("ms")
        ax.set_title(f"{cell} B{B} H{H} {dtype} {mode}", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def error_vs_T(results, path):
    """Worst relative error over all outputs and gradients vs T, per cell."""
    cells = sorted({r["cell"] for r in results})
    if not cells:
        return None
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.6), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        rs = sorted((r for r in results if r["cell"] == cell), key=lambda r: r["T"])
        impls = []
        for r in rs:
            impls += [k for k in r["errors"] if k not in impls]
        for impl in impls:
            pts = [(r["T"], max(r["errors"][impl].values())) for r in rs if impl in r["errors"]]
            style = "--" if impl.startswith("torch.nn") else "-"
            ax.plot(*zip(*pts), style, marker="o", label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_ylabel("max rel. error vs float64 torch.nn")
        ax.set_title(cell)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(report, out_dir):
    paths = {}
    backends = report["config"]["backends"]
    if report.get("speed"):
        for be in backends:
            p = speedup(report["speed"], be, os.path.join(out_dir, f"speedup_{be}.png"))
            if p:
                paths[f"speedup_{be}"] = p
        p = time_vs_T(report["speed"], os.path.join(out_dir, "time_vs_T.png"))
        if p:
            paths["time_vs_T"] = p
    if report.get("fidelity"):
        p = error_vs_T(report["fidelity"], os.path.join(out_dir, "error_vs_T.png"))
        if p:
            paths["error_vs_T"] = p
    return paths
