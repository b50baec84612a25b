"""``python -m bench.study``: the command line, the stages in order, the wall-time
accounting. See the package docstring for the modes."""

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time

from ..report.cli import _device
from . import plots, report, stats, store
from .cells import available_cells
from .config import mode_config
from .runner import Plan, init_profiles, run_plan, warm_up


def _git_commit():
    here = os.path.dirname(os.path.realpath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "."], cwd=here, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.study", description=__import__(
        "bench.study", fromlist=["x"]).__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="<= 10 minutes on 2 CPU cores")
    mode.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="sized for a GPU: T up to 1000, 5 seeds")
    mode.add_argument("--mode", choices=["quick", "standard", "full", "micro"],
                      help=argparse.SUPPRESS)  # 'micro': seconds, for the tests
    ap.add_argument("--out", default=None, help="report folder (default out/study-MODE)")
    ap.add_argument("--workers", type=int, default=None, help="training processes")
    ap.add_argument("--device", type=_device, default=None,
                    help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--cells", default=None,
                    help="comma-separated subset of the cells (default: all available)")
    ap.add_argument("--no-time-budget", action="store_true",
                    help="never stop runs at the mode's time budget")
    ap.add_argument("--report-only", metavar="DIR", default=None,
                    help="rewrite DIR's report and figures from its results.json")
    args = ap.parse_args(argv)
    if args.report_only is not None:
        if not os.path.isfile(os.path.join(args.report_only, store.RESULTS)):
            ap.error(f"--report-only: no {store.RESULTS} in {args.report_only!r}")
        try:  # kept for main: the file is read once
            args.report_data = store.read(args.report_only)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            ap.error(f"--report-only: {os.path.join(args.report_only, store.RESULTS)!r} is "
                     f"not a results file of python -m bench.study ({type(e).__name__}: {e})")
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    args.mode = args.mode or "standard"
    return args


def finish(out, data):
    """Summary, figures, report from the data dict (also used by --report-only)."""
    cfg, meta = data["config"], data["meta"]
    t0 = time.time()
    summary = stats.summarize(cfg, data["cells"], data["init_profiles"], data["runs"])
    meta["time"]["run_seconds"] = stats.time_breakdown(data["runs"])
    figures = []
    try:
        plots.horizon_figure(os.path.join(out, report.HORIZON_PNG), summary, cfg)
        figures.append(report.HORIZON_PNG)
        plots.gradient_figure(os.path.join(out, report.GRADIENT_PNG), data["init_profiles"],
                              data["runs"], summary, cfg)
        figures.append(report.GRADIENT_PNG)
    except Exception as exc:  # the numbers must survive a plotting failure
        print(f"plots failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    meta["time"]["stages"]["summary, figures, report"] = time.time() - t0
    data["summary"] = summary
    store.write(out, data)
    return report.write(out, cfg, meta, summary, figures)


def main(argv=None):
    args = parse(argv)
    if args.report_only is not None:
        path = finish(args.report_only, args.report_data)
        print(f"rewrote {path}", file=sys.stderr)
        return 0
    import torch
    t_start = time.time()
    cfg = mode_config(args.mode)
    cells = available_cells()
    if args.cells:
        wanted = tuple(c.strip() for c in args.cells.split(","))
        unknown = [c for c in wanted if c not in cells]
        if unknown:
            raise SystemExit(f"unknown or unavailable cell(s) {unknown}; available: {cells}")
        cells = wanted
    elif "gru" not in cells:
        print("note: rnnfast has no GRU yet; the study runs without the 'gru' cell",
              file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workers = args.workers or cfg["workers"]
    out = args.out or os.path.join("out", f"study-{args.mode}")
    os.makedirs(out, exist_ok=True)
    budget = None if args.no_time_budget else cfg["time_budget_s"]
    deadline = t_start + budget if budget else None
    load0 = _load()
    print(f"rnnfast study ({args.mode}): cells {', '.join(cells)}; device {device}, "
          f"{workers} worker(s); budget {budget or 'none'} s; output {os.path.abspath(out)}",
          file=sys.stderr)
    if args.mode == "full" and device == "cpu":
        print("note: --full is sized for a GPU (T up to 1000, 5 seeds); on a CPU it takes "
              "days", file=sys.stderr)
    stages = {}
    t0 = time.time()
    torch.set_num_threads(1)
    profiles = init_profiles(cfg, cells, device)
    stages["mechanism at initialization (float64; first run: compiles)"] = time.time() - t0
    t0 = time.time()
    warm_up(cfg, cells, device)
    stages["float32 kernels warm-up (first run: compiles)"] = time.time() - t0
    t0 = time.time()
    runs = run_plan(Plan(cfg, cells, device, deadline), workers, t_start)
    stages["training (grid and ladders)"] = time.time() - t0
    meta = {
        "mode": args.mode, "command": " ".join(["python -m bench.study"] + (
            sys.argv[1:] if argv is None else list(argv))),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git_commit(), "device": device, "workers": workers,
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "time_budget_s": budget,
        "time": {"stages": stages},
    }
    data = {"meta": meta, "config": cfg, "cells": list(cells), "init_profiles": profiles,
            "runs": runs}
    meta["wall_seconds"] = time.time() - t_start  # before the report; updated below
    load1 = _load()
    if load0 is not None:
        meta["load"] = f"{load0:.1f} / {load1:.1f} on {os.cpu_count()} cores"
    path = finish(out, data)
    meta["wall_seconds"] = time.time() - t_start
    path = report.write(out, cfg, meta, data["summary"], _figures(out))
    store.write(out, data)
    print(f"\nwall time {meta['wall_seconds']:.0f} s; where it went:", file=sys.stderr)
    for k, v in stages.items():
        print(f"  {k:58s} {v:7.0f} s", file=sys.stderr)
    for e in meta["time"]["run_seconds"]:
        print(f"  {e['stage']:6s} {e['cell']:6s} {e['runs']:3d} runs {e['seconds']:7.0f} "
              f"run-seconds {e['cpu_seconds']:7.0f} CPU-seconds", file=sys.stderr)
    if meta.get("load"):
        print(f"  load average at start / end: {meta['load']}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _figures(out):
    return [f for f in (report.HORIZON_PNG, report.GRADIENT_PNG)
            if os.path.exists(os.path.join(out, f))]
