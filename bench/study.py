"""The seed question, measured: gradient norms through time and long-range tasks for
five recurrent cells (tanh-RNN, ReLU-RNN, IRNN, leaky-ReLU RNN, LSTM).

    python -m bench.study --quick            # 2 CPU cores, under 10 minutes
    python -m bench.study --out DIR          # the full study, sized for a GPU

Writes DIR/report.md (tables + what they say), DIR/results.json (every number),
DIR/*.png (gradient norm vs lag, learning curves). All training goes through rnnfast's
own modules (backend='auto': numba on CPU), with the gradient telemetry
(``record_grad_norms``) switched on. Every run is reproducible from its seed.
"""

import os

# One BLAS thread per process: the numba kernels call BLAS once per time step on small
# matrices, where OpenBLAS's thread pool only adds synchronisation, and on a loaded
# machine its spinning threads slowed a step 30-60x (measured). Must precede numpy.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import queue as queue_mod  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, wait, FIRST_COMPLETED  # noqa: E402

import torch  # noqa: E402

from . import study_report  # noqa: E402
from .study_tasks import (CELLS, SeqModel, adding_batch, crosscheck, grad_profile,  # noqa: E402
                          lag_summary, recurrent_spectrum, run_seed, train_run)

# Learning rates, fixed before any run (not tuned to the outcome). Adam throughout.
# Identity-initialised ReLU nets are the cells Le, Jaitly, Hinton 2015 train with small
# learning rates (their IRNN needs them to stay stable); the others get Adam's usual 1e-3.
LEARNING_RATES = {"tanh": 1e-3, "relu": 1e-3, "irnn": 1e-4, "leaky": 1e-4, "lstm": 1e-3}
CLIP_NORM = 1.0  # global gradient-norm clipping threshold (Pascanu, Mikolov, Bengio 2013)

CONFIGS = {
    "quick": dict(
        # Sized for 2 idle CPU cores (about 700 CPU-seconds of training, 2 workers). The
        # T = 50 budget comes from a pilot in which the LSTM (lr 1e-3) left the adding
        # plateau after about 2,000 steps and passed MSE 0.01 at 2,900; at T = 150 the
        # same LSTM sat at the baseline for about 5,000 steps and passed 0.01 at 6,400
        # (200 CPU-seconds for one run): out of reach of a 10-minute, 120-run study.
        hidden=64, batch=32, seeds=3, test_size=500, eval_every=100,
        adding_T=(50, 150), adding_steps={50: 4000, 150: 1000},
        copy_T=(10, 20), copy_steps={10: 800, 20: 800},
        profile_T=150, profile_lags=(10, 100), profile_seeds=3,
        checkpoints=4, time_budget_s=480,
        crosscheck=dict(T=50, steps=40, hidden=32, batch=16),
    ),
    "full": dict(
        hidden=128, batch=64, seeds=5, test_size=1000, eval_every=100,
        adding_T=(100, 200, 400, 1000),
        adding_steps={100: 10000, 200: 15000, 400: 20000, 1000: 30000},
        copy_T=(50, 100, 200), copy_steps={50: 10000, 100: 15000, 200: 20000},
        profile_T=1000, profile_lags=(10, 100), profile_seeds=5,
        checkpoints=6, time_budget_s=None,
        crosscheck=dict(T=100, steps=100, hidden=64, batch=32),
    ),
    # seconds: for tests of the pipeline only (``--preset smoke``); its numbers mean nothing
    "smoke": dict(
        hidden=8, batch=8, seeds=2, test_size=32, eval_every=5,
        adding_T=(12,), adding_steps={12: 10}, copy_T=(4,), copy_steps={4: 10},
        profile_T=12, profile_lags=(10, 100), profile_seeds=2,
        checkpoints=2, time_budget_s=None,
        crosscheck=dict(T=10, steps=3, hidden=8, batch=4),
    ),
}

# ---------------------------------------------------------------- worker side

_PROGRESS = None


def _init_worker(progress_queue, threads):
    global _PROGRESS
    _PROGRESS = progress_queue
    torch.set_num_threads(threads)


