"""Shared pieces of the report, ``bench.gpu`` and the pytest-benchmark cases: cells,
model pairs, inputs, the loss, interleaved timing, flop counts, the machine's GEMM rate.

Definitions used everywhere in ``bench/``:

* **forward** (``fwd``): ``y, h_n = m(x)`` under ``torch.no_grad()``.
* **forward+backward** (``fwdbwd``): ``x.requires_grad=True``; ``y, h_n = m(x)``;
  ``loss = (y * g).sum() + (h_n * gh).sum()`` with fixed random ``g``, ``gh``;
  ``torch.autograd.grad`` of the loss w.r.t. ``x`` and every parameter.
* **relative error** of a tensor: ``||a - ref||_F / ||ref||_F``.
* **GEMM flops** of one layer and direction (G gate columns: H for an RNN, 4H for an
  LSTM, 3H for a GRU): forward ``2 T B G (I + H)`` (input projection + recurrent
  products); backward twice that (``dh = dz W_hh``, ``dW_hh``, ``dW_ih``, ``dx``), so
  fwd+bwd = ``6 T B G (I + H)``.

Dimensions: T time steps, B batch rows, I input size, H hidden size, G gate columns.
"""

import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import time
from unittest import mock

import numpy as np
import torch

import rnnfast
from rnnfast import reference

# name -> (kind, nonlinearity); kind names the torch.nn / rnnfast module (RNN, LSTM, GRU)
CELLS = {
    "rnn_relu": ("rnn", "relu"),
    "rnn_tanh": ("rnn", "tanh"),
    "rnn_leaky_relu": ("rnn", "leaky_relu"),
    "lstm": ("lstm", None),
    "gru": ("gru", None),
}
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("fwd", "fwdbwd")


# ---------------------------------------------------------------- environment

def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def have_jax():
    return importlib.util.find_spec("jax") is not None


def triton_ready():
    """True when CUDA is present and the Triton backend imports and exposes the kernel
    contract (the report does not time the Triton interpreter)."""
    if not torch.cuda.is_available():
        return False
    try:
        mod = importlib.import_module("rnnfast.kernels.triton")
    except Exception:  # noqa: BLE001 - any import failure means "not ready"
        return False
    return all(hasattr(mod, f) for f in ("rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd"))


def available_backends(device):
    """rnnfast backends the benchmark times on ``device`` by default."""
    if device.type == "cuda":
        return ["triton"] if triton_ready() else []
    return ["numba"]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device):
    info = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rnnfast": rnnfast.__version__,
    }
    # Versions read from the installed metadata: importing numba is not needed here (the
    # GPU validation runs where only an older numba may be installed).
    for pkg in ("numba", "triton"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    if have_jax():
        import jax
        info["jax"] = jax.__version__
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    sms=torch.cuda.get_device_properties(device).multi_processor_count)
    return info


# ---------------------------------------------------------------- models and inputs

def gates(cell, H):
    """Gate columns G of the recurrent product: H (RNN), 4H (LSTM), 3H (GRU)."""
    return _GATES[CELLS[cell][0]] * H


def make_torch(cell, I, H, dtype, device, seed=0):
    """torch.nn.RNN / LSTM / GRU with default init drawn from ``seed``."""
    kind, nl = CELLS[cell]
    torch.manual_seed(seed)
    if kind == "lstm":
        m = torch.nn.LSTM(I, H)
    elif kind == "gru":
        m = torch.nn.GRU(I, H)
    elif nl == "leaky_relu":
        # torch.nn has no leaky-ReLU RNN: its stand-in is the ReLU RNN (same cost).
        m = torch.nn.RNN(I, H, nonlinearity="relu")
    else:
        m = torch.nn.RNN(I, H, nonlinearity=nl)
    return m.to(device=device, dtype=dtype)


