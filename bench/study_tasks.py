"""The study's pieces: the five cells, the two long-range tasks, the gradient-lag
instrument and one training run. ``bench.study`` composes them into the report.

Everything here is deterministic given its seed: model init from ``torch.manual_seed``,
data from private ``torch.Generator``s (so every cell and clipping setting of one seed
sees the same training stream and the same test set: paired comparisons).
"""

import copy
import math
import time

import torch
from torch import nn

import rnnfast

# ---------------------------------------------------------------- cells

CELLS = ("tanh", "relu", "irnn", "leaky", "lstm")
CELL_LABELS = {
    "tanh": "tanh-RNN (default init)",
    "relu": "ReLU-RNN (default init)",
    "irnn": "IRNN (ReLU, W_hh = I, b = 0)",
    "leaky": "leaky-ReLU RNN (W_hh = I, b = 0, slope 0.01)",
    "lstm": "LSTM (forget bias 1)",
}
LEAKY_SLOPE = 0.01
IRNN_INPUT_STD = 1e-3  # Le, Jaitly, Hinton 2015: other weights from N(0, small std)


def make_recurrent(cell, input_size, hidden, backend="auto"):
    """One rnnfast recurrent layer, initialised as the study defines the cell (uses the
    global torch RNG: call ``torch.manual_seed`` first for reproducibility)."""
    if cell == "lstm":
        m = rnnfast.LSTM(input_size, hidden, backend=backend)
        with torch.no_grad():  # gate order i, f, g, o: total forget bias b_ih_f + b_hh_f = 1
            m.bias_ih_l0[hidden:2 * hidden].fill_(1.0)
            m.bias_hh_l0[hidden:2 * hidden].zero_()
        return m
    if cell in ("tanh", "relu"):
        return rnnfast.RNN(input_size, hidden, nonlinearity=cell, backend=backend)
    if cell in ("irnn", "leaky"):
        nl = "relu" if cell == "irnn" else "leaky_relu"
        m = rnnfast.RNN(input_size, hidden, nonlinearity=nl, negative_slope=LEAKY_SLOPE,
                        backend=backend)
        with torch.no_grad():
            m.weight_hh_l0.copy_(torch.eye(hidden))
            m.weight_ih_l0.normal_(0.0, IRNN_INPUT_STD)
            m.bias_ih_l0.zero_()
            m.bias_hh_l0.zero_()
        return m
    raise ValueError(f"unknown cell {cell!r}; choose from {CELLS}")


class SeqModel(nn.Module):
    """Recurrent layer + linear readout. ``last_only``: read out h_T (adding problem),
    else every step (copy memory)."""

    def __init__(self, cell, input_size, hidden, n_out, last_only, backend="auto"):
        super().__init__()
        self.cell = cell
        self.rnn = make_recurrent(cell, input_size, hidden, backend)
        self.readout = nn.Linear(hidden, n_out)
        self.last_only = last_only

    def forward(self, x, hx=None):
        out, _ = self.rnn(x, hx)
        return self.readout(out[-1] if self.last_only else out)


def recurrent_spectrum(module):
    """Spectral radius and largest singular value of W_hh. For the LSTM ([4H, H]) the
    radius is the largest over the four square gate blocks (also returned per gate)."""
    w = module.weight_hh_l0.detach().double().cpu()
    sigma = float(torch.linalg.matrix_norm(w, ord=2))
    H = w.shape[1]
    if w.shape[0] == H:
        return {"spectral_radius": float(torch.linalg.eigvals(w).abs().max()),
                "sigma_max": sigma}
    blocks = {g: float(torch.linalg.eigvals(w[k * H:(k + 1) * H]).abs().max())
              for k, g in enumerate("ifgo")}
    return {"spectral_radius": max(blocks.values()), "sigma_max": sigma,
            "spectral_radius_per_gate": blocks}


# ---------------------------------------------------------------- tasks

