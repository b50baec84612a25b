"""Host-side helpers shared by the numba launchers: torch <-> numpy views, buffers backed
by huge pages, and the serial / batch-parallel launch rule. Nothing here is compiled."""

import math
import os
import sys
import threading

import numba
import numpy as np
import torch

from . import config
from . import tile as _tile
from .config import (
    CACHE,
    COLUMN_SPLIT_MAX_ROWS,
    COLUMN_SPLIT_MIN_WEIGHT_BYTES,
    ISA,
    PARALLEL_GEMM_MIN_MACS,
    PARALLEL_MIN_LAUNCH_MACS,
    PARALLEL_MIN_MACS,
    PARALLEL_MIN_ROWS,
)


def as_numpy(t):
    """A contiguous numpy view of a CPU tensor (a copy only when it is not contiguous, or
    when its negative bit is set: numpy() refuses such a lazily negated view, which
    torch's own ops accept, e.g. from torch._neg_view)."""
    if not t.requires_grad and t.is_contiguous():
        try:
            return t.numpy()
        except RuntimeError:
            if not t.is_neg():
                raise
    return t.detach().resolve_neg().contiguous().numpy()


_HUGE = 2 << 20  # x86-64 huge page
_MADV_HUGEPAGE = 14


def _madvise():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
        fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return fn
    except (OSError, AttributeError):
        return None


_MADVISE = (_madvise() if sys.platform.startswith("linux")
            and config.env_flag("RNNFAST_HUGEPAGES", True) else None)