def _tick(n):
    if _PROGRESS is not None:
        _PROGRESS.put(n)


def _run_job(job):
    """One training run (in a worker process or in-process)."""
    job = dict(job)
    job.setdefault("progress", _tick)
    try:
        return train_run(**job)
    except Exception as exc:  # a failed run is a result too; the study goes on
        return {k: job[k] for k in ("task", "cell", "T", "clip", "seed")} | {
            "error": f"{type(exc).__name__}: {exc}"}


# ---------------------------------------------------------------- driver

def checkpoint_steps(steps, n):
    return tuple(sorted({0, steps} | {round(steps * k / (n - 1)) for k in range(n)}))


def make_jobs(cfg, device, deadline):
    jobs = []
    for task, Ts, steps_of in (("adding", cfg["adding_T"], cfg["adding_steps"]),
                               ("copy", cfg["copy_T"], cfg["copy_steps"])):
        for T in Ts:
            steps = steps_of[T]
            for cell in CELLS:
                for clip in (True, False):
                    for seed in range(cfg["seeds"]):
                        jobs.append(dict(
                            task=task, cell=cell, T=T, clip=clip, seed=seed, steps=steps,
                            batch=cfg["batch"], hidden=cfg["hidden"],
                            lr=LEARNING_RATES[cell], eval_every=cfg["eval_every"],
                            test_size=cfg["test_size"],
                            profile_steps=checkpoint_steps(steps, cfg["checkpoints"])
                            if task == "adding" else (),
                            profile_lags=cfg["profile_lags"], clip_norm=CLIP_NORM,
                            device=device, deadline=deadline))
    # Seed by seed (so a time budget, if it bites, costs later seeds rather than whole
    # cells), longest first within a seed (LSTM and long T dominate) so that the workers
    # finish together.
    seq_len = lambda j: j["T"] + (20 if j["task"] == "copy" else 0)  # noqa: E731
    jobs.sort(key=lambda j: (j["seed"],
                             -j["steps"] * seq_len(j) * (6 if j["cell"] == "lstm" else 1)))
    return jobs


def init_profiles(cfg, device):
    """Gradient norm vs lag at initialization, per cell and seed, at T = profile_T, in
    float64 through the kernels' telemetry. Also the spectrum of W_hh."""
    out = {}
    T = cfg["profile_T"]
    for cell in CELLS:
        rows = []
        for seed in range(cfg["profile_seeds"]):
            torch.manual_seed(run_seed("init", cell, seed))  # the same init as the runs
            model = SeqModel(cell, 2, cfg["hidden"], 1, True).to(device)
            x, y = adding_batch(T, 32, torch.Generator().manual_seed(run_seed("profile", T, seed)))
            prof = grad_profile(model, x.to(device), y.to(device))
            rows.append({"seed": seed, **recurrent_spectrum(model.rnn),
                         "ratio": lag_summary(prof, list(cfg["profile_lags"]) + [T]),
                         "curve": [float(v) for v in prof]})
        out[cell] = rows
    return out


