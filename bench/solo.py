"""Each implementation alone in its own process, alternated: torch.nn against rnnfast, or
one checkout of rnnfast against another, each in a process of its own.

    python -m bench.solo --cell lstm --points 10,64,256 20,32,256 [--mode fwdbwd|fwd]
                         [--rounds 3] [--seconds 1.5] [--peer torch.nn] [--checkout DIR]

``bench.ab`` and ``python -m bench`` time torch.nn and rnnfast in one process, alternating
calls. There each side runs in the state the other leaves: its threads and caches (at
calls of 0.4-3 ms a bias the size of the differences being measured, BENCHMARKS.md,
session of 14:32 on 2026-12-05; numba and torch share one OpenMP runtime, libgomp, so
it is not a second thread pool, session of 2026-12-07 01:45), and glibc's heap, whose
dynamic mmap and trim thresholds follow what the process has freed: in its own process
torch.nn's LSTM at (100, 32, 128) faulted ~130 pages per fwd+bwd, rnnfast's ~1,000-1,500
until 8a61347 (kernels/numba/_host.py, ``_show_malloc_the_free``).

Here every (implementation, round) is a process of its own: it builds the module (T, B, H
per point; I = H, float32, 2 threads unless ``--threads``), warms it for 0.3 s, then times
blocks of calls for ``--seconds`` per point and prints the median block's time per call
(ms). Rounds alternate the implementations, in ABBA order (a process that runs right after
another read 6-9% slower than the same code run first, on the 2-core VM of 2026-12-05), so
a slow spell of a shared machine and that order bias fall on each in turn; use an even
number of rounds. The table gives each implementation's median over the rounds, the ratio
of the medians (peer / rnnfast: > 1, rnnfast faster) and the per-round ratios, whose
spread says how much to trust the medians.

The calls are the speed section's (``bench.report.common``): fwd is ``m(x)`` under
``torch.no_grad()``; fwdbwd differentiates ``(y * g).sum() + (h_n * gh).sum()`` with
respect to x and every parameter.

Implementations: ``numba`` (rnnfast, ``backend='numba'``: this checkout), ``auto``
(rnnfast's default dispatch), and the peer ``--peer torch.nn`` (the default) or, with
``--checkout DIR``, rnnfast's numba kernels from another checkout (a worktree of an
older commit: its worker imports DIR's rnnfast and DIR's kernels/ as rnnfast.kernels,
whichever checkout is installed; it reports where both came from and the run stops when
they are not from DIR).
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(impl, cell, mode, seconds, threads, specs):
    """Time each (T, B, H) spec with one implementation; print one JSON line."""
    import torch

    import rnnfast
    import rnnfast.kernels
    from bench.report import common

    torch.set_num_threads(threads)
    out = {"rnnfast": os.path.dirname(os.path.abspath(rnnfast.__file__)),
           "kernels": os.path.dirname(os.path.abspath(rnnfast.kernels.__file__)),
           "ms": {}}
    cpu, f32 = torch.device("cpu"), torch.float32
    for spec in specs:
        T, B, H = map(int, spec.split(","))
        m = common.make_torch(cell, H, H, f32, cpu)  # the same weights in every process
        if impl != "torch.nn":
            m = common.make_rnnfast(cell, H, H, f32, cpu, impl, like=m)
        x, g, gh = common.make_inputs(T, B, H, H, f32, cpu)
        run = common.fwdbwd_fn(m, x, g, gh) if mode == "fwdbwd" else common.fwd_fn(m, x)
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.3:
            run()
            k += 1
        n = max(1, int(0.05 / ((time.perf_counter() - t0) / k)))  # ~50 ms blocks
        blocks, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(blocks) < 5:
            t0 = time.perf_counter()
            for _ in range(n):
                run()
            blocks.append((time.perf_counter() - t0) / n)
        out["ms"][spec] = statistics.median(blocks) * 1e3
    print(json.dumps(out))


def _own_kernels(root):
    """Make ``rnnfast.kernels`` import from ``root``/kernels in this process where
    ``root``/rnnfast has no kernels of its own (a source checkout, whose rnnfast may be
    older than the one that finds them itself): this checkout's rnnfast/_checkout.py,
    loaded by path (it imports nothing from rnnfast), installs the finder."""
    spec = importlib.util.spec_from_file_location(
        "_rnnfast_checkout", os.path.join(HERE, "rnnfast", "_checkout.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.use_own_kernels(root)


def _run(label, impl, root, args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    # This file's worker, run with the checkout's directory first on sys.path (an older
    # checkout may have no bench/solo.py), so that it imports that checkout's rnnfast,
    # and that checkout's kernels/ as rnnfast.kernels (_own_kernels: an older rnnfast
    # does not find them itself).
    boot = ("import importlib.util, sys; s = importlib.util.spec_from_file_location("
            f"'_bench_solo', {os.path.abspath(__file__)!r}); m = importlib.util."
            f"module_from_spec(s); s.loader.exec_module(m); m._own_kernels({root!r}); "
            "m.main(sys.argv[1:])")
    cmd = [sys.executable, "-c", boot, "--worker", impl, "--cell", args.cell,
           "--mode", args.mode, "--seconds", str(args.seconds), "--threads",
           str(args.threads), "--points", *args.points]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{label}: worker failed\n{res.stderr[-3000:]}")
    line = res.stdout.strip().splitlines()[-1]
    out = json.loads(line)
    if impl != "torch.nn":
        for what in ("rnnfast", "kernels"):
            if not os.path.realpath(out[what]).startswith(os.path.realpath(root) + os.sep):
                sys.exit(f"{label}: {what} came from {out[what]}, not from {root} "
                         f"(see ``--checkout`` in python -m bench.solo --help)")
    return out["ms"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.solo",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", default="lstm",
                    choices=["lstm", "gru", "rnn_relu", "rnn_tanh"])
    ap.add_argument("--points", nargs="+", default=["10,64,256", "20,32,256"],
                    help="T,B,H ...")
    ap.add_argument("--mode", default="fwdbwd", choices=["fwdbwd", "fwd"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per point")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impl", default="numba", choices=["numba", "auto"],
                    help="rnnfast's backend in this checkout")
    ap.add_argument("--peer", default="torch.nn", choices=["torch.nn"])
    ap.add_argument("--checkout", help="compare with rnnfast's numba kernels from this "
                                       "checkout instead of torch.nn")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for spec in args.points:
        parts = spec.split(",")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() and int(p) > 0
                                      for p in parts):
            ap.error(f"--points takes T,B,H with positive integers, got {spec!r}")
    for name in ("rounds", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.seconds > 0:  # NaN too (a worker run by path cannot import bench.report)
        ap.error(f"--seconds must be > 0, got {args.seconds}")
    if args.worker:
        return _worker(args.worker, args.cell, args.mode, args.seconds, args.threads,
                       args.points)
    if args.checkout:
        root = os.path.abspath(args.checkout)
        def has(*paths):
            return any(os.path.exists(os.path.join(root, p)) for p in paths)

        for need, found in (("rnnfast/__init__.py", has("rnnfast/__init__.py")),
                            # a checkout's kernels/, or a rnnfast/kernels link to it
                            ("kernels/numba", has("kernels/numba", "rnnfast/kernels/numba")),
                            ("bench/report/common.py", has("bench/report/common.py"))):
            if not found:
                ap.error(f"--checkout {args.checkout!r} has no {need}: a checkout of "
                         "rnnfast with its own kernels is expected")
        peer = (f"numba@{args.checkout}", "numba", root)
    else:
        peer = (args.peer, "torch.nn", HERE)
    mine = (f"{args.impl}@{HERE}", args.impl, HERE)
    if peer[0] == mine[0]:  # an A/A run (the spread it shows is the machine's noise)
        peer, mine = (f"peer {peer[0]}", *peer[1:]), (f"this {mine[0]}", *mine[1:])
    times = {peer[0]: [], mine[0]: []}
    # imported here, not at the top: the worker runs this file in another checkout,
    # whose bench may predate it
    from bench.report.check import warn_if_busy
    warn_if_busy("bench.solo", "at the start")
    for r in range(args.rounds):
        # ABBA: the order flips every round. In a fixed order the second process ran
        # 6-9% slower than the first with the same code (an A/A run, 2026-12-05).
        for label, impl, root in ((peer, mine) if r % 2 == 0 else (mine, peer)):
            ms = _run(label, impl, root, args)
            times[label].append(ms)
            print(f"round {r + 1} {label}: " +
                  " ".join(f"{s}:{v:.3f}" for s, v in ms.items()), flush=True)
    print(f"\n{args.cell} {args.mode}, {args.rounds} rounds, ms (median over rounds); "
          f"ratio = {peer[0]} / {mine[0]}")
    print(f"| (T, B, H) | {peer[0]} | {mine[0]} | ratio | per round |")
    print("|---|--:|--:|--:|---|")
    for s in args.points:
        a = [t[s] for t in times[peer[0]]]
        b = [t[s] for t in times[mine[0]]]
        per = " ".join(f"{x / y:.2f}" for x, y in zip(a, b))
        print(f"| ({s.replace(',', ', ')}) | {statistics.median(a):.3f} | "
              f"{statistics.median(b):.3f} | {statistics.median(a) / statistics.median(b):.2f}x"
              f" | {per} |")
    warn_if_busy("bench.solo", "at the end")


if __name__ == "__main__":
    main()
