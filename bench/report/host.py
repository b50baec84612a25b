"""``host``: rnnfast's host overhead per layer call, as issue 13 defines it: the call's
time minus the time inside the compiled kernels (its floor: at most 50 us per fwd+bwd of
one layer on the CPU).

For each cell, a one-layer rnnfast module on the numba backend at (B, H) = (1, 32),
T = 100, I = H, float32 (where the kernels' own work is smallest), the calls of
:func:`common.fwd_fn` and :func:`common.fwdbwd_fn` (the speed section's definitions):

* ``total_s``: the call's time, median over rounds of ``calls`` back-to-back calls
  (untimed rounds: host + in kernels below come from the timed rounds, so they add up
  to a little more);
* ``kernel_s``: in rounds of the same calls with ``rnnfast.kernels.numba._host.launch``
  (every compiled-kernel call of the launchers: projection, recurrence, BPTT, layer
  GEMMs, numba's own dispatch included) wrapped by a timer, the time inside it;
* ``host_s``: that round's total minus ``kernel_s``: the module, the checks, the
  launchers' Python, allocation, autograd and the loss (fwd+bwd). The weights' panel
  packing (``gemm.panels``, a compiled call outside ``launch``) counts as host.
  ``host_s`` and ``kernel_s`` are those of one timed round, the one whose time per call
  (``timed_total_s`` = their sum) is the median of the timed rounds.

The timer adds two ``perf_counter`` calls per launch (< 1 us), charged to the kernels.

* ``floor_s``: the same calls with the layer replaced by one ``torch.autograd.Function``
  that takes the layer's inputs and parameters, keeps them for backward and computes
  nothing (:class:`_NoOpLayer`): what torch's autograd, the module call and, for
  fwd+bwd, the loss and ``torch.autograd.grad`` cost any layer on this machine before
  it does any work. ``host_s - floor_s`` is rnnfast's own part of the host time.

CPU only (a CUDA call's host time is the launch latency: ``bench.gpu``).
"""

import statistics
import time

import torch

from . import common

POINT = (1, 32)  # (B, H)
T = 100
HOST_FLOOR_S = 50e-6  # issue 13: per fwd+bwd of one layer


class _NoOp(torch.autograd.Function):
    """A layer that computes nothing: outputs allocated, not written; gradients
    likewise (their values are never read by the timing)."""

    @staticmethod
    def forward(ctx, x, h0, *weights):
        ctx.save_for_backward(x, h0, *weights)
        return x.new_empty((*x.shape[:2], h0.shape[-1])), torch.empty_like(h0)

    @staticmethod
    def backward(ctx, dy, dh_n):
        return tuple(torch.empty_like(t) for t in ctx.saved_tensors)


class _NoOpLayer(torch.nn.Module):
    """Stands in for a one-layer module in :func:`common.fwd_fn` / ``fwdbwd_fn``: the
    same parameters, the same (output, state) structure, :class:`_NoOp` inside."""

    def __init__(self, m):
        super().__init__()
        self.weights = torch.nn.ParameterList(m.parameters())  # m.parameters() for grads
        # ... and a plain tuple for the call: iterating the ParameterList costs ~12 us,
        # where a layer reads its _flat_weights list in ~0.2 us
        self.__dict__["_call_weights"] = tuple(m.parameters())
        self.lstm = isinstance(m, torch.nn.LSTM)
        self.hidden_size = m.hidden_size

    def forward(self, x):
        h0 = self.__dict__.get("_h0")  # kept, as rnnfast keeps its zero states
        if h0 is None or h0.shape[1] != x.shape[1]:
            h0 = self.__dict__["_h0"] = x.new_zeros((1, x.shape[1], self.hidden_size))
        y, h_n = _NoOp.apply(x, h0, *self._call_weights)
        return y, ((h_n, h_n) if self.lstm else h_n)


def default_cells(quick=False):
    return ["rnn_relu", "lstm"] if quick else ["rnn_relu", "lstm", "gru"]


