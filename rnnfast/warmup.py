"""Compile the numba CPU kernels ahead of time (``python -m rnnfast.warmup``), or in a
background process while the first calls run torch.nn's own kernels.

A fresh install compiles each kernel on its first call (seconds to tens of seconds per
kernel, for each dtype and for the serial and the batch-parallel variant: 25-50 CPU-s
per cell). ``python -m rnnfast.warmup`` runs every launcher of the numba backend once on
tiny inputs, for each dtype, serial and parallel, so the compiled code lands in numba's
on-disk cache (keyed on the CPU; see ``rnnfast.kernels.numba.cache``) and later
processes load it in about a second. It prints each kernel and how long it took (a
kernel already cached takes ~0.1 s), and leaves a *ready marker* per (cell, dtype) next
to the cache files.

Options: ``--dtype float32`` (repeatable; default both), ``--cell lstm`` (repeatable:
rnn, lstm, gru; default all), ``--serial`` (skip the parallel variants; writes no
marker), ``--quiet``, ``--background`` (lower this process's priority; what the
background compile below runs).

Background compile (``backend='auto'`` on a CPU, the default ``RNNFAST_COMPILE=background``):
the first call of a cell whose numba kernels have no ready marker starts this module
for that cell and dtype in a child process (one at a time, at lower priority) and
returns at once; until the marker appears, that cell's calls run torch.nn's own fused
operator (``torch._VF.lstm`` & co., the same code torch.nn.LSTM runs; the reference
loop where torch.nn has none: leaky-ReLU, ``record_grad_norms``, half inputs). One line
on stderr says so when the compile starts and when its kernels take over. Results
agree to float rounding, not bitwise, across the switch. ``RNNFAST_COMPILE=sync``
compiles in the calling process instead, on the first call (what ``backend='numba'``,
``RNNFAST_BACKEND=numba``, ``torch.compile``, tracing and
``torch.use_deterministic_algorithms(True)`` always do); so does a process whose cache
is off (``RNNFAST_NUMBA_CACHE=0``) or whose background compile failed.
"""

import argparse
import contextlib
import functools
import hashlib
import os
import subprocess
import sys
import threading
import time
from unittest import mock

import numba
import torch

from .kernels import RELU
from .kernels import numba as nk
from .kernels.numba import _host
from .kernels.numba.config import CACHE, ISA, ISA_TAG

CELLS = ("rnn", "lstm", "gru")
# The launchers each cell's layer calls (rnnfast/ops.py); matmul_tn is the projected
# LSTM's dW_hr, dropout_mask the inter-layer dropout of a stack (rnnfast/modules.py).
CELL_LAUNCHERS = {
    "rnn": ("project", "layer_grads", "rnn_fwd", "rnn_bwd", "dropout_mask"),
    "lstm": ("project", "layer_grads", "matmul_tn", "lstm_fwd", "lstm_bwd", "dropout_mask"),
    "gru": ("project", "layer_grads", "gru_fwd", "gru_bwd", "dropout_mask"),
}


def _calls(dt, cells=CELLS):
    """(name, thunk) for every launcher the ``cells`` use, on inputs of dtype ``dt``."""
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
        ("dropout_mask", lambda: nk.dropout_mask(x, 0.5, 1)),
    ]
    if hasattr(nk, "gru_fwd"):
        w3 = r(3 * H, H)
        calls += [
            ("gru_fwd", lambda: nk.gru_fwd(r(T, B, 3 * H), w3, r(H), r(B, H))),
            ("gru_bwd", lambda: nk.gru_bwd(r(T, B, H), r(B, H), y, r(T, B, G).sigmoid(),
                                           r(B, H), w3)),
        ]
    wanted = {n for c in cells for n in CELL_LAUNCHERS[c]}
    return [(n, f) for n, f in calls if n in wanted]


@contextlib.contextmanager
def _chunks(n):
    """Every launcher runs its serial (n = 1) or its parallel kernel on n threads."""
    with mock.patch.object(_host, "recurrence_chunks", lambda *a: n), \
            mock.patch.object(_host, "gemm_threads", lambda *a: n), \
            mock.patch.object(_host, "elementwise_threads", lambda *a: n):
        yield


def warmup(dtypes=(torch.float32, torch.float64), parallel=True, out=sys.stdout,
           cells=CELLS):
    """Compile (or load from the cache) every kernel ``cells`` use; returns [(name,
    dtype, variant, seconds)]. With ``parallel`` and the cache on, writes each (cell,
    dtype)'s ready marker once all its kernels are in."""
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
                for name, call in _calls(dt, cells):
                    t = time.perf_counter()
                    call()
                    s = time.perf_counter() - t
                    done.append((name, _dtype_name(dt), variant, s))
                    print(f"  {name:12s} {done[-1][1]:8s} {variant:8s} {s:7.1f} s",
                          file=out, flush=True)
        if parallel and CACHE:
            for cell in cells:
                _write_marker(cell, dt)
    print(f"done in {time.perf_counter() - t_all:.1f} s", file=out, flush=True)
    return done


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rnnfast.warmup",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", action="append", choices=["float32", "float64"])
    p.add_argument("--cell", action="append", choices=list(CELLS))
    p.add_argument("--serial", action="store_true", help="skip the parallel variants")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.add_argument("--background", action="store_true",
                   help="run at lower CPU priority (the background compile)")
    a = p.parse_args(argv)
    dtypes = [getattr(torch, d) for d in (a.dtype or ["float32", "float64"])]
    out = open(os.devnull, "w") if a.quiet else sys.stdout
    with _background() if a.background else contextlib.nullcontext():
        warmup(dtypes, parallel=not a.serial, out=out, cells=tuple(a.cell or CELLS))


