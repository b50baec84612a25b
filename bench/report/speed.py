"""Speed: rnnfast against torch.nn, a torch.compile'd reference loop, and JAX.

For each grid point (cell, T, B, H = I, dtype, mode) every implementation is built with
the same weights and inputs and timed in interleaved rounds (``time_interleaved``), so
their ratio is measured under the same machine noise: rnnfast and torch.nn in one group
(the reported rnnfast time), rnnfast and the other peers in a second (their ratios use
that group's rnnfast time). Reported: median seconds, the ratio peer / rnnfast (> 1:
rnnfast is faster), and rnnfast's achieved GEMM GFLOP/s.

torch.compile (default mode, static shapes: one graph per shape and grad mode). Its
compile time is warm-up and excluded, but capped: when one warm-up takes more than
``compile_cap_s``, or the per-step compile time already seen predicts that a new T
would, or the run's total compile budget is spent, the column is skipped at that point
and the reason recorded.
"""

import time
from dataclasses import asdict, dataclass

import torch

from . import common
from .common import CELLS, DTYPES

# The foundation issue's speed floor: fwd+bwd, T=100, float32, I=H, one layer.
FLOOR_POINTS = [(1, 32), (16, 64), (32, 128), (32, 256), (64, 512)]
FLOOR_T = 100
# The cells with a fwd+bwd floor at every point (floor_target): the foundation issue's
# ReLU-RNN and LSTM, issue 12's GRU.
FLOOR_CELLS = ("rnn_relu", "lstm", "gru")


def floor_target(cell, B, H):
    """Minimum torch.nn / rnnfast fwd+bwd ratio the floor demands, or None."""
    if (B, H) not in FLOOR_POINTS:
        return None
    if cell == "rnn_relu":
        return 1.2 if (B, H) == (64, 512) else 1.5
    if cell == "lstm":
        return 1.0
    if cell == "gru":  # issue 12: torch's CPU GRU has no fused oneDNN path
        return 1.5
    return None


@dataclass(frozen=True)
class Point:
    cell: str
    T: int
    B: int
    H: int
    dtype: str = "float32"
    mode: str = "fwdbwd"

    @property
    def I(self):  # noqa: E743 - the dimension's conventional name
        return self.H

    def label(self):
        return f"{self.cell} T{self.T} B{self.B} H{self.H} {self.dtype} {self.mode}"


def default_grid(quick=False):
    """The default points. Quick: two floor points per cell. Full: every floor point
    for ReLU-RNN, LSTM and GRU, tanh-RNN at one, and T = 10, 100, 1000 at B=16, H=64
    (the time-vs-T plot); each in fwd and fwd+bwd."""
    pts = []
    if quick:
        for c in FLOOR_CELLS:
            pts += [(c, FLOOR_T, B, H) for B, H in FLOOR_POINTS[:2]]
    else:
        for c in FLOOR_CELLS:
            pts += [(c, FLOOR_T, B, H) for B, H in FLOOR_POINTS]
        pts += [("rnn_tanh", FLOOR_T, 16, 64)]
        for c in FLOOR_CELLS:
            pts += [(c, T, 16, 64) for T in (10, 1000)]
    return [Point(c, T, B, H, "float32", mode) for (c, T, B, H) in pts
            for mode in common.MODES]


class CompileCache:
    """torch.compile'd reference functions, and the compile-time cap."""

    def __init__(self, cap_s=60.0, enabled=True, budget_s=float("inf")):
        self.cap_s = cap_s
        self.enabled = enabled
        self.budget_s = budget_s  # total compile seconds for the whole run
        self.spent_s = 0.0
        self.fns = {}
        self.per_step = {}  # (cell, mode) -> worst compile seconds per time step seen
        self.compiled = set()  # points already compiled (static shapes: one graph each)
        self.log = []

    def get(self, cell, dtype):
        key = (cell, dtype)
        if key not in self.fns:
            # Every (shape, grad mode) gets its own static graph: the fastest code
            # torch.compile makes, and cheaper to build than a dynamic-shape graph. The
            # recompile limit is raised to hold them all, and hitting it raises (and
            # skips the column) instead of silently falling back to eager.
            torch._dynamo.config.recompile_limit = 256
            torch._dynamo.config.fail_on_recompile_limit_hit = True
            self.fns[key] = torch.compile(common.reference_fn(cell), dynamic=False)
        return self.fns[key]

    def skip_reason(self, p):
        if not self.enabled:
            return "disabled (--no-compile)"
        if p in self.compiled:
            return None
        if self.spent_s >= self.budget_s:
            return (f"run's compile budget spent ({self.spent_s:.0f} s >= "
                    f"{self.budget_s:.0f} s; raise it with --compile-budget)")
        # Extrapolate only to a longer T than seen (the first compile of a run also pays
        # the compiler's one-time start-up, so same-T shapes are still tried).
        per = self.per_step.get((p.cell, p.mode))
        longest = max((q.T for q in self.compiled if (q.cell, q.mode) == (p.cell, p.mode)),
                      default=0)
        if per is not None and p.T > longest and per * p.T > self.cap_s:
            return f"predicted compile {per * p.T:.0f} s > cap {self.cap_s:.0f} s"
        return None

    def record(self, p, seconds):
        self.spent_s += seconds
        self.compiled.add(p)
        key = (p.cell, p.mode)
        self.per_step[key] = max(self.per_step.get(key, 0.0), seconds / p.T)
        self.log.append({"point": p.label(), "compile_s": seconds})