def make_rnnfast(cell, I, H, dtype, device, backend, like=None):
    """rnnfast module with ``like``'s weights (a torch.nn module), or default init."""
    kind, nl = CELLS[cell]
    if kind == "lstm":
        m = rnnfast.LSTM(I, H, backend=backend)
    elif kind == "gru":
        m = rnnfast.GRU(I, H, backend=backend)
    else:
        m = rnnfast.RNN(I, H, nonlinearity=nl, backend=backend)
    m = m.to(device=device, dtype=dtype)
    if like is not None:
        m.load_state_dict(like.state_dict())
    return m


def make_inputs(T, B, I, H, dtype, device, seed=1):
    """x [T, B, I], g [T, B, H], gh [1, B, H]: random input and the loss weights."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    g = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    gh = torch.randn(1, B, H, generator=gen, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (x, g, gh))


def final_h(state):
    return state[0] if isinstance(state, tuple) else state


def loss_of(y, h_n, g, gh):
    return (y * g).sum() + (h_n * gh).sum()


def fwd_fn(m, x):
    """Forward-only callable, under no_grad."""
    def run():
        with torch.no_grad():
            return m(x)
    return run


def fwdbwd_fn(m, x, g, gh):
    """Forward+backward callable: grads of the loss w.r.t. x and every parameter."""
    x = x.detach().requires_grad_(True)
    params = list(m.parameters())

    def run():
        y, state = m(x)
        return torch.autograd.grad(loss_of(y, final_h(state), g, gh), [x] + params)
    return run


# ---------------------------------------------------------------- reference loop for torch.compile

def reference_fn(cell):
    """The reference per-step loop as a function of (x, w_ih, w_hh, b_ih, b_hh, h0[, c0])
    -> (y, h_n): what ``torch.compile`` compiles."""
    kind, nl = CELLS[cell]
    if kind == "lstm":
        def f(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
            y, h, _ = reference.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, None, h0, c0)
            return y, h
    elif kind == "gru":
        def f(x, w_ih, w_hh, b_ih, b_hh, h0):
            return reference.gru_layer(x, w_ih, w_hh, b_ih, b_hh, h0)
    else:
        def f(x, w_ih, w_hh, b_ih, b_hh, h0):
            return reference.rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity=nl)
    return f


def reference_args(cell, m, x):
    """Positional args of :func:`reference_fn` from a torch.nn module's weights."""
    B, H = x.shape[1], m.hidden_size
    h0 = x.new_zeros((B, H))
    args = [m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0, h0]
    if CELLS[cell][0] == "lstm":
        args.append(x.new_zeros((B, H)))
    return args


