"""Cold and warm first calls: what a fresh install costs before rnnfast's kernels run.

    python -m bench.coldstart [--cells rnn_relu,lstm,gru] [--T 35] [--B 20] [--H 200]
                              [--out FILE]

For each cell, fresh processes, each with the default ``backend='auto'`` and one
fwd+bwd call ``y, _ = m(x); y.sum().backward()`` (float32, x [T, B, H], I = H):

* ``cold, background``: an empty numba cache (a new ``NUMBA_CACHE_DIR``), the default
  ``RNNFAST_COMPILE=background``: the first call's time (torch.nn's operator runs it
  while a child process compiles, rnnfast.warmup), the time until the kernels take over
  (``warmup.wait()``), and the first call on the kernels (loading them from the cache);
* ``cold, sync``: another empty cache, ``RNNFAST_COMPILE=sync``: the first call
  compiles in the calling process;
* ``warm``: a new process on the cache the background compile filled (with its ready
  marker, as ``python -m rnnfast.warmup`` leaves it): the first call loads the kernels;
* the steady-state call (median of 5 after those) and torch.nn's, for scale.

Times are wall-clock seconds on this machine (the 2 cores are shared with the
background compile while it runs); also the CPU seconds of the sync compile. Prints a
markdown table (and writes it to ``--out``).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

from .report.cli import _csv, _positive
from .report.common import CELLS

_CHILD = textwrap.dedent("""
    import json, statistics, sys, time
    cell, T, B, H, what = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
    import torch, rnnfast
    from rnnfast import warmup
    torch.manual_seed(0)
    kind = {"lstm": "LSTM", "gru": "GRU"}.get(cell, "RNN")
    opts = {"nonlinearity": cell.split("_", 1)[1]} if kind == "RNN" else {}
    m = getattr(rnnfast, kind)(H, H, **opts)
    ref = getattr(torch.nn, kind)(H, H, **opts)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(T, B, H)

    def call(mod):
        t = time.perf_counter()
        y, _ = mod(x)
        y.sum().backward()
        return time.perf_counter() - t

    out = {}
    c0 = time.process_time()
    out["first_s"] = call(m)
    out["first_cpu_s"] = time.process_time() - c0
    out["first_backend"] = rnnfast.explain(m, x).split(":")[1].strip()
    if what == "background":
        t = time.perf_counter()
        warmup.wait()
        out["until_kernels_s"] = out["first_s"] + time.perf_counter() - t
        out["first_kernel_s"] = call(m)
    out["steady_ms"] = 1e3 * statistics.median(call(m) for _ in range(5))
    out["torch_nn_ms"] = 1e3 * statistics.median(call(ref) for _ in range(5))
    print(json.dumps(out))
""")


def _child(cell, T, B, H, what, cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache,
               RNNFAST_COMPILE="sync" if what == "sync" else "background")
    env.pop("RNNFAST_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", _CHILD, cell, str(T), str(B), str(H), what],
                       env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{cell} {what}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.coldstart",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=_csv(choices=CELLS), default="rnn_relu,lstm,gru")
    ap.add_argument("--T", type=_positive(int), default=35)
    ap.add_argument("--B", type=_positive(int), default=20)
    ap.add_argument("--H", type=_positive(int), default=200)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    rows = ["| cell | cold first call, background (s) | its backend | kernels take over "
            "after (s) | first kernel call (s) | cold first call, sync (s) | sync compile "
            "CPU (s) | warm first call (s) | steady rnnfast (ms) | steady torch.nn (ms) |",
            "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|"]
    print(rows[0] + "\n" + rows[1], flush=True)
    for cell in a.cells:
        with tempfile.TemporaryDirectory() as bg, tempfile.TemporaryDirectory() as sy:
            b = _child(cell, a.T, a.B, a.H, "background", bg)
            s = _child(cell, a.T, a.B, a.H, "sync", sy)
            w = _child(cell, a.T, a.B, a.H, "warm", bg)
        rows.append(f"| {cell} | {b['first_s']:.2f} | {b['first_backend']} | "
                    f"{b['until_kernels_s']:.0f} | {b['first_kernel_s']:.2f} | "
                    f"{s['first_s']:.1f} | {s['first_cpu_s']:.1f} | {w['first_s']:.2f} | "
                    f"{w['steady_ms']:.2f} | {w['torch_nn_ms']:.2f} |")
        print(rows[-1], flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