def _compiled_callables(p, cache, m, x, g, gh):
    """(callable, compile seconds) for the compiled reference at point p, or
    (None, reason)."""
    reason = cache.skip_reason(p)
    if reason:
        return None, reason
    f = cache.get(p.cell, p.dtype)
    args = common.reference_args(p.cell, m, x)
    if p.mode == "fwd":
        def run():
            with torch.no_grad():
                return f(x, *args)
    else:
        xg = x.detach().requires_grad_(True)
        params = list(m.parameters())

        def run():
            y, h = f(xg, *args)
            return torch.autograd.grad(common.loss_of(y, h, g, gh[0]), [xg] + params)
    t0 = time.perf_counter()
    try:
        run()
        common.sync(x.device)
    except Exception as e:  # noqa: BLE001 - a compiler failure skips the column
        return None, f"compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    dt = time.perf_counter() - t0
    cache.record(p, dt)
    if dt > cache.cap_s:
        return None, f"compile took {dt:.0f} s > cap {cache.cap_s:.0f} s"
    return run, dt


def run_point(p, device, backends, cache, use_jax, timing):
    """Time every implementation at point ``p``. Returns a JSON-ready dict."""
    t_start = time.perf_counter()
    dtype = DTYPES[p.dtype]
    tm = common.make_torch(p.cell, p.I, p.H, dtype, device, seed=0)
    x, g, gh = common.make_inputs(p.T, p.B, p.I, p.H, dtype, device, seed=1)
    fns, notes = {}, {}
    for be in backends:
        rm = common.make_rnnfast(p.cell, p.I, p.H, dtype, device, be, like=tm)
        fns[f"rnnfast[{be}]"] = (common.fwd_fn(rm, x) if p.mode == "fwd"
                                 else common.fwdbwd_fn(rm, x, g, gh))
    fns["torch.nn"] = (common.fwd_fn(tm, x) if p.mode == "fwd"
                       else common.fwdbwd_fn(tm, x, g, gh))
    if CELLS[p.cell][1] == "leaky_relu":
        notes["torch.nn"] = "torch.nn has no leaky-ReLU RNN: timed its ReLU RNN"
    compile_s = None
    run, info = _compiled_callables(p, cache, tm, x, g, gh)
    if run is None:
        notes["torch.compile"] = info
    else:
        fns["torch.compile"] = run
        compile_s = info
    if use_jax:
        try:
            from . import jaxpeer
            jf, jfb = jaxpeer.make_fns(p.cell, tm, x, g, gh)
            fns["jax"] = jf if p.mode == "fwd" else jfb
        except Exception as e:  # noqa: BLE001 - JAX is an optional peer
            notes["jax"] = f"failed: {type(e).__name__}: {e}"
    # Two interleaved groups: rnnfast against torch.nn alone (the floor comparison), then
    # rnnfast against the other peers. A peer's thread pools (XLA's, inductor's OpenMP)
    # slow whatever runs right after them on 2 cores: with JAX in the same rounds,
    # rnnfast's B=1 LSTM measured 0.6-0.77 ms instead of 0.29-0.44.
    mine = [n for n in fns if n.startswith("rnnfast")]
    core = mine + ["torch.nn"]
    times = common.time_interleaved({n: fns[n] for n in core}, device, **timing)
    base = {n: {be: times[f"rnnfast[{be}]"]["median_s"] for be in backends} for n in core}
    others = [n for n in fns if n not in core]
    if others:
        t2 = common.time_interleaved({n: fns[n] for n in mine + others}, device, **timing)
        for n in others:
            times[n] = t2[n]
            base[n] = {be: t2[f"rnnfast[{be}]"]["median_s"] for be in backends}
    flops = common.gemm_flops(p.cell, p.T, p.B, p.I, p.H, p.mode)
    out = asdict(p)
    out.update(I=p.I, gemm_flops=flops, times=times, notes=notes, compile_s=compile_s,
               floor_target=floor_target(p.cell, p.B, p.H)
               if (p.mode == "fwdbwd" and p.T == FLOOR_T and p.dtype == "float32") else None)
    out["wall_s"] = time.perf_counter() - t_start
    out["ratios"] = {}
    for be in backends:
        t_be = times[f"rnnfast[{be}]"]["median_s"]
        out["ratios"][be] = {peer: times[peer]["median_s"] / base[peer][be]
                             for peer in times if not peer.startswith("rnnfast")}
        times[f"rnnfast[{be}]"]["gflops"] = flops / t_be / 1e9
    for peer in times:
        times[peer].setdefault("gflops", flops / times[peer]["median_s"] / 1e9)
    return out


def floor_summary(results, backend):
    """Rows of the speed-floor check: one per floor point and cell (fwd+bwd)."""
    rows = []
    for r in results:
        target = r.get("floor_target")
        if target is None or backend not in r["ratios"]:
            continue
        ratio = r["ratios"][backend]["torch.nn"]
        fwd = next((q for q in results if q["mode"] == "fwd" and q["cell"] == r["cell"]
                    and (q["T"], q["B"], q["H"], q["dtype"]) ==
                    (r["T"], r["B"], r["H"], r["dtype"])), None)
        rows.append({"cell": r["cell"], "B": r["B"], "H": r["H"], "T": r["T"],
                     "fwdbwd_ratio": ratio, "target": target, "pass": ratio >= target,
                     "fwd_ratio": fwd["ratios"][backend]["torch.nn"] if fwd else None})
    return rows