# ---------------------------------------------------------------- timing

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def time_interleaved(fns, device, min_reps=5, max_reps=50, budget_s=2.0, min_sample_s=2e-3,
                     settle_s=0.005, rewarm_below_s=0.02):
    """Median seconds per call of each callable in ``fns`` (name -> fn), measured in
    rounds that call every fn once (the order rotates each round), so machine noise
    hits all of them alike. Warm-up calls are excluded. Calls shorter than
    ``min_sample_s`` are repeated inside a sample and averaged.

    Each sample starts ``settle_s`` after the previous one ends: the peers bring their
    own thread pools (torch's OpenMP, numba's workers, XLA's), whose workers spin for a
    while after a parallel region; on 2 cores the next peer's first milliseconds would
    otherwise share the cores with them (measured: rnnfast's LSTM at B=32, H=256 took
    32.7 ms right after JAX, 26-27 ms without JAX in the process).

    After the pause, a callable shorter than ``rewarm_below_s`` runs once untimed before
    its sample: the first call after any pause of a few milliseconds (sleeping, or
    another peer running) is a cold call, and on these machines it costs a host-bound
    call 2-2.5x its steady time (torch.nn's and rnnfast's LSTM at B=1, H=32, fwd+bwd:
    ~600 us back to back, 1.1-1.6 ms first after a 5 ms pause, for torch.nn and rnnfast
    alike; a GEMM-only loop 3%). Samples then measure the steady per-call time, as a
    loop of calls sees it (and as timeit-style timers do); the end-to-end section
    (``e2e``) measures layers called between other work.

    Returns name -> {"median_s", "reps", "iqr_s", "inner"}.
    """
    names = list(fns)
    inner, warm = {}, {}
    for n in names:
        fns[n]()  # warm-up (first call may compile)
        sync(device)
        t0 = time.perf_counter()
        fns[n]()
        sync(device)
        dt = warm[n] = time.perf_counter() - t0
        inner[n] = max(1, min(100, math.ceil(min_sample_s / max(dt, 1e-7))))
    # Slow points (a round longer than twice the budget) stop at 3 rounds.
    round_s = sum(inner[n] * warm[n] for n in names)
    if round_s > 2 * budget_s:
        min_reps = min(min_reps, 3)
    samples = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while r < max_reps and (r < min_reps or time.perf_counter() - start < budget_s):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            k = inner[n]
            time.sleep(settle_s)
            if warm[n] < rewarm_below_s:
                fns[n]()
                sync(device)
            t0 = time.perf_counter()
            for _ in range(k):
                fns[n]()
            sync(device)
            samples[n].append((time.perf_counter() - t0) / k)
        r += 1
    out = {}
    for n in names:
        s = sorted(samples[n])
        q1, q3 = s[len(s) // 4], s[(3 * len(s)) // 4]
        out[n] = {"median_s": median(s), "min_s": s[0], "reps": len(s), "iqr_s": q3 - q1,
                  "inner": inner[n]}
    return out


# ---------------------------------------------------------------- flops and GEMM rate

def gemm_flops(cell, T, B, I, H, mode):
    G = gates(cell, H)
    fwd = 2.0 * T * B * G * (I + H)
    return fwd if mode == "fwd" else 3.0 * fwd


def measure_gemm_rate(device, M=6400, K=512, N=512, dtype=torch.float32, reps=7):
    """GFLOP/s of an [M, K] x [K, N] GEMM (the size of an input projection over
    T*B = 6400 rows at H = 512), best of ``reps`` (a peak: the first calls can pay for
    fresh output pages): torch on ``device``, and on CPU numpy's matmul and rnnfast's
    own GEMM (the register tile its CPU layers run on, through the projection launcher,
    output allocation included). The best of them is the floor."""
    res = {"shape": [M, K, N], "dtype": str(dtype).replace("torch.", "")}
    a = torch.randn(M, K, device=device, dtype=dtype)
    b = torch.randn(K, N, device=device, dtype=dtype)
    flops = 2.0 * M * K * N

    def rate(fn):
        fn()
        sync(device)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
        return flops / min(ts) / 1e9

    res["torch_gflops"] = rate(lambda: a @ b)
    if device.type == "cpu":
        from rnnfast.kernels.numba import gemm
        x, w = a.view(M, 1, K), b.t().contiguous()
        # the tile itself, whatever auto picks
        with mock.patch.dict(os.environ, {gemm.LAYER_GEMM_ENV: "numba"}):
            res["rnnfast_gflops"] = rate(lambda: gemm.project(x, w))
        # numpy last: its OpenBLAS threads spin for up to ~0.1 s after each call and
        # would slow whatever runs next on the other thread pools
        an, bn = a.numpy(), b.numpy()
        res["numpy_gflops"] = rate(lambda: an @ bn)
    res["peak_gflops"] = max(v for k, v in res.items() if k.endswith("_gflops"))
    return res


# ---------------------------------------------------------------- errors

def rel_err(a, ref):
    a = a.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    den = torch.linalg.vector_norm(ref).item()
    num = torch.linalg.vector_norm(a - ref).item()
    return num / den if den > 0 else num


def fmt_ms(s):
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "—"
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_x(r):
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "—"
    return f"{r:.2f}x"