ADDING_BASELINE = 1.0 / 6.0  # Var(U1 + U2) with U ~ U[0, 1]: predict-the-mean MSE
COPY_DELAY_EXTRA = 20
COPY_N = 10   # symbols to remember
COPY_K = 8    # data alphabet size (symbols 1..8; 0 blank, 9 delimiter)
COPY_CLASSES = 10


def adding_batch(T, B, gen):
    """Adding problem: x [T, B, 2] = (value ~ U[0,1], marker); one marker in the first
    half, one in the second; y [B] = sum of the two marked values."""
    vals = torch.rand(T, B, generator=gen)
    i1 = torch.randint(0, T // 2, (B,), generator=gen)
    i2 = torch.randint(T // 2, T, (B,), generator=gen)
    marks = torch.zeros(T, B)
    cols = torch.arange(B)
    marks[i1, cols] = 1.0
    marks[i2, cols] = 1.0
    y = vals[i1, cols] + vals[i2, cols]
    return torch.stack([vals, marks], dim=2), y


def copy_baseline(T):
    """Cross-entropy of the memoryless strategy: blanks right, the 10 symbols uniform
    over 8: 10 ln 8 / (T + 20) per step."""
    return COPY_N * math.log(COPY_K) / (T + COPY_DELAY_EXTRA)


def copy_batch(T, B, gen):
    """Copy memory (Arjovsky, Shah, Bengio 2016): 10 symbols from 1..8, T - 1 blanks, the
    delimiter 9, 10 blanks; the target is blanks then the 10 symbols. Sequence length
    T + 20. Returns x one-hot [T+20, B, 10] and y [T+20, B] (int64)."""
    L = T + COPY_DELAY_EXTRA
    data = torch.randint(1, COPY_K + 1, (COPY_N, B), generator=gen)
    seq = torch.zeros(L, B, dtype=torch.int64)
    seq[:COPY_N] = data
    seq[COPY_N + T - 1] = COPY_CLASSES - 1
    y = torch.zeros(L, B, dtype=torch.int64)
    y[-COPY_N:] = data
    x = torch.nn.functional.one_hot(seq, COPY_CLASSES).float()
    return x, y


TASKS = {
    "adding": dict(batch=adding_batch, baseline=lambda T: ADDING_BASELINE, input=2, out=1,
                   last_only=True),
    "copy": dict(batch=copy_batch, baseline=copy_baseline, input=COPY_CLASSES,
                 out=COPY_CLASSES, last_only=False),
}


def task_loss(task, pred, y):
    if task == "adding":
        return torch.mean((pred.squeeze(-1) - y) ** 2)
    return nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))


def solved(task, loss, T):
    """Adding: test MSE < 0.01. Copy: test cross-entropy beats the baseline by 90%."""
    if not math.isfinite(loss):
        return False
    return loss < 0.01 if task == "adding" else loss < 0.1 * copy_baseline(T)


# ---------------------------------------------------------------- gradient vs lag

def lag_ratios(norms, lags):
    """norms [T] = ||dL/dh_t|| (t = 0..T-1, h_{T-1} the last state), optionally with
    ||dL/dh_{-1}|| (the initial state) prepended as ``norms0``: see :func:`grad_profile`.
    Returns {lag: ||dL/dh_{T-1-lag}|| / ||dL/dh_{T-1}||} for lags < T."""
    norms = torch.as_tensor(norms, dtype=torch.float64)
    T = norms.shape[0]
    ref = norms[-1]
    return {int(k): float(norms[T - 1 - k] / ref) for k in lags if 0 <= k < T}


