"""The study's two long-range tasks, their baselines and how a run is classified.

Adding problem (Hochreiter & Schmidhuber 1997; the setting of Le et al. 2015 and
Arjovsky et al. 2016): x_t = (u_t ~ U[0, 1], marker), one marker in each half of the
sequence; the target is the sum of the two marked values, read from h_T. Predicting the
mean (1) scores MSE Var(U1 + U2) = 1/6: the baseline. Solved: test MSE < 0.01.

Copy memory (Arjovsky, Shah & Bengio 2016) with fewer symbols: ``n_symbols`` symbols from
an alphabet of ``alphabet``, then T - 1 blanks, a delimiter and ``n_symbols`` blanks; the
target is blanks and then the symbols. Sequence length T + 2 n_symbols. The memoryless
strategy (blanks right, symbols uniform) scores cross-entropy n ln(K) / (T + 2n) per
step: the baseline. Solved: test cross-entropy below 10% of the baseline (every symbol
recalled with high confidence).

A run *diverges* when its loss turns non-finite (any step) or its test loss exceeds ten
times the larger of the task's baseline and the run's own test loss at step 0: a run
that starts above 10x the baseline (an untrained copy model always does; an adding
model whose readout starts far from 1 can) is diverged only once it gets ten times
worse than where it started.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

ADDING_BASELINE = 1.0 / 6.0
ADDING_SOLVED_MSE = 0.01
COPY_SOLVED_FRACTION = 0.1
DIVERGENCE_FACTOR = 10.0


def adding_batch(T, B, gen):
    """x [T, B, 2] float32 = (value, marker), y [B] = sum of the two marked values.

    Raises ValueError for T < 2 (each half needs a marker)."""
    if T < 2:
        raise ValueError(f"the adding problem needs T >= 2, got {T}")
    vals = torch.rand(T, B, generator=gen)
    i1 = torch.randint(0, T // 2, (B,), generator=gen)
    i2 = torch.randint(T // 2, T, (B,), generator=gen)
    marks = torch.zeros(T, B)
    cols = torch.arange(B)
    marks[i1, cols] = 1.0
    marks[i2, cols] = 1.0
    return torch.stack([vals, marks], dim=2), vals[i1, cols] + vals[i2, cols]


def copy_batch(T, B, gen, n_symbols, alphabet):
    """x one-hot [T + 2n, B, alphabet + 2] float32, y [T + 2n, B] int64.

    Class 0 is the blank, 1..alphabet the data symbols, alphabet + 1 the delimiter."""
    if T < 1:
        raise ValueError(f"the copy task needs a delay T >= 1, got {T}")
    n = n_symbols
    data = torch.randint(1, alphabet + 1, (n, B), generator=gen)
    seq = torch.zeros(T + 2 * n, B, dtype=torch.int64)
    seq[:n] = data
    seq[n + T - 1] = alphabet + 1
    y = torch.zeros(T + 2 * n, B, dtype=torch.int64)
    y[-n:] = data
    return nn.functional.one_hot(seq, alphabet + 2).float(), y


@dataclass(frozen=True)
class Task:
    """One task: data, loss, baseline and the solved / diverged thresholds."""
    name: str
    title: str
    input_size: int
    output_size: int
    last_only: bool  # read out h_T only (adding) or every h_t (copy)
    batch: Callable  # (T, B, generator) -> (x, y)
    baseline: Callable  # T -> loss of the best input-free strategy
    solved_below: Callable  # T -> threshold on the test loss
    metric: str
    extra_steps: int = 0  # sequence length = T + extra_steps

    def loss(self, pred, y):
        if self.last_only:
            return torch.mean((pred.squeeze(-1) - y) ** 2)
        return nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))

    def seq_len(self, T):
        return T + self.extra_steps


def adding_task():
    return Task(name="adding", title="adding problem", input_size=2, output_size=1,
                last_only=True, batch=adding_batch, baseline=lambda T: ADDING_BASELINE,
                solved_below=lambda T: ADDING_SOLVED_MSE, metric="MSE")


def copy_task(n_symbols, alphabet):
    def baseline(T):
        return n_symbols * math.log(alphabet) / (T + 2 * n_symbols)

    def batch(T, B, gen):
        return copy_batch(T, B, gen, n_symbols, alphabet)

    return Task(name="copy", title=f"copy memory ({n_symbols} symbols of {alphabet})",
                input_size=alphabet + 2, output_size=alphabet + 2, last_only=False,
                batch=batch, baseline=baseline,
                solved_below=lambda T: COPY_SOLVED_FRACTION * baseline(T),
                metric="cross-entropy", extra_steps=2 * n_symbols)


def make_task(spec):
    """A Task from a config entry: "adding" or {"name": "copy", "n_symbols", "alphabet"}."""
    if spec == "adding":
        return adding_task()
    if isinstance(spec, dict) and spec.get("name") == "copy":
        return copy_task(spec["n_symbols"], spec["alphabet"])
    raise ValueError(f"unknown task {spec!r}")


def is_solved(task, loss, T):
    """True when the test loss is finite and below the task's threshold at T."""
    return math.isfinite(loss) and loss < task.solved_below(T)


def is_diverged(task, loss, T, initial=0.0):
    """True when the loss is NaN/inf or above ten times max(baseline, ``initial``), where
    ``initial`` is the run's test loss at step 0."""
    ref = max(task.baseline(T), initial if math.isfinite(initial) else 0.0)
    return not math.isfinite(loss) or loss > DIVERGENCE_FACTOR * ref
