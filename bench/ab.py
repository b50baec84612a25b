"""torch.nn time / rnnfast time at the speed-floor points, one cell after another, for
comparing checkouts of rnnfast on the same machine in the same minutes.

    python -m bench.ab [--cells rnn_relu,lstm,gru] [--points 1x32,16x64,...] [--mode fwdbwd|fwd]
                       [--T 100] [--reps 15] [--budget 4] [--tag LABEL]
                       [--isa native|avx512|avx2|x86-64]

Each point builds a torch.nn module and the rnnfast twin (backend='numba') with the same
state_dict, input x [T, B, H] (I = H, float32, torch's default threads), warms both, then
alternates them (torch.nn, rnnfast, torch.nn, ...) for up to ``--reps`` rounds (at least
5, stopping after ``--budget`` seconds) and prints the two medians (ms) and their ratio
(> 1: rnnfast faster), then one JSON line of every ratio. The calls are the speed
section's (``bench.report.common``), so the ratios read against the same floors: fwdbwd
differentiates ``(y * g).sum() + (h_n * gh).sum()`` with respect to x and every
parameter (``torch.autograd.grad``); fwd is ``m(x)`` under ``torch.no_grad()``. (Before
2026-12-04 fwdbwd was ``y.sum().backward()`` with an x that needs no grad: no input
gradient and no h_n term, which read rnnfast's LSTM at (32, 256) at 47 ms against 55 ms
in the speed section's call, torch.nn's at 64-68 ms in both.)
Run it once per checkout to compare commits; ``python -m bench`` is the full report.
``--isa`` runs it as on a CPU with that instruction set, as ``python -m bench --isa``
does (a child process with numba's target and torch's ISA limits set:
``bench/report/isa.py``).
Run from a copy's directory, it imports that copy's ``rnnfast`` and, from this commit
on, that copy's ``kernels/`` as ``rnnfast.kernels`` (``rnnfast/_checkout.py``), whichever
checkout is installed. An older copy took the installed checkout's kernels (setuptools'
editable finder maps the package there), so both runs would time the same kernels:
``ln -s ../kernels rnnfast/kernels`` in such a copy (not in the repository) makes it
import its own. The first line printed says where both came from, and the run stops
when they are from different checkouts.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

import rnnfast

from .report import common, isa


def pair(cell, H):
    """(torch.nn module, rnnfast module with the same weights) for a cell name."""
    if cell == "lstm":
        ref, m = torch.nn.LSTM(H, H), rnnfast.LSTM(H, H, backend="numba")
    elif cell == "gru":
        ref, m = torch.nn.GRU(H, H), rnnfast.GRU(H, H, backend="numba")
    else:
        nl = cell.split("_", 1)[1]
        ref = torch.nn.RNN(H, H, nonlinearity=nl)
        m = rnnfast.RNN(H, H, nonlinearity=nl, backend="numba")
    m.load_state_dict(ref.state_dict())
    return ref, m


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="rnn_relu,lstm")
    ap.add_argument("--points", default="1x32,16x64,32x128,32x256,64x512", help="BxH list")
    ap.add_argument("--mode", default="fwdbwd", choices=("fwdbwd", "fwd"))
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per point")
    ap.add_argument("--tag", default="")
    ap.add_argument("--isa", choices=isa.ISAS, default="native",
                    help="run as on a CPU with this instruction set (see python -m bench)")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    if not isa.in_child(a.isa):
        return isa.rerun(a.isa, argv, module="bench.ab")
    import rnnfast.kernels
    here = os.path.dirname(os.path.dirname(os.path.realpath(rnnfast.__file__)))
    kern = os.path.dirname(os.path.dirname(os.path.realpath(rnnfast.kernels.__file__)))
    d = isa.describe(a.isa)
    print(f"{a.tag} rnnfast from {here}, kernels from {kern}; numba CPU {d['numba_cpu']} "
          f"(widest {d['numba_widest']}), torch {d['torch_cpu_capability']}", flush=True)
    if here != kern:
        raise SystemExit("bench.ab: rnnfast and rnnfast.kernels come from different "
                         "checkouts (an editable install elsewhere?): install this one, "
                         "or link its rnnfast/kernels to ../kernels")
    from bench.report.check import warn_if_busy
    warn_if_busy("bench.ab", "at the start")
    torch.manual_seed(0)
    ratios = {}
    for cell in a.cells.split(","):
        for point in a.points.split(","):
            B, H = map(int, point.split("x"))
            ref, m = pair(cell, H)
            x, g, gh = common.make_inputs(a.T, B, H, H, torch.float32, torch.device("cpu"))
            runs = [common.fwd_fn(mod, x) if a.mode == "fwd"
                    else common.fwdbwd_fn(mod, x, g, gh) for mod in (ref, m)]
            for run in runs + runs:
                run()
            times = ([], [])
            end = time.perf_counter() + a.budget
            for i in range(a.reps):
                for run, acc in zip(runs, times):
                    t0 = time.perf_counter()
                    run()
                    acc.append(time.perf_counter() - t0)
                if i >= 4 and time.perf_counter() > end:
                    break
            t_ref, t_m = (statistics.median(t) for t in times)
            ratios[f"{cell} {point}"] = t_ref / t_m
            print(f"{a.tag} {cell:9s} B={B:3d} H={H:4d} {a.mode}: torch.nn {t_ref * 1e3:8.2f} ms"
                  f"  rnnfast {t_m * 1e3:8.2f} ms  ratio {t_ref / t_m:5.2f}x", flush=True)
    print(json.dumps(ratios))
    warn_if_busy("bench.ab", "at the end")


if __name__ == "__main__":
    sys.exit(main())
