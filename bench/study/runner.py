"""Plans and runs the study's training runs: the learning-rate grid first, then each
cell's ladders rung by rung (a rung's results decide whether the next one runs), on a
pool of worker processes. Knows nothing of statistics beyond what the plan needs."""

import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch

from . import stats
from .cells import SeqModel, recurrent_spectrum
from .config import CLIP_NORM, TASK_SPECS
from .tasks import adding_task, make_task
from .telemetry import grad_profile
from .train import stable_seed, train_run

COST = {"lstm": 4.0, "gru": 3.0}  # relative step cost, to start the longest runs first


def init_profiles(cfg, cells, device):
    """Gradient norm vs lag at initialization on the adding loss at ``profile_T``, per
    cell and seed (the same inits as the training runs): {cell: [profile...]}."""
    task = adding_task()
    T = cfg["profile_T"]
    out = {}
    for cell in cells:
        rows = []
        for seed in range(cfg["profile_seeds"]):
            torch.manual_seed(stable_seed("init", cell, seed))
            model = SeqModel(cell, task.input_size, cfg["hidden"], 1, True).to(device)
            x, y = task.batch(T, 32, torch.Generator().manual_seed(
                stable_seed("profile", "adding", T, seed)))
            rows.append({"seed": seed, **recurrent_spectrum(model.rnn),
                         **grad_profile(model, task, x.to(device), y.to(device))})
        out[cell] = rows
    return out


def warm_up(cfg, cells, device):
    """One float32 training step per cell in this process, so that the kernels are
    compiled (and cached on disk) once, before the workers start, rather than by every
    worker at the same time."""
    task = adding_task()
    for cell in cells:
        torch.manual_seed(0)
        model = SeqModel(cell, task.input_size, cfg["hidden"], 1, True).to(device)
        model.rnn.record_grad_norms = True
        x, y = task.batch(5, 2, torch.Generator().manual_seed(0))
        task.loss(model(x.to(device)), y.to(device)).backward()


class Plan:
    """The study's jobs, released as the results they depend on arrive."""

    def __init__(self, cfg, cells, device, deadline):
        self.cfg, self.cells, self.device, self.deadline = cfg, cells, device, deadline
        self.runs, self.queue, self.lr, self.lr_tables = [], [], {}, {}
        self.rung = {}  # (task, cell) -> index of the rung now running, or None when stopped
        adding = cfg["ladders"].get("adding")
        if adding and cfg["grid_T"] in adding["Ts"] and \
                adding["steps"][cfg["grid_T"]] != cfg["grid_steps"]:
            raise ValueError("the adding ladder's rung at grid_T is the grid: its steps must "
                             "equal grid_steps")
        for cell in sorted(cells, key=lambda c: -COST.get(c, 1.0)):
            for lr in cfg["lr_grid"]:
                for clip in (True, False):
                    for seed in range(cfg["seeds"]):
                        self.queue.append(self._job("grid", "adding", cell, cfg["grid_T"], lr,
                                                    clip, seed, cfg["grid_steps"]))

    def _job(self, stage, task, cell, T, lr, clip, seed, steps):
        c = self.cfg
        return dict(stage=stage, task=TASK_SPECS[task], cell=cell, T=T, lr=lr, clip=clip,
                    seed=seed, steps=steps, batch=c["batch"], hidden=c["hidden"],
                    eval_every=c["eval_every"], test_size=c["test_size"],
                    clip_norm=CLIP_NORM, device=self.device, deadline=self.deadline)

    def add(self, run):
        """Record a finished run; queue whatever it unblocks."""
        self.runs.append(run)
        cell = run["cell"]
        if run["stage"] == "grid" and cell not in self.lr:
            grid = [r for r in self.runs if r["stage"] == "grid" and r["cell"] == cell
                    and r["clip"]]
            if len(grid) == len(self.cfg["lr_grid"]) * self.cfg["seeds"]:
                self.lr[cell], self.lr_tables[cell] = stats.choose_lr(grid, self.cfg["lr_grid"])
                for task in self.cfg["ladders"]:
                    self._start_rung(task, cell, 0)
        elif run["stage"] == "ladder":
            self._check_rung(run["task"], cell)

    def _rung_runs(self, task, cell, T):
        return [r for r in self.runs if r["task"] == task and r["cell"] == cell
                and r["T"] == T and r["clip"] and r["lr"] == self.lr[cell]]

    def _start_rung(self, task, cell, i):
        Ts = self.cfg["ladders"][task]["Ts"]
        if i >= len(Ts):
            self.rung[task, cell] = None
            return
        self.rung[task, cell] = i
        T = Ts[i]
        if task == "adding" and T == self.cfg["grid_T"]:
            self._check_rung(task, cell)  # the grid already ran this rung
            return
        steps = self.cfg["ladders"][task]["steps"][T]
        for seed in range(self.cfg["seeds"]):
            self.queue.append(self._job("ladder", task, cell, T, self.lr[cell], True, seed,
                                        steps))

    def _check_rung(self, task, cell):
        i = self.rung.get((task, cell))
        if i is None:
            return
        T = self.cfg["ladders"][task]["Ts"][i]
        rs = self._rung_runs(task, cell, T)
        if len(rs) < self.cfg["seeds"]:
            return
        if any(r["outcome"] == "solved" for r in rs):
            self._start_rung(task, cell, i + 1)
        else:
            self.rung[task, cell] = None  # longer T are not run: see stats.ladder

    def next_job(self):
        """The next job: clipped grid runs first (they decide each cell's ladder lr), then
        the unclipped ones (the clipping contrast), then the released ladder rungs,
        shortest sequences first, so that a time budget cuts the longest runs."""
        if not self.queue:
            return None

        def key(job):
            order = (0 if job["clip"] else 1) if job["stage"] == "grid" else 2
            return (order, make_task(job["task"]).seq_len(job["T"]))

        i = min(range(len(self.queue)), key=lambda k: key(self.queue[k]))
        return self.queue.pop(i)


def _init_worker():
    torch.set_num_threads(1)


def _run(job):
    stage = job.pop("stage")
    try:
        return train_run(**job) | {"stage": stage}
    except Exception as exc:  # a failed run is recorded; the study goes on
        from .tasks import make_task
        from .train import run_id
        name = make_task(job["task"]).name
        return {"id": run_id(name, job["cell"], job["T"], job["lr"], job["clip"], job["seed"]),
                "task": name, "cell": job["cell"], "T": job["T"], "lr": job["lr"],
                "clip": job["clip"], "seed": job["seed"], "steps": job["steps"],
                "stage": stage, "outcome": "error", "error": f"{type(exc).__name__}: {exc}",
                "seconds": 0.0, "cpu_seconds": 0.0}


def _log(t0, run):
    what = run["outcome"] + (f" at step {run['stop_step']}" if run.get("stop_step") else "")
    print(f"[{time.time() - t0:6.0f} s] {run['id']}: {what} ({run['seconds']:.0f} s)",
          file=sys.stderr, flush=True)


def run_plan(plan, workers, t0):
    """Run every job the plan releases on ``workers`` processes (in-process when 1)."""
    if workers <= 1:
        torch.set_num_threads(1)
        while (job := plan.next_job()) is not None:
            run = _run(job)
            _log(t0, run)
            plan.add(run)
        return plan.runs
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            running = set()
            while True:
                while len(running) < workers and (job := plan.next_job()) is not None:
                    running.add(pool.submit(_run, job))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    run = f.result()
                    _log(t0, run)
                    plan.add(run)
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return plan.runs