def empty(like, shape, dtype=None):
    """like.new_empty(shape), its big buffers backed by transparent huge pages where the
    kernel allows it (madvise, as numpy does for its own arrays). torch's CPU allocator
    maps big buffers fresh on every call, and the first write to each 4 KiB page then
    faults: a [100, 64, 2048] float32 buffer measured 13 ms to allocate and fill, against
    3 ms with huge pages and 1.3 ms to refill it (this machine's THP mode: madvise)."""
    t = like.new_empty(shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if _MADVISE is not None and nbytes >= 2 * _HUGE:
        start = -(-t.data_ptr() // _HUGE) * _HUGE
        end = (t.data_ptr() + nbytes) // _HUGE * _HUGE
        if end > start:
            _MADVISE(start, end - start, _MADV_HUGEPAGE)
    return t


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


# ---------------------------------------------------------------- the scratch pool
#
# A layer's big internal buffers (the forward's saved gates and cell states, BPTT's
# gate gradients) are a few MB to hundreds of MB, allocated on every call and freed
# when backward is done. glibc returns such memory to the system when a big enough
# free chunk reaches the top of its heap (M_TRIM_THRESHOLD), or unmaps it (above its
# mmap threshold, at most 32 MiB), so the next call's buffers arrive as fresh pages
# and the kernels' first write to each 4 KiB page faults. Measured on a 2-core Zen 4,
# fwd+bwd of one layer, T = 100: GRU (32, 256) 3,300-3,700 faults and 11-13 ms of
# system time per call (of ~54 ms), LSTM (64, 512) 12,500 faults and 56 ms (of ~460),
# ReLU-RNN (64, 512) 1,000-5,200 faults; with glibc told to keep its heap
# (MALLOC_TOP_PAD_) the GRU call took 44 instead of 54 ms. So those buffers come from
# this pool: each kept buffer is handed out again once nothing references it (its
# reference count: the pool's own references only; a view or a tensor made from it,
# torch.from_numpy included, holds a reference to it), up to SCRATCH_POOL_BYTES in
# all, the least recently used free ones dropped first. Buffers under
# SCRATCH_POOL_MIN_BYTES are left to malloc: the faults measured above came from
# buffers of several MB, and a small buffer's pages, where glibc does return them
# (it may mmap blocks from 128 KiB up), cost little against the pool's lookup.
# Pooled buffers keep their contents: every user writes a buffer before reading it,
# as with np.empty. RNNFAST_SCRATCH_POOL_MB sets the cap (0: no pool);
# rnnfast.empty_cache() drops the free buffers.

SCRATCH_POOL_MIN_BYTES = 1 << 20


def _pool_bytes_setting(name="RNNFAST_SCRATCH_POOL_MB", default="1024"):
    """The pool's cap in bytes: ``default`` MiB where the variable is unset or empty."""
    value = os.environ.get(name, "") or default
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if not 0 <= mb < float("inf"):  # NaN and inf too
        raise ValueError(f"{name} must be a finite size in MiB >= 0 (0: no pool), got "
                         f"{value!r}")
    return int(mb * (1 << 20))


SCRATCH_POOL_BYTES = _pool_bytes_setting()
_POOL = []  # 1-D numpy arrays, least recently handed out first
_POOL_LOCK = threading.Lock()


def _free_refs():
    """sys.getrefcount of a pooled buffer that nothing else references, read as
    :func:`_take` reads it (the list's reference, the loop variable, the argument)."""
    pool = [np.empty(1)]
    for buf in pool:
        return sys.getrefcount(buf)


# The pool relies on reference counts; where the GIL is off (free-threaded builds)
# they are not a safe test of "unused", so there is no pool there.
_POOL_ON = SCRATCH_POOL_BYTES > 0 and getattr(sys, "_is_gil_enabled", lambda: True)()
_FREE_REFS = _free_refs()


def _take(n, dtype):
    """A free pooled 1-D buffer of ``dtype`` with n .. 2n elements (the smallest), taken
    out of the pool, or None. Called with _POOL_LOCK held."""
    best = None
    for buf in _POOL:  # the loop of _free_refs: the same count when unused
        if buf.dtype == dtype and n <= buf.shape[0] <= 2 * n and \
                sys.getrefcount(buf) == _FREE_REFS and \
                (best is None or buf.shape[0] < best.shape[0]):
            best = buf
    if best is not None:
        del _POOL[next(i for i in range(len(_POOL)) if _POOL[i] is best)]
    return best


def _pooled_bytes():
    return sum(b.nbytes for b in _POOL)


def _keep(buf):
    """Add a new buffer to the pool, dropping free ones (least recently used first) to
    stay under SCRATCH_POOL_BYTES; not kept where that is not enough. Lock held."""
    room = SCRATCH_POOL_BYTES - _pooled_bytes() - buf.nbytes
    if room < 0:
        kept = []
        for b in _POOL:  # least recently handed out first
            if room < 0 and sys.getrefcount(b) == _FREE_REFS:
                room += b.nbytes
            else:
                kept.append(b)
        _POOL[:] = kept
    if room >= 0:
        _POOL.append(buf)


def empty_cache():
    """Drop the scratch pool's free buffers (those no tensor or array still uses)."""
    with _POOL_LOCK:
        _POOL[:] = [b for b in _POOL if sys.getrefcount(b) > _FREE_REFS]


def pool_array(shape, dtype, small=None):
    """np.empty(shape, dtype) from the scratch pool (see above) where it is big enough;
    else np.empty, or ``small`` when given (a kernel argument's empty stand-in: the
    kernel then allocates its own)."""
    n = math.prod(shape)
    dtype = np.dtype(dtype)
    if not _POOL_ON or n * dtype.itemsize < SCRATCH_POOL_MIN_BYTES:
        return np.empty(shape, dtype=dtype) if small is None else small
    with _POOL_LOCK:
        buf = _take(n, dtype)
        if buf is not None:
            _POOL.append(buf)  # the recent end
        else:
            buf = np.empty(n, dtype=dtype)
            _keep(buf)
            _show_malloc_the_free()
        return buf[:n].reshape(shape)  # a view: holds a reference to buf


# glibc's ceiling for its dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX):
# a freed mapped block of at most this size raises the threshold to the block's size
_GLIBC_DYNAMIC_MMAP_MAX = 32 << 20
_shown = []  # [True] once the free below was shown (the pool's first buffer)


def _show_malloc_the_free():
    """Once per process, when the pool takes its first buffer: allocate and free one
    block just under 32 MiB, the free the pool keeps glibc from seeing.

    glibc's malloc maps a block of at least its mmap threshold (128 KiB at start) fresh
    from the kernel and unmaps it on free; freeing a mapped block of up to 32 MiB raises
    the threshold to that block's size and the heap's trim threshold to twice it (its
    dynamic thresholds, mallopt(3)). A program that frees a tensor of ~32 MiB (a word
    model's logits, a batch of images) has them at that ceiling from then on. Without
    the pool a layer frees its big buffers on every call (torch.nn's oneDNN LSTM frees
    its workspace); pooled buffers are never freed, so in a process where nothing else
    frees a big block the threshold stays at 128 KiB, the heap is trimmed after every
    call, and each call's outputs and gradients come as fresh pages. Measured on a
    2-core Zen 4, fwd+bwd at T = 100, each case in its own process: LSTM (32, 128)
    1,456 page faults and 4.0 ms of system time per call of 17.5 ms, (32, 256) 2,531
    and 3.6 ms, (64, 512) 7,013 and 8.9 ms; the ReLU-RNN at (64, 512) 6,995 and 15 ms.
    After one such free: none for the LSTM at (32, 128) and (32, 256), 0-200 at
    (64, 512); the GRU's and ReLU-RNN's (64, 512) calls 0-2,900, from call to call.

    Only the free of its own buffers' sizes would leave the (64, 512) layers at a
    13 MiB threshold, whose 26 MiB trim threshold a call's churn still exceeds (more
    faults than with none); so the one block is the ceiling's, whatever the pooled
    sizes. The cost: the heap may keep up to 64 MiB of freed memory instead of
    returning it, as in any program that freed such a tensor. No mallopt: the thresholds
    stay glibc's own. RNNFAST_SCRATCH_POOL_MB=0 (no pool) shows nothing. One mmap and
    munmap, the pages never touched, where the pool first grows."""
    if _shown:
        return
    _shown.append(True)
    try:  # address space only (never touched); a hint, never a reason for a call to fail
        block = np.empty(_GLIBC_DYNAMIC_MMAP_MAX - (64 << 10), dtype=np.uint8)
    except MemoryError:  # a tight RLIMIT_AS
        return
    del block


def scratch(like, shape, dtype=None):
    """(tensor, its numpy array) of ``shape`` for a buffer that only rnnfast reads (the
    forward's saved cell states and gates, BPTT's gradients of the gates, the gradient
    norms): allocated by numpy (big ones from the scratch pool above) and shared with
    torch. np.empty costs 0.8 us against 7 us for torch's new_empty on a 2 GHz Xeon (a
    layer's fwd+bwd makes up to 5 of these), and numpy backs big buffers by huge pages
    itself. Never for a returned output: a tensor on numpy memory cannot be resized."""
    a = pool_array(shape, _NUMPY_DTYPES[dtype or like.dtype])
    return torch.from_numpy(a), a


def threads(parts):
    """Threads for ``parts`` independent pieces of work: torch's thread count rules."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, parts))


def recurrence_chunks(B, macs_per_step, steps):
    """How many threads split the batch of a recurrence of ``steps`` time steps: 1
    (serial) for small problems (a step's product under PARALLEL_MIN_MACS, or the whole
    launch under PARALLEL_MIN_LAUNCH_MACS), else one per PARALLEL_MIN_ROWS rows, rounded
    up (a batch of three runs as 2 + 1 rows on two threads: forward-only LSTM at B = 3,
    T = 100, torch.nn / rnnfast on a 2-core Zen 2, serial -> split: H = 64 1.16 -> 1.33x,
    H = 128 1.0 -> 1.2x, H = 256 0.76-0.83 -> 0.99-1.08x, H = 512 0.74-1.01 ->
    0.97-0.99x)."""
    if macs_per_step < PARALLEL_MIN_MACS or \
            steps * macs_per_step < PARALLEL_MIN_LAUNCH_MACS:
        return 1
    return threads(-(-B // PARALLEL_MIN_ROWS))


def recurrence_columns(B, H, G, itemsize, steps):
    """How many threads split the hidden units of every step of a recurrence of B rows,
    H units, G gate columns (the column split, config.COLUMN_SPLIT_MAX_ROWS), or 1 (the
    row split, :func:`recurrence_chunks`, or serial): a batch of at most
    COLUMN_SPLIT_MAX_ROWS rows whose recurrent weight [G, H] has at least
    COLUMN_SPLIT_MIN_WEIGHT_BYTES, in whole panels of the tile (H a multiple of its
    width), with as many multiply-adds over the launch as the row split asks."""
    panel = _tile.NV * ISA.lanes(itemsize)
    if B > COLUMN_SPLIT_MAX_ROWS or H % panel or \
            G * H * itemsize < COLUMN_SPLIT_MIN_WEIGHT_BYTES or \
            steps * B * H * G < PARALLEL_MIN_LAUNCH_MACS or busy():
        return 1
    return threads(H // panel)


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_CPUS = _cpus()


def busy():
    """Whether the machine has had more runnable threads than this process's CPUs over
    the last minute, by more than half a thread (the load average; ~1 us to read; a
    process training on both cores of the 2-core Zen 4 with the split brings it to
    1.8-2.0 by itself). The column split synchronises its threads every step, so where
    another process holds a core, each step waits for a descheduled thread's next time
    slice: on the 2-core Zen 4 with a second process
    running two busy threads, a GRU fwd+bwd at (1, 512), T = 100, took 1,608 ms split
    against 82 ms with the row split (torch.nn: 888 ms; BENCHMARKS.md, 2026-12-06
    18:53). A load that rose within the last minute is seen late (the average lags)."""
    try:
        return os.getloadavg()[0] > _CPUS + 0.5
    except (AttributeError, OSError):
        return False


def elementwise_threads(n, min_per_thread):
    """Threads for an elementwise kernel over n elements: one per ``min_per_thread``."""
    return threads(n // min_per_thread)


def gemm_threads(rows, macs):
    """Threads for a layer GEMM: 1 below PARALLEL_GEMM_MIN_MACS, else up to one per 4
    row tiles."""
    if macs < PARALLEL_GEMM_MIN_MACS:
        return 1
    return threads(rows // (4 * _tile.MR))


# A kernel whose first call in this process takes longer than this is compiling: the
# user is told what, on stderr, once.
COMPILE_NOTICE_S = 1.0
_called = set()  # (kernel, dtype) already called once in this process


def _notice(kernel, dtype):
    name = f"{kernel.py_func.__name__} for {dtype}/{ISA.name}"
    index = getattr(getattr(getattr(kernel, "_cache", None), "_cache_file", None),
                    "_index_path", None)
    if CACHE and index and os.path.exists(index):  # numba's index of cached versions
        print(f"rnnfast: loading {name} from the compile cache (first use in this "
              f"process; compiling it if the cache holds no match)", file=sys.stderr,
              flush=True)
        return
    after = "cached afterwards" if CACHE else "RNNFAST_NUMBA_CACHE=0: not cached"
    print(f"rnnfast: compiling {name} (first use; {after})", file=sys.stderr, flush=True)


def launch(serial, parallel, nchunks, *args, threads=None):
    """Run the serial kernel, or the parallel one on ``nchunks`` threads (passed as its
    last argument). With ``threads`` the kernels take their split counts among ``args``
    (a projection's parts and a recurrence's chunks): the parallel one runs where
    threads > 1, on that many threads, and nothing is appended. The first call of a
    kernel for a dtype may compile it: past COMPILE_NOTICE_S a one-line notice goes to
    stderr.

    numba's OpenMP layer sets the OpenMP thread count to NUMBA_NUM_THREADS when it
    starts (the first parallel launch in the process), and torch reads that same count
    where the two share libgomp: torch.set_num_threads(3) read 4 afterwards with
    NUMBA_NUM_THREADS=4. A kernel's first call therefore puts torch's count back.

    numba's own thread count (numba.get_num_threads: the calling thread's setting, which
    the user's own parallel numba code runs on too) is set for the launch only and put
    back afterwards."""
    if threads is not None:
        kernel = serial if threads == 1 else parallel
        n = threads
    else:
        kernel = serial if nchunks == 1 else parallel
        n = nchunks
        if nchunks != 1:
            args = args + (nchunks,)
    dtype = getattr(args[0], "dtype", None)
    key = (kernel, dtype)
    first = key not in _called
    if first:
        torch_threads = torch.get_num_threads()
    # numba's thread count is the calling thread's own setting, which the user's own
    # parallel numba code runs on too: set for this launch only, then put back
    prev = numba.get_num_threads() if n != 1 else n
    if prev != n:
        numba.set_num_threads(n)
    try:
        if not first:
            return kernel(*args)
        timer = threading.Timer(COMPILE_NOTICE_S, _notice, (kernel, dtype))
        timer.daemon = True
        timer.start()
        try:
            return kernel(*args)
        finally:
            timer.cancel()
            _called.add(key)
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)
    finally:
        if prev != n:
            numba.set_num_threads(prev)


_FULL_LENGTHS = {}  # (T, B) -> int64 [B] all-T (read by the kernels, never written)


def lengths_array(lengths, T, B):
    """int64 [B] numpy lengths (all T when None)."""
    if lengths is None:
        full = _FULL_LENGTHS.get((T, B))
        if full is None:
            if len(_FULL_LENGTHS) > 64:
                _FULL_LENGTHS.clear()
            full = _FULL_LENGTHS[(T, B)] = np.full(B, T, dtype=np.int64)
        return full
    return as_numpy(lengths.to(torch.int64))


_DENSE_OFF = {}  # (T, B) -> int64 [T] t * B (read by the kernels, never written)


def row_layout(offsets, T, B):
    """(off, dense) for the kernels' row arrays [R, K], where step t of batch row b is
    row off[t] + b: a padded [T, B, K] tensor (``offsets`` None: off[t] = t * B, dense)
    or a PackedSequence's rows (off = ``offsets``, the rows before step t; only the
    active (t, b) have a row)."""
    if offsets is not None:
        return as_numpy(offsets.to(torch.int64)), False
    off = _DENSE_OFF.get((T, B))
    if off is None:
        if len(_DENSE_OFF) > 64:
            _DENSE_OFF.clear()
        off = _DENSE_OFF[(T, B)] = np.arange(T, dtype=np.int64) * B
    return off, True


def steps_and_batch(x, lengths, offsets):
    """(T, B) of a layer input already checked (kernels._check): padded [T, B, I], or
    a PackedSequence's rows [M, I] with its ``offsets`` [T] and sorted ``lengths`` [B]."""
    if offsets is None:
        return x.shape[0], x.shape[1]
    return offsets.shape[0], lengths.shape[0]


def rows(t):
    """The 2-D numpy view [R, K] of a row tensor ([T, B, K] padded or [M, K] packed)."""
    a = as_numpy(t)
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a


_NONE = {}  # (kind, torch dtype) -> an empty array / tensor that stands for "none"


def _none(kind, like, make):
    key = (kind, like.dtype)
    a = _NONE.get(key)
    if a is None:
        a = _NONE[key] = make(_NUMPY_DTYPES[like.dtype])
    return a


def no_rows(like):
    """An empty [0, 0] numpy array of like's dtype: an absent 2-D kernel argument (no
    input to project, no projection weight, gates not saved). Shared: never written."""
    return _none("rows", like, lambda dt: np.empty((0, 0), dtype=dt))


def no_vector(like):
    """An empty [0] numpy array of like's dtype: an absent bias. Shared: never written."""
    return _none("vector", like, lambda dt: np.empty(0, dtype=dt))


def no_tensor(like):
    """An empty [0] tensor of like's dtype (CPU): what a forward without train returns
    for the buffers only backward reads. Shared between calls (a [0] tensor holds no
    data; new_empty cost ~4 us per call)."""
    return _none("tensor", like, lambda dt: torch.from_numpy(np.empty(0, dtype=dt)))


def layer_input(x, w_ih, b_ih, b_hh, like, G):
    """A recurrence kernel's own projection operands: (x [T, B, I] or packed rows [M, I]
    as rows [N, I], w_ih, b_ih, b_hh as numpy, the projection's thread count); with x
    None (the projection is already in xp) empty stand-ins and 1. ``like``: a tensor of
    the call's dtype."""
    if x is None:
        rows, vec = no_rows(like), no_vector(like)
        return rows, rows, vec, vec, 1
    I = x.shape[-1]
    N = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
    b = (as_numpy(b_ih), as_numpy(b_hh)) if b_ih is not None else (no_vector(like),) * 2
    return (as_numpy(x).reshape(N, I), as_numpy(w_ih), *b, gemm_threads(N, N * I * G))


def panel_buffer(like, n, k):
    """Room for a weight's packed panels (gemm.pack_b / pack_bt: n columns of B, k terms)
    as the kernels' ``*_p`` arguments take it: [ceil(n / W), k, W] of like's dtype, W =
    NV vectors, from the scratch pool where it is at least SCRATCH_POOL_MIN_BYTES; else
    the shared empty stand-in, and the kernel packs into an array of its own.

    A kernel's own np.empty of a big buffer comes fresh from the OS (glibc's malloc maps
    it, and unmaps it when freed), and each of its 4 KiB pages faults on the first
    write: an LSTM layer's fwd+bwd packs four weights, 1024 faults per call at H = 256
    (1 MiB each) and 4096 at H = 512, ~1 ms of a 12 ms call at (T, B, H) = (10, 64, 256)
    on a 2-core Zen 4 VM. A pooled buffer was written before."""
    dt = np.dtype(_NUMPY_DTYPES[like.dtype])
    W = _tile.NV * ISA.lanes(dt.itemsize)
    return pool_array(((n + W - 1) // W, k, W), dt, no_weight(like))


def pool_rows(like, n, k):
    """Scratch [n, k] of like's dtype that a kernel fills before it reads it: from the
    scratch pool where it is at least SCRATCH_POOL_MIN_BYTES, else the shared empty
    stand-in (no_rows), and the kernel allocates its own. (The weight-gradient kernel's
    first-step product dgh_0^T h0, [G, P]: 4 MiB at an LSTM's H = 512, ~1,000 faulted
    pages per call when the kernel's own.)"""
    return pool_array((n, k), _NUMPY_DTYPES[like.dtype], no_rows(like))


def weight_panels(like, w, transposed=True):
    """:func:`panel_buffer` for numpy weight w packed as W^T (gemm.pack_bt: w [N, K]) or
    as it is (gemm.pack_b: w [K, N]); an empty weight (none, or no projection to run)
    and one far below the pool's size (the panels add at most K * W elements of
    padding) get the stand-in at once: ~0.4 us a weight instead of ~2."""
    if w.nbytes < SCRATCH_POOL_MIN_BYTES // 2:
        return no_weight(like)
    return panel_buffer(like, *(w.shape if transposed else w.shape[::-1]))


def transposed_panels(like, *weights):
    """:func:`weight_panels` for each weight a kernel packs as W^T."""
    return tuple(weight_panels(like, w) for w in weights)


def no_weight(like):
    """Stands for an absent packed weight (no projection): zero panels [0, 0, 0] of
    ``like``'s dtype. Shared: never written."""
    return _none("weight", like, lambda dt: np.zeros((0, 0, 0), dtype=dt))