def _rounds(fn, calls, rounds):
    """Median seconds per call over ``rounds`` rounds of ``calls`` calls."""
    totals = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        totals.append((time.perf_counter() - t) / calls)
    return statistics.median(totals)


def run_case(cell, device, quick=False):
    """The three times of one cell, fwd and fwd+bwd; see the module docstring."""
    from rnnfast.kernels.numba import _host

    B, H = POINT
    dtype = torch.float32
    tm = common.make_torch(cell, H, H, dtype, device, seed=0)
    x, g, gh = common.make_inputs(T, B, H, H, dtype, device, seed=1)
    rm = common.make_rnnfast(cell, H, H, dtype, device, "numba", like=tm)
    calls, rounds = (50, 3) if quick else (200, 7)
    out = {"cell": cell, "T": T, "B": B, "H": H, "I": H, "dtype": "float32",
           "calls": calls, "rounds": rounds, "modes": {}}
    noop = _NoOpLayer(rm)
    for mode in common.MODES:
        make = (lambda m: common.fwd_fn(m, x)) if mode == "fwd" else \
            (lambda m: common.fwdbwd_fn(m, x, g, gh))
        fn, floor_fn = make(rm), make(noop)
        for _ in range(20):  # warm-up: compile-cache loads, allocator, branch predictors
            fn()
            floor_fn()
        total = _rounds(fn, calls, rounds)
        floor = _rounds(floor_fn, calls, rounds)
        inside = [0.0]
        launch = _host.launch

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return launch(*args, **kwargs)
            finally:
                inside[0] += time.perf_counter() - t

        pairs = []
        _host.launch = timed
        try:
            for _ in range(rounds):
                inside[0] = 0.0
                t = time.perf_counter()
                for _ in range(calls):
                    fn()
                wall = (time.perf_counter() - t) / calls
                pairs.append((wall - inside[0] / calls, inside[0] / calls))
        finally:
            _host.launch = launch
        # one round's host and kernel times, that of the median wall time: two
        # separate medians need not add up to any round (a slow spell in one round's
        # host part and another's kernels read 515 + 83 us against rounds of ~414)
        host, kernel = sorted(pairs, key=sum)[len(pairs) // 2]
        out["modes"][mode] = {"total_s": total, "kernel_s": kernel, "host_s": host,
                              "timed_total_s": host + kernel, "floor_s": floor}
    return out


def markdown(results):
    """The host table (us per call)."""
    if not results:
        return ""
    lines = ["### Host overhead per layer call (us; one layer, numba, (B, H) = (1, 32), "
             "T = 100, float32)",
             "",
             "host = the call's time minus the time inside the compiled kernels "
             "(`_host.launch`; both from the timed round of median time, total from "
             "untimed rounds), the module, checks, launchers' Python, allocation, "
             "autograd and, for fwd+bwd, the loss. Issue 13's floor: at most "
             f"{HOST_FLOOR_S * 1e6:.0f} us per fwd+bwd. torch's floor = the same calls "
             "with a layer that computes nothing (one autograd.Function with the "
             "layer's inputs and parameters): what any layer pays here before its work; "
             "rnnfast's own = host - torch's floor.",
             "",
             "| cell | mode | total | in kernels | host | torch's floor | rnnfast's own |",
             "|---|---|--:|--:|--:|--:|--:|"]
    for r in results:
        for mode, m in r["modes"].items():
            floor = m.get("floor_s")
            extra = (f"{floor * 1e6:.0f} | {(m['host_s'] - floor) * 1e6:.0f}"
                     if floor is not None else "- | -")
            lines.append(f"| {r['cell']} | {'fwd' if mode == 'fwd' else 'fwd+bwd'} | "
                         f"{m['total_s'] * 1e6:.0f} | {m['kernel_s'] * 1e6:.0f} | "
                         f"{m['host_s'] * 1e6:.0f} | {extra} |")
    return "\n".join(lines) + "\n"
