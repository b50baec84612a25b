"""Compile every numba CPU kernel ahead of time: ``python -m rnnfast.warmup``.

A fresh install compiles each kernel on its first call (seconds to tens of seconds per
kernel, for each dtype and for the serial and the batch-parallel variant). This runs
every launcher of the numba backend once on tiny inputs, for each dtype, serial and
parallel, so the compiled code lands in numba's on-disk cache (keyed on the CPU; see
``rnnfast.kernels.numba.cache``) and later processes load it in well under a second.
It prints each kernel and how long it took (a kernel already cached takes ~0.1 s).

Options: ``--dtype float32`` (repeatable; default both), ``--serial`` (skip the
parallel variants).
"""

import argparse
import contextlib
import sys
import time
from unittest import mock

import numba
import torch

from .kernels import RELU
from .kernels import numba as nk
from .kernels.numba import _host
from .kernels.numba.config import CACHE, ISA


def _calls(dt):
    """(name, thunk) for every launcher, on inputs of dtype ``dt``."""
    g = torch.Generator().manual_seed(0)
    T, B, H = 3, 4, 5

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dt)

    x, w = r(T, B, H), r(H, H)
    y = r(T, B, H)
    G = 4 * H
    whh = r(G, H)
    gates, cs = r(T, B, G).sigmoid(), r(T, B, H)
    calls = [
        ("project", lambda: nk.project(x, w, r(H))),
        ("layer_grads", lambda: nk.layer_grads(r(T, B, H), x, y, r(B, H), w)),
        ("matmul_tn", lambda: nk.matmul_tn(r(T * B, H), r(T * B, H))),
        ("rnn_fwd", lambda: nk.rnn_fwd(x, w, r(B, H), activation=RELU)),
        ("rnn_bwd", lambda: nk.rnn_bwd(r(T, B, H), r(B, H), y, w, activation=RELU)),
        ("lstm_fwd", lambda: nk.lstm_fwd(r(T, B, G), whh, None, r(B, H), r(B, H))),
        ("lstm_bwd", lambda: nk.lstm_bwd(r(T, B, H), r(B, H), r(B, H), gates, cs, r(B, H),
                                         whh, None)),
    ]
    if hasattr(nk, "gru_fwd"):
        w3 = r(3 * H, H)
        calls += [
            ("gru_fwd", lambda: nk.gru_fwd(r(T, B, 3 * H), w3, r(H), r(B, H))),
            ("gru_bwd", lambda: nk.gru_bwd(r(T, B, H), r(B, H), y, r(T, B, G).sigmoid(),
                                           r(B, H), w3)),
        ]
    return calls


@contextlib.contextmanager
def _chunks(n):
    """Every launcher runs its serial (n = 1) or its parallel kernel on n threads."""
    with mock.patch.object(_host, "recurrence_chunks", lambda *a: n), \
            mock.patch.object(_host, "gemm_threads", lambda *a: n):
        yield


def warmup(dtypes=(torch.float32, torch.float64), parallel=True, out=sys.stdout):
    """Compile (or load from the cache) every kernel; returns [(name, dtype, variant,
    seconds)]."""
    variants = [("serial", 1)]
    if parallel and numba.config.NUMBA_NUM_THREADS >= 2:
        variants.append(("parallel", 2))
    print(f"rnnfast warmup: numba kernels for {ISA.name} "
          f"({'cached on disk' if CACHE else 'RNNFAST_NUMBA_CACHE=0: this process only'})",
          file=out, flush=True)
    done = []
    t_all = time.perf_counter()
    for dt in dtypes:
        for variant, n in variants:
            with _chunks(n):
                for name, call in _calls(dt):
                    t = time.perf_counter()
                    call()
                    s = time.perf_counter() - t
                    done.append((name, str(dt).replace("torch.", ""), variant, s))
                    print(f"  {name:12s} {done[-1][1]:8s} {variant:8s} {s:7.1f} s",
                          file=out, flush=True)
    print(f"done in {time.perf_counter() - t_all:.1f} s", file=out, flush=True)
    return done


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rnnfast.warmup", description=__doc__.split("\n")[0])
    p.add_argument("--dtype", action="append", choices=["float32", "float64"])
    p.add_argument("--serial", action="store_true", help="skip the parallel variants")
    a = p.parse_args(argv)
    dtypes = [getattr(torch, d) for d in (a.dtype or ["float32", "float64"])]
    warmup(dtypes, parallel=not a.serial)


if __name__ == "__main__":
    main()