def grad_profile(model, x, y):
    """Gradient norm vs lag for the adding loss of ``model`` on (x, y), in float64.

    Uses the kernels' own telemetry (``record_grad_norms`` / ``last_grad_norms``) on a
    float64 copy of the model, plus the gradient of the initial state h_0 for lag T.
    Returns a float64 tensor r [T + 1]: r[k] = ||dL/dh at lag k|| / ||dL/dh_T||, where
    lag k < T is input position T-1-k and lag T is the initial state.
    """
    m = copy.deepcopy(model).double()
    x = x.double()
    T, B = x.shape[:2]
    H = m.rnn.hidden_size
    h0 = torch.zeros(1, B, H, dtype=torch.float64, requires_grad=True)
    hx = (h0, torch.zeros(1, B, H, dtype=torch.float64)) if m.cell == "lstm" else h0
    m.rnn.record_grad_norms = True
    with torch.enable_grad():
        loss = task_loss("adding", m(x, hx), y.double())
        loss.backward()
    norms = m.rnn.last_grad_norms[0]  # positions 0..T-1
    # lag k: position T-1-k for k < T, and h_0 for k = T
    by_lag = torch.cat([norms.flip(0), h0.grad.norm().reshape(1)])
    return by_lag / by_lag[0]


def lag_summary(profile, lags):
    T = profile.shape[0] - 1
    return {(str(k) if k < T else "T"): float(profile[k]) for k in lags if k <= T}


# ---------------------------------------------------------------- one run

def run_seed(*parts):
    """A stable 31-bit seed from a tuple of ints/strings (not Python's salted hash)."""
    h = 1469598103934665603
    for p in str(parts).encode():
        h = ((h ^ p) * 1099511628211) % (1 << 64)
    return h % (1 << 31)


def train_run(task, cell, T, clip, seed, steps, batch, hidden, lr, eval_every,
              test_size, profile_steps=(), profile_T=None, profile_lags=(10, 100),
              clip_norm=1.0, device="cpu", backend="auto", progress=None, deadline=None):
    """Train one (task, cell, T, clip, seed) run with Adam; return a dict of results.

    The training stream and test set depend only on (task, T, seed): every cell and
    clipping setting sees the same data. Model init depends on (cell, seed).
    ``deadline`` (a ``time.time()`` value): stop training there and record the step
    (``truncated_at``): the only thing that can make a run depend on the machine.
    """
    spec = TASKS[task]
    base = spec["baseline"](T)
    if deadline is not None and time.time() > deadline:
        if progress is not None:
            progress(steps)
        return {"task": task, "cell": cell, "T": T, "clip": clip, "seed": seed,
                "skipped": "time budget spent before the run started"}
    cpu0 = time.process_time()
    data_gen = torch.Generator().manual_seed(run_seed("train", task, T, seed))
    test_gen = torch.Generator().manual_seed(run_seed("test", task, T, seed))
    xt, yt = spec["batch"](T, test_size, test_gen)
    torch.manual_seed(run_seed("init", cell, seed))
    model = SeqModel(cell, spec["input"], hidden, spec["out"], spec["last_only"],
                     backend).to(device)
    xt, yt = xt.to(device), yt.to(device)
    profile_T = profile_T or T
    pgen = torch.Generator().manual_seed(run_seed("profile", profile_T, seed))
    px, py = adding_batch(profile_T, 32, pgen)
    px, py = px.to(device), py.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.rnn.record_grad_norms = True  # the training-time opt-in (logged at evals)

    def evaluate():
        with torch.no_grad():
            return float(task_loss(task, model(xt), yt))

    def profile(step):
        prof = grad_profile(model, px, py)
        entry = {"step": step, "T": profile_T, **recurrent_spectrum(model.rnn),
                 "ratio": lag_summary(prof, list(profile_lags) + [profile_T])}
        entry["curve"] = [float(v) for v in prof]
        return entry

    if task != "adding":
        profile_steps = ()  # the lag profile is defined on the adding loss (h_T only)
    curve = [(0, evaluate())]
    profiles = [profile(0)] if 0 in profile_steps else []
    train_lag = []
    solved_step = 0 if solved(task, curve[0][1], T) else None
    diverged = truncated = None
    ticked = 0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if deadline is not None and time.time() > deadline:
            truncated = step - 1
            if curve[-1][0] != step - 1:
                curve.append((step - 1, evaluate()))
            break
        x, y = spec["batch"](T, batch, data_gen)
        x, y = x.to(device), y.to(device)
        loss = task_loss(task, model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(
            model.parameters(), clip_norm if clip else float("inf")))
        if not (math.isfinite(loss.item()) and math.isfinite(gnorm)):
            diverged = step
            curve.append((step, float("nan")))
            break
        opt.step()
        if step % eval_every == 0 or step == steps:
            test = evaluate()
            curve.append((step, test))
            if solved_step is None and solved(task, test, T):
                solved_step = step
            n = model.rnn.last_grad_norms
            if n is not None and task == "adding":
                r = lag_ratios(n[0], profile_lags)
                train_lag.append({"step": step, "grad_norm": gnorm,
                                  **{str(k): v for k, v in r.items()}})
        if step in profile_steps:
            profiles.append(profile(step))
        if progress is not None and step % eval_every == 0:
            progress(step - ticked)
            ticked = step
    if progress is not None:
        progress(steps - ticked)
    last = curve[-1][0]
    if profile_steps and diverged is None and (not profiles or profiles[-1]["step"] != last):
        profiles.append(profile(last))  # the end of a truncated run
    final = curve[-1][1]
    return {
        "task": task, "cell": cell, "T": T, "clip": clip, "seed": seed, "lr": lr,
        "hidden": hidden, "batch": batch, "steps": steps, "baseline": base,
        # the predict-the-mean MSE on this run's own test set (1/6 in expectation)
        "test_baseline": float(torch.mean((yt.double() - 1.0) ** 2)) if task == "adding" else base,
        "final_loss": final, "final_over_baseline": final / base if math.isfinite(final) else None,
        "solved": solved(task, final, T), "ever_solved_step": solved_step,
        "diverged_at": diverged, "truncated_at": truncated, "curve": curve, "profiles": profiles,
        "train_lag": train_lag, "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
    }