def run_all(jobs, workers, threads, total_steps):
    from tqdm import tqdm
    results = []
    bar = tqdm(total=total_steps, unit="step", desc=f"training {len(jobs)} runs",
               dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    if workers <= 1:
        torch.set_num_threads(threads)
        for job in jobs:
            results.append(_run_job(dict(job, progress=bar.update)))
            bar.set_postfix_str(f"{len(results)}/{len(jobs)} runs done")
        bar.close()
        return results
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(q, threads)) as pool:
        pending = {pool.submit(_run_job, job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in done:
                results.append(f.result())
                bar.set_postfix_str(f"{len(results)}/{len(jobs)} runs done")
            try:
                while True:
                    bar.update(q.get_nowait())
            except queue_mod.Empty:
                pass
    bar.close()
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2-CPU-core version, under 10 minutes (adding T in {50,150}, H=64)")
    ap.add_argument("--out", default=None, help="report folder (default out/study)")
    ap.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    ap.add_argument("--workers", type=int, default=None,
                    help="parallel training processes (default: min(2, CPU cores) on CPU, "
                    "1 on CUDA)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--no-time-budget", action="store_true",
                    help="never stop runs early (--quick otherwise stops training at "
                    "its time budget so the whole study stays under 10 minutes)")
    ap.add_argument("--preset", choices=sorted(CONFIGS), default=None,
                    help=argparse.SUPPRESS)  # 'smoke': a seconds-long run for the tests
    ap.add_argument("--report-only", metavar="DIR", default=None,
                    help="rewrite DIR's report.md and plots from its results.json, no training")
    args = ap.parse_args(argv)
    if args.report_only:
        return rerender(args.report_only)

    mode = args.preset or ("quick" if args.quick else "full")
    cfg = dict(CONFIGS[mode])
    if args.seeds:
        cfg["seeds"] = cfg["profile_seeds"] = args.seeds
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out or "out/study"
    os.makedirs(out, exist_ok=True)
    cores = os.cpu_count() or 1
    workers = args.workers or (1 if device == "cuda" else max(1, min(2, cores)))
    threads = max(1, min(cores, 2) // workers)

    t_start = time.time()
    budget = None if args.no_time_budget else cfg["time_budget_s"]
    deadline = t_start + budget if budget else None
    print(f"rnnfast study ({mode}): device {device}, {workers} worker(s), "
          f"output {os.path.abspath(out)}", file=sys.stderr)
    if mode == "full" and device == "cpu":
        print("note: the full study is sized for a GPU (T up to 1000, 5 seeds, 10^4 steps "
              "per run); on a CPU it takes days. --quick is the CPU version.", file=sys.stderr)

    torch.set_num_threads(threads)
    t0 = time.time()
    profiles = init_profiles(cfg, device)
    t_profiles = time.time() - t0
    # rnnfast vs torch.nn on the same init and data: the study's modules train as torch's do
    cross = [crosscheck(c, **cfg["crosscheck"]) for c in ("tanh", "relu", "irnn", "lstm")]

    jobs = make_jobs(cfg, device, deadline)
    total_steps = sum(j["steps"] for j in jobs)
    t0 = time.time()
    runs = run_all(jobs, workers, threads, total_steps)
    t_train = time.time() - t0

    meta = {
        "mode": mode, "config": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                                 for k, v in cfg.items()},
        "learning_rates": LEARNING_RATES, "optimizer": "Adam", "clip_norm": CLIP_NORM,
        "device": device, "workers": workers, "threads_per_worker": threads,
        "cpu_count": cores, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "command": " ".join(["python -m bench.study"] +
                                                             (argv if argv is not None else sys.argv[1:])),
        "seconds_profiles": t_profiles, "seconds_training": t_train,
        "git_commit": _git_commit(),
    }
    summary = study_report.summarize(runs, profiles, cfg)
    meta["seconds_total"] = time.time() - t_start
    summary["crosscheck"] = cross
    study_report.write_report(out, meta, cfg, profiles, runs, summary)
    print(f"wrote {os.path.join(out, 'report.md')} in {meta['seconds_total']:.0f} s",
          file=sys.stderr)
    return 0


def _git_commit():
    """The code version the numbers came from (float32 rounding, and so every training
    trajectory, depends on it), with '+dirty' for uncommitted changes; None outside git."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout
        return (sha + ("+dirty" if dirty.strip() else "")) or None
    except Exception:
        return None


def rerender(out):
    """Rebuild report.md, the plots and results.json's summary from results.json."""
    import json
    with open(os.path.join(out, "results.json")) as f:
        data = json.load(f)
    meta, cfg = data["meta"], dict(data["meta"]["config"])
    for key in ("adding_steps", "copy_steps"):
        cfg[key] = {int(k): v for k, v in cfg[key].items()}
    summary = study_report.summarize(data["runs"], data["init_profiles"], cfg)
    summary["crosscheck"] = data["summary"].get("crosscheck")
    study_report.write_report(out, meta, cfg, data["init_profiles"], data["runs"], summary)
    print(f"rewrote {os.path.join(out, 'report.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
