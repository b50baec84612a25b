"""Statistics over run records: solved fractions with confidence intervals, each cell's
horizon, the learning-rate choice, robustness shares and the gradient-lag summaries.

Pure functions of the records (dicts from :func:`bench.study.train.train_run`); no I/O.
Intervals are exact (Clopper-Pearson) 95% binomial intervals from scipy.stats.
"""

import math
import statistics

from scipy import stats as sps

from .telemetry import ratio_at

FINISHED = ("solved", "diverged", "unsolved")  # outcomes that count towards a share


def proportion(k, n):
    """{'k', 'n', 'share', 'ci'}: share k/n and its exact 95% interval (None when n=0)."""
    if n == 0:
        return {"k": 0, "n": 0, "share": None, "ci": None}
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": k, "n": n, "share": k / n, "ci": (float(ci.low), float(ci.high))}


def median(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def select(runs, **keys):
    return [r for r in runs if all(r.get(k) == v for k, v in keys.items())]


def choose_lr(grid_runs, lr_grid):
    """The learning rate a cell's ladders use, from its clipped grid runs: most runs
    solved; then fewest median steps to solve; then the lowest median final loss; then
    the smaller rate. Returns (lr, per-lr table)."""
    table = []
    for lr in lr_grid:
        rs = [r for r in grid_runs if r["lr"] == lr and r["outcome"] in FINISHED]
        solved = [r for r in rs if r["outcome"] == "solved"]
        table.append({"lr": lr, "n": len(rs), "solved": len(solved),
                      "median_steps": median([r["solved_step"] for r in solved]),
                      "median_final": median([r["final_loss"] for r in rs
                                              if r["outcome"] != "diverged"])})

    def key(row):
        inf = math.inf
        return (-row["solved"], row["median_steps"] if row["median_steps"] is not None else inf,
                row["median_final"] if row["median_final"] is not None else inf, row["lr"])

    return min(table, key=key)["lr"], table


def ladder(runs, task, cells, Ts, lrs):
    """Per cell and T: solved share over seeds (clipped runs at the cell's ladder rate
    ``lrs[cell]``), median steps to solve, and why a rung has no runs.
    Returns {cell: [{'T', 'status', 'solved', 'median_steps', ...}]}."""
    out = {}
    for cell in cells:
        rows, failed_below = [], None
        for T in Ts:
            rs = select(runs, task=task, cell=cell, T=T, clip=True, lr=lrs.get(cell))
            fin = [r for r in rs if r["outcome"] in FINISHED]
            solved = [r for r in fin if r["outcome"] == "solved"]
            cut = [r for r in rs if r["outcome"] in ("truncated", "skipped")]
            if not rs:
                status = (f"not run: no seed solved T = {failed_below}" if failed_below
                          else "not run")
            elif cut and not fin:
                status = "time budget"
            else:
                status = "run"
            row = {"T": T, "status": status, "lr": rs[0]["lr"] if rs else None,
                   "steps": rs[0]["steps"] if rs else None,
                   "solved": proportion(len(solved), len(fin)),
                   "diverged": sum(r["outcome"] == "diverged" for r in fin),
                   "cut": len(cut),
                   "median_steps": median([r["solved_step"] for r in solved]),
                   "median_final": median([r["final_loss"] for r in fin]),
                   "runs": [r["id"] for r in rs]}
            if status == "run" and not solved and failed_below is None:
                failed_below = T
            rows.append(row)
        out[cell] = rows
    return out


def horizon(rows):
    """The longest T at which at least half of the finished seeds solved.

    Returns {'T': T or None, 'censored': bool, 'first_fail': T or None, 'runs': [...]}
    where censored means the cell solved the highest rung that ran to completion (its
    horizon lies at or beyond T), and first_fail the shortest T it failed."""
    best, fail, runs = None, None, []
    ran = [r for r in rows if r["status"] == "run" and r["solved"]["n"]]
    for r in ran:
        if r["solved"]["share"] >= 0.5:
            if fail is None:
                best, runs = r["T"], r["runs"]
        elif fail is None:
            fail = r["T"]
    censored = best is not None and fail is None
    return {"T": best, "censored": censored, "first_fail": fail, "runs": runs}


def robustness(runs, cells, lr_grid, T):
    """Per cell and clipping: the share of (lr, seed) grid runs that solved and that
    diverged, with intervals, and the per-lr counts."""
    out = {}
    for cell in cells:
        out[cell] = {}
        for clip in (True, False):
            rs = [r for r in select(runs, task="adding", cell=cell, T=T, clip=clip)
                  if r["outcome"] in FINISHED]
            out[cell]["clip" if clip else "noclip"] = {
                "solved": proportion(sum(r["outcome"] == "solved" for r in rs), len(rs)),
                "diverged": proportion(sum(r["outcome"] == "diverged" for r in rs), len(rs)),
                "by_lr": {str(lr): {o: sum(1 for r in rs if r["lr"] == lr and r["outcome"] == o)
                                    for o in FINISHED} for lr in lr_grid},
                "runs": [r["id"] for r in rs],
            }
    return out


def init_mechanism(profiles, cells):
    """Per cell, medians over seeds of the init profile's ratios at lags 10, 100 and T
    (the initial state) and of W_hh's spectral radius, with the min and max."""
    out = {}
    for cell in cells:
        ps = profiles.get(cell, [])
        row = {"n": len(ps), "spectral_radius": median([p["spectral_radius"] for p in ps]),
               "sigma_max": median([p["sigma_max"] for p in ps])}
        for lag in (10, 100, "T"):
            vals = [ratio_at(p, lag) for p in ps]
            vals = [v for v in vals if v is not None]
            row[f"lag_{lag}"] = median(vals)
            row[f"lag_{lag}_range"] = (min(vals), max(vals)) if vals else None
        out[cell] = row
    return out


def horizon_mechanism(runs, ladders, horizons, lrs, task="adding"):
    """For each cell, the clipped runs at the T that tells its story (its horizon, or the
    shortest T it failed when it has none): the gradient ratio at lag T/2 and at the
    initial state, and W_hh's spectral radius, at step 0 and at the run's last step,
    medians over the solved and the unsolved runs separately."""
    out = {}
    for cell in ladders:
        h = horizons[cell]
        T = h["T"] if h["T"] is not None else h["first_fail"]
        if T is None:
            continue
        rs = [r for r in select(runs, task=task, cell=cell, T=T, clip=True, lr=lrs[cell])
              if r["outcome"] in FINISHED and len(r.get("profiles", [])) == 2]
        entry = {"T": T, "why": "horizon" if T == h["T"] else "first failure"}
        for name, group in (("solved", [r for r in rs if r["outcome"] == "solved"]),
                            ("unsolved", [r for r in rs if r["outcome"] != "solved"])):
            if not group:
                continue
            entry[name] = {"n": len(group), "runs": [r["id"] for r in group]}
            for when, idx in (("init", 0), ("end", 1)):
                ps = [r["profiles"][idx] for r in group]
                entry[name][when] = {
                    "step": median([p["step"] for p in ps]),
                    "lag_T/2": median([ratio_at(p, "T/2") for p in ps]),
                    "lag_T": median([ratio_at(p, "T") for p in ps]),
                    "spectral_radius": median([p["spectral_radius"] for p in ps]),
                }
        out[cell] = entry
    return out


def time_breakdown(runs):
    """Per (stage, cell): runs started, summed wall seconds and CPU seconds of the runs
    (several workers run at once, so wall seconds add up to more than the wall time)."""
    by = {}
    for r in runs:
        if r["outcome"] == "skipped":
            continue
        e = by.setdefault((r.get("stage", "?"), r["cell"]), [0, 0.0, 0.0])
        e[0] += 1
        e[1] += r.get("seconds", 0.0)
        e[2] += r.get("cpu_seconds", 0.0)
    return [{"stage": s, "cell": c, "runs": n, "seconds": w, "cpu_seconds": cpu}
            for (s, c), (n, w, cpu) in sorted(by.items())]


def outcome_counts(runs):
    counts = {}
    for r in runs:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return counts


def summarize(cfg, cells, profiles, runs):
    """Everything the report states, computed from the run records and init profiles."""
    grid = [r for r in runs if r.get("stage") == "grid"]
    lrs, lr_tables = {}, {}
    for cell in cells:
        mine = [r for r in grid if r["cell"] == cell and r["clip"]]
        if mine:
            lrs[cell], lr_tables[cell] = choose_lr(mine, cfg["lr_grid"])
    ladders = {task: ladder(runs, task, cells, lad["Ts"], lrs)
               for task, lad in cfg["ladders"].items()}
    horizons = {task: {cell: horizon(rows) for cell, rows in lad.items()}
                for task, lad in ladders.items()}
    return {
        "cells": list(cells), "lrs": lrs, "lr_tables": lr_tables,
        "robustness": robustness(runs, cells, cfg["lr_grid"], cfg["grid_T"]),
        "ladders": ladders, "horizons": horizons,
        "init": init_mechanism(profiles, cells),
        "horizon_mechanism": horizon_mechanism(runs, ladders.get("adding", {}),
                                               horizons.get("adding", {}), lrs)
        if "adding" in ladders else {},
        "outcomes": outcome_counts(runs),
        "errors": [{"id": r["id"], "error": r["error"]} for r in runs if r["outcome"] == "error"],
    }