# ---------------------------------------------------------------- kernel cross-check

class _TorchTwin(nn.Module):
    """The same model with torch.nn.RNN / torch.nn.LSTM in place of rnnfast's module."""

    def __init__(self, model):
        super().__init__()
        r = model.rnn
        if isinstance(r, rnnfast.LSTM):
            self.rnn = nn.LSTM(r.input_size, r.hidden_size)
        else:
            if r.nonlinearity == "leaky_relu":
                raise ValueError("torch.nn.RNN has no leaky_relu")
            self.rnn = nn.RNN(r.input_size, r.hidden_size, nonlinearity=r.nonlinearity)
        self.rnn.load_state_dict(r.state_dict())
        self.readout = copy.deepcopy(model.readout)
        self.last_only = model.last_only

    def forward(self, x, hx=None):
        out, _ = self.rnn(x, hx)
        return self.readout(out[-1] if self.last_only else out)


def crosscheck(cell, T=50, steps=40, hidden=32, batch=16, lr=1e-3, seed=0):
    """Train the rnnfast model and its torch.nn twin from the same init on the same
    adding batches; return both training-loss curves and their largest relative gap.
    float32 rounding differs, so the curves agree closely, not bitwise."""
    torch.manual_seed(run_seed("init", cell, seed))
    a = SeqModel(cell, 2, hidden, 1, True)
    b = _TorchTwin(a)
    gen = torch.Generator().manual_seed(run_seed("crosscheck", T, seed))
    oa = torch.optim.Adam(a.parameters(), lr=lr)
    ob = torch.optim.Adam(b.parameters(), lr=lr)
    la, lb = [], []
    for _ in range(steps):
        x, y = adding_batch(T, batch, gen)
        for model, opt, log in ((a, oa, la), (b, ob, lb)):
            loss = task_loss("adding", model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.append(loss.item())
    gap = max(abs(p - q) / max(abs(q), 1e-12) for p, q in zip(la, lb))
    return {"cell": cell, "T": T, "steps": steps, "hidden": hidden, "batch": batch,
            "rnnfast": la, "torch_nn": lb, "max_rel_gap": gap}