@contextlib.contextmanager
def _background():
    """Lower priority, and one background compile at a time per cache directory across
    processes (the ranks of a DDP job all start one; the later ones then load what the
    first compiled)."""
    if hasattr(os, "nice"):
        os.nice(10)
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    os.makedirs(_marker_dir(), exist_ok=True)
    with open(_lock_path(), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ------------------------------------------------------------ background compile

COMPILE_ENV = "RNNFAST_COMPILE"
COMPILE_MODES = ("background", "sync")


def compile_mode():
    """``RNNFAST_COMPILE`` ('background', the default, or 'sync'); any other value
    raises ValueError naming the variable."""
    mode = os.environ.get(COMPILE_ENV, "background") or "background"
    if mode not in COMPILE_MODES:
        raise ValueError(f"environment variable {COMPILE_ENV} must be one of "
                         f"{COMPILE_MODES}, got {mode!r}")
    return mode


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _marker_dir():
    """Where numba writes this package's cache files (its own choice: NUMBA_CACHE_DIR,
    the package's __pycache__, or the user-wide cache)."""
    from .kernels.numba import rnn
    return rnn.rnn_fwd_kernel._cache._cache_path


def _lock_path():
    """The cross-process lock of this cache's background compiles (:func:`_background`
    holds it, :func:`_compile_lock_busy` asks whether another process does)."""
    return os.path.join(_marker_dir(), "rnnfast-compile.lock")


@functools.lru_cache(maxsize=None)
def marker_path(cell, dtype):
    """The ready marker of (cell, dtype): named by the kernels' source hash, the ISA
    and its host-tuned settings (config.ISA_TAG), the CPU numba compiles for and whether
    parallel variants exist, so a marker never outlives the cache entries it vouches
    for."""
    from llvmlite import binding

    from .kernels.numba import cache
    cpu = "|".join([os.environ.get("NUMBA_CPU_NAME") or binding.get_host_cpu_name(),
                    os.environ.get("NUMBA_CPU_FEATURES", ""),
                    str(numba.config.NUMBA_NUM_THREADS >= 2)])
    key = hashlib.sha256(f"{cache.source_hash()}|{cpu}".encode()).hexdigest()[:16]
    return os.path.join(_marker_dir(),
                        f"rnnfast-ready-{cell}-{_dtype_name(dtype)}-{ISA_TAG}-{key}")


def _write_marker(cell, dtype):
    path = marker_path(cell, dtype)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")


class _Job:
    def __init__(self, key):
        self.key, self.proc, self.started, self.log = key, None, None, None
        self.owner = None  # the pid that spawned it: a forked process inherits the job,
        # not the child


_LOCK = threading.Lock()
_READY = set()    # (cell, dtype) whose kernels this process may call without compiling
_SYNC = set()     # (cell, dtype) compiled in this process (background off or failed)
_JOBS = {}        # (cell, dtype) -> _Job, queued or running
_RUNNING = []     # at most one _Job whose process runs


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(cell, dtype):
    """The background compile of (cell, dtype): this module, in a child process that
    imports this same rnnfast (its folder first on sys.path: ``-m rnnfast.warmup``
    imported whichever rnnfast the child's path found first, another checkout's for a
    program run by path from elsewhere, which then compiled the wrong cache)."""
    argv = ["--background", "--cell", cell, "--dtype", _dtype_name(dtype)]
    return [sys.executable, "-c",
            f"import sys; sys.path.insert(0, {_ROOT!r}); "
            f"from rnnfast.warmup import main; main({argv!r})"]


def _compile_lock_busy():
    """Whether another process's background compile holds this cache's compile lock
    (:func:`_background`). A process then queues its own instead of starting a child
    that would wait on the lock: ten short programs in a row on a cold cache left ten
    waiting children of ~450 MB each."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(_lock_path(), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _spawn(job):
    cell, dtype = job.key
    os.makedirs(_marker_dir(), exist_ok=True)
    job.log = f"{marker_path(cell, dtype)}.{os.getpid()}.log"
    with open(job.log, "w") as log:
        job.proc = subprocess.Popen(_command(cell, dtype), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
    job.started = time.monotonic()
    job.owner = os.getpid()
    _RUNNING.append(job)


def _retire(job, ok, rc=None):
    _RUNNING.remove(job)
    del _JOBS[job.key]
    cell, dtype = job.key
    if ok:
        _READY.add(job.key)
        print(f"rnnfast: the numba {cell.upper()} kernels for {_dtype_name(dtype)}/"
              f"{ISA.name} are compiled ({time.monotonic() - job.started:.0f} s in the "
              f"background); backend='auto' runs them from now on", file=sys.stderr,
              flush=True)
    else:
        _SYNC.add(job.key)
        how = f"exit {rc}" if rc else "it ended without writing the ready marker"
        print(f"rnnfast: the background compile of the numba {cell.upper()} kernels "
              f"failed ({how}; log: {job.log}); compiling them in this process "
              f"on the next call", file=sys.stderr, flush=True)


def _finished(job):
    """Retire ``job``, whose ready marker exists while its process may not have exited
    yet (writing the marker is its last step): wait for it a moment (a child this
    process started), then say the kernels take over. Without this a cell's next call
    found the marker first, and its job was never retired: no "compiled" line, and the
    child left a zombie."""
    if job.owner == os.getpid():
        try:
            job.proc.wait(timeout=_MARKER_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            pass  # it exits on its own; subprocess reaps it later
    _retire(job, True)


_MARKER_EXIT_WAIT_S = 5.0


def _poll(start=True):
    """Retire a finished background process and (``start``) start the next queued one.
    A process forked from the one that started a compile cannot wait for that child: it
    watches for the ready marker instead."""
    for job in list(_RUNNING):
        marker = os.path.exists(marker_path(*job.key))
        if job.owner != os.getpid():
            if marker:
                _retire(job, True)
            continue
        rc = job.proc.poll()
        if rc is not None:
            _retire(job, rc == 0 and marker, rc)
    if start and not _RUNNING:
        queued = [j for j in _JOBS.values() if j.proc is None]
        for job in queued:  # another process may have compiled them meanwhile
            if os.path.exists(marker_path(*job.key)):
                del _JOBS[job.key]
                _READY.add(job.key)
        queued = [j for j in queued if j.key in _JOBS]
        if queued and not _compile_lock_busy():
            _spawn(queued[0])


def is_ready(cell, dtype):
    """Whether this process has found the numba kernels of (cell, dtype) callable without
    a background compile (what :func:`kernels_status` has recorded; starts nothing)."""
    key = (cell, dtype)
    return key in _READY or key in _SYNC


def kernels_status(cell, dtype, start=True):
    """None when the numba kernels of ``cell`` ('rnn', 'lstm', 'gru') for ``dtype`` may
    be called now (compiled, cached with a ready marker, or to be compiled in this
    process); else one line saying they are compiling in a background process, which
    this call starts (``start``) when none is running or queued for them."""
    key = (cell, dtype)
    if is_ready(cell, dtype):
        return None
    mode = compile_mode()
    with _LOCK:
        _poll(start)
        if is_ready(cell, dtype):
            return None
        if not CACHE:
            _SYNC.add(key)
            return None
        if os.path.exists(marker_path(cell, dtype)):
            job = _JOBS.get(key)
            if job is not None and job in _RUNNING:
                _finished(job)
                _poll(start)  # the next queued cell's compile
            _READY.add(key)
            return None
        if mode == "sync":
            _SYNC.add(key)
            return None
        job = _JOBS.get(key)
        if job is None:
            if not start:
                return (f"the numba {cell.upper()} kernels for {_dtype_name(dtype)} have "
                        f"no ready marker yet (only a warm-up writes it, once every "
                        f"variant is cached): the first call compiles them, or loads what "
                        f"is cached, in a background process")
            job = _JOBS[key] = _Job(key)
            try:
                _poll()  # starts it when nothing else runs
            except OSError as e:
                del _JOBS[key]
                _SYNC.add(key)
                print(f"rnnfast: cannot start a background compile ({e}); compiling in "
                      f"this process", file=sys.stderr, flush=True)
                return None
            where = "started" if job.proc is not None else \
                "queued behind another compile of this cache"
            print(f"rnnfast: compiling the numba {cell.upper()} kernels for "
                  f"{_dtype_name(dtype)}/{ISA.name} in a background process ({where}; "
                  f"1-2 minutes, once per compile cache: {_marker_dir()}); until then "
                  f"backend='auto' runs "
                  f"torch.nn's kernels. `python -m rnnfast.warmup` compiles ahead of time, "
                  f"RNNFAST_COMPILE=sync waits instead", file=sys.stderr, flush=True)
        since = "" if job.proc is None else \
            f", {time.monotonic() - job.started:.0f} s so far"
        return (f"the numba {cell.upper()} kernels for {_dtype_name(dtype)} are compiling "
                f"in a background process (pid "
                f"{job.proc.pid if job.proc else 'queued'}{since})")


def wait(timeout=None):
    """Block until every background compile of this process has ended (or ``timeout``
    seconds); True when none is left."""
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        with _LOCK:
            _poll()
            if not _JOBS:
                return True
        if end is not None and time.monotonic() > end:
            return False
        time.sleep(0.2)


if __name__ == "__main__":
    main()
