"""How much of a CPU layer's time is the memory allocator's: torch.nn and rnnfast
(backend='numba') fwd+bwd under glibc's defaults, without rnnfast's scratch pool, with
glibc's thresholds held, and with jemalloc preloaded, each in its own process, with the
page faults per call.

    python -m bench.alloc [--cells lstm,gru,rnn_relu] [--points 16x64,32x256,64x512]
                          [--T 100] [--rounds 2]

glibc's malloc returns large freed blocks to the kernel (its mmap threshold follows the
largest block freed, up to 32 MiB, and the heap is trimmed past twice that), so a
layer's big buffers are fresh pages, each faulted in on first touch, on every call.
"thresholds held" sets glibc's own variables MALLOC_MMAP_THRESHOLD_ (64 MiB) and
MALLOC_TRIM_THRESHOLD_ (256 MiB) for the child process; "no scratch pool" sets
RNNFAST_SCRATCH_POOL_MB=0 (rnnfast's big internal buffers then come from malloc on every
call, kernels/numba/_host.py; torch.nn's column there is one more sample of the
defaults); "jemalloc" preloads
libjemalloc.so.2 where the dynamic loader finds it (skipped otherwise).

Each child builds one module (x [T, B, H] requiring grad, I = H, float32, torch's
default threads), warms it, then times ``m.zero_grad(); y, _ = m(x); (y * g).sum()
.backward()`` and reads the process's minor faults (getrusage) around the timed calls.
Prints a markdown table of median ms (faults per call) per round, then the ratios
torch.nn / rnnfast from the faster round of each. The rounds run every process of a
point back to back, alternating, so that a slow spell of a shared machine hits all.
"""

import argparse
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from .report.cli import _batch_by_hidden, _csv, _positive
from .report.common import CELLS

ENVS = {
    "glibc defaults": {},
    "no scratch pool": {"RNNFAST_SCRATCH_POOL_MB": "0"},
    "thresholds held": {"MALLOC_MMAP_THRESHOLD_": str(64 << 20),
                        "MALLOC_TRIM_THRESHOLD_": str(256 << 20)},
}
IMPLS = ("torch.nn", "rnnfast")


def _jemalloc():
    """The path of libjemalloc.so.2, or None."""
    name = ctypes.util.find_library("jemalloc")
    for path in ([name] if name and os.path.isabs(name) else []) + [
            "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2"]:
        if os.path.exists(path):
            return path
    return None


def child(cell, T, B, H, impl, calls):
    """One measurement in this process: a JSON line with the median ms and faults."""
    import torch

    from .report import common

    cpu = torch.device("cpu")
    if impl == "torch.nn":
        m = common.make_torch(cell, H, H, torch.float32, cpu)
    else:
        m = common.make_rnnfast(cell, H, H, torch.float32, cpu, "numba")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, H, generator=gen).requires_grad_()
    g = torch.randn(T, B, H, generator=gen)

    def call():
        m.zero_grad()
        y, _ = m(x)
        (y * g).sum().backward()

    for _ in range(max(3, calls // 5)):
        call()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / calls
    print(json.dumps({"ms": statistics.median(times) * 1e3, "faults": faults}))


def _calls(T, B, H):
    """Timed calls per child: about a second of work at each point."""
    return max(8, min(100, int(2e11 / (T * B * H * H * 24))))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.alloc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=_csv(choices=CELLS), default="lstm,gru,rnn_relu")
    ap.add_argument("--points", type=_csv(_batch_by_hidden), default="16x64,32x256,64x512",
                    help="BxH,...")
    ap.add_argument("--T", type=_positive(int), default=100)
    ap.add_argument("--rounds", type=_positive(int), default=2)
    ap.add_argument("--child", nargs=6, metavar=("CELL", "T", "B", "H", "IMPL", "CALLS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        cell, T, B, H, impl, calls = args.child
        return child(cell, int(T), int(B), int(H), impl, int(calls))
    envs = dict(ENVS)
    jem = _jemalloc()
    if jem:
        envs["jemalloc"] = {"LD_PRELOAD": jem}
    else:
        print("(no libjemalloc.so.2 found: its column is skipped)")
    print(f"T = {args.T}, float32, fwd+bwd; median ms per call (page faults per call), "
          f"one entry per round")
    print()
    print("| cell | (B, H) | impl | " + " | ".join(envs) + " |")
    print("|---|---|---|" + "--:|" * len(envs))
    ratios = []
    for cell in args.cells:
        for B, H in args.points:
            res = {(i, e): [] for i in IMPLS for e in envs}
            for _ in range(args.rounds):
                for impl in IMPLS:
                    for name, extra in envs.items():
                        cmd = [sys.executable, "-m", "bench.alloc", "--child", cell,
                               str(args.T), str(B), str(H), impl,
                               str(_calls(args.T, B, H))]
                        out = subprocess.run(cmd, env={**os.environ, **extra}, check=True,
                                             capture_output=True, text=True).stdout
                        res[impl, name].append(json.loads(out.strip().splitlines()[-1]))
            for impl in IMPLS:
                cols = ["/".join(f"{r['ms']:.1f}" for r in res[impl, e])
                        + f" ({statistics.mean(r['faults'] for r in res[impl, e]):.0f})"
                        for e in envs]
                print(f"| {cell} | ({B}, {H}) | {impl} | " + " | ".join(cols) + " |")
            ratios.append((cell, B, H, [min(r["ms"] for r in res["torch.nn", e])
                                        / min(r["ms"] for r in res["rnnfast", e])
                                        for e in envs]))
    print()
    print("torch.nn / rnnfast (faster round of each):")
    print()
    print("| cell | (B, H) | " + " | ".join(envs) + " |")
    print("|---|---|" + "--:|" * len(envs))
    for cell, B, H, rs in ratios:
        print(f"| {cell} | ({B}, {H}) | " + " | ".join(f"{r:.2f}x" for r in rs) + " |")


if __name__ == "__main__":
    main()
