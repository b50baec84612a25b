"""One training run: (task, cell, T, learning rate, clipping, seed) -> a result record.

A run stops at the first evaluation whose test loss is below the task's threshold
(outcome 'solved'), at the first non-finite training loss or gradient, or test loss
above ten times max(baseline, its step-0 test loss) ('diverged'), at its step budget ('unsolved'),
or at the study's deadline ('truncated'). It records the test-loss curve, the gradient
norm vs lag (float64, through the kernels' telemetry) at initialization and at its
last step, and the float32 training-time telemetry at every evaluation.

Deterministic given its seed: data and test set depend on (task, T, seed) only, so
every cell, learning rate and clipping setting of one seed sees the same batches.
"""

import math
import time

import torch

from .cells import SeqModel, recurrent_spectrum
from .tasks import is_diverged, is_solved, make_task
from .telemetry import grad_profile, training_ratios

TRAIN_LAGS = (1, 10, 100)
PROFILE_BATCH = 32


def stable_seed(*parts):
    """A 31-bit seed from strings and numbers (FNV-1a; not Python's salted hash)."""
    h = 1469598103934665603
    for byte in repr(parts).encode():
        h = ((h ^ byte) * 1099511628211) % (1 << 64)
    return h % (1 << 31)


def run_id(task, cell, T, lr, clip, seed):
    """The name a report cites a run by, e.g. 'adding-T100-lstm-lr0.001-clip-s2'."""
    return f"{task}-T{T}-{cell}-lr{lr:g}-{'clip' if clip else 'noclip'}-s{seed}"


def train_run(task, cell, T, lr, clip, seed, steps, batch, hidden, eval_every, test_size,
              clip_norm=1.0, device="cpu", deadline=None, progress=None):
    """Train one run with Adam and return its record (a JSON-ready dict).

    ``task`` is a config task spec ("adding" or a copy dict); ``deadline`` a
    ``time.time()`` value after which the run stops ('truncated'); ``progress(n)`` is
    called with the number of steps done since the last call."""
    spec = make_task(task)
    rid = run_id(spec.name, cell, T, lr, clip, seed)
    rec = {"id": rid, "task": spec.name, "cell": cell, "T": T, "lr": lr, "clip": clip,
           "seed": seed, "steps": steps, "batch": batch, "hidden": hidden}
    if deadline is not None and time.time() > deadline:
        if progress:
            progress(steps)
        return rec | {"outcome": "skipped", "seconds": 0.0, "cpu_seconds": 0.0}
    t0, c0 = time.perf_counter(), time.process_time()
    train_gen = torch.Generator().manual_seed(stable_seed("train", spec.name, T, seed))
    xt, yt = spec.batch(T, test_size, torch.Generator().manual_seed(
        stable_seed("test", spec.name, T, seed)))
    xp, yp = spec.batch(T, PROFILE_BATCH, torch.Generator().manual_seed(
        stable_seed("profile", spec.name, T, seed)))
    xt, yt, xp, yp = (v.to(device) for v in (xt, yt, xp, yp))
    torch.manual_seed(stable_seed("init", cell, seed))
    model = SeqModel(cell, spec.input_size, hidden, spec.output_size, spec.last_only).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def evaluate():
        with torch.no_grad():
            return float(spec.loss(model(xt), yt))

    def profile(step):
        return {"step": step, **recurrent_spectrum(model.rnn),
                **grad_profile(model, spec, xp, yp)}

    profiles = [profile(0)]
    curve = [(0, evaluate())]
    telemetry = []
    outcome, stop_step = None, steps
    done = 0
    model.rnn.record_grad_norms = True
    for step in range(1, steps + 1):
        if deadline is not None and time.time() > deadline:
            outcome, stop_step = "truncated", step - 1
            break
        x, y = spec.batch(T, batch, train_gen)
        loss = spec.loss(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(
            model.parameters(), clip_norm if clip else math.inf))
        if not (math.isfinite(loss.item()) and math.isfinite(gnorm)):
            outcome, stop_step = "diverged", step
            curve.append((step, float("nan")))
            break
        opt.step()
        if step % eval_every == 0 or step == steps:
            norms = model.rnn.last_grad_norms  # this step's; evaluate() runs a new forward
            test = evaluate()
            curve.append((step, test))
            telemetry.append({"step": step, "grad_norm": gnorm,
                              **training_ratios(norms[0].cpu(), TRAIN_LAGS)})
            if progress:
                progress(step - done)
                done = step
            if is_solved(spec, test, T):
                outcome, stop_step = "solved", step
                break
            if is_diverged(spec, test, T, initial=curve[0][1]):
                outcome, stop_step = "diverged", step
                break
    if progress:
        progress(steps - done)  # counts the budget, not only the steps run
    outcome = outcome or "unsolved"
    if outcome != "diverged" and stop_step > 0:
        profiles.append(profile(stop_step))
    finite = [v for _, v in curve if math.isfinite(v)]
    return rec | {
        "outcome": outcome, "stop_step": stop_step,
        "solved_step": stop_step if outcome == "solved" else None,
        "final_loss": curve[-1][1], "best_loss": min(finite) if finite else None,
        "baseline": spec.baseline(T), "threshold": spec.solved_below(T),
        "curve": curve, "profiles": profiles, "telemetry": telemetry,
        "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
    }
