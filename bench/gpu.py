"""The GPU validation in one call: the CUDA tests, then rnnfast against torch.nn on cuDNN.

    python -m bench.gpu [--out DIR] [--quick] [--jobs N] [--dtypes float32,bfloat16]
                        [--deadline S] [--skip-tests] [--skip-bench] [--tests PATH ...]
    python -m bench.gpu --dry-run [--out DIR]       # CPU only, < 1 min: see below

Set-up on a GPU machine with no package registry (torch with CUDA, triton, numpy and
tqdm already installed; numba may be older than setup.py asks, or absent: this script
and the Triton path never import it), from a checkout of the repository::

    pip install --no-deps --no-build-isolation -e .
    python -m bench.gpu --out "$OUT"

(the tests' own numba comparisons need numba: ``tests/test_triton.py`` checks the Triton
kernels against the numba ones.)

In one call, within ``--deadline`` seconds (default 450: 7.5 minutes, Triton compiles
included):

1. the CUDA tests (``--tests``, default ``tests/test_triton.py`` and
   ``tests/test_triton_gru.py``: every cell and dtype against the numba kernels or
   autograd on the reference recurrence, and against torch.nn on cuDNN, TF32 off, the
   persistent launch against one step per launch), sharded over ``--jobs`` pytest
   processes so Triton's compiles run in parallel; shards still running at half the
   deadline are stopped and reported;
2. meanwhile, the Triton binaries the benchmark needs are compiled into Triton's disk
   cache by a pool of ``--jobs`` processes;
3. the benchmark: rnnfast (backend='triton') against torch.nn on cuDNN with the same
   weights and inputs (the report's model pairs and interleaved timer,
   :mod:`bench.report.common`), forward and forward+backward, ReLU-RNN, LSTM and GRU,
   T in {100, 1000}, B in {1, 8, 64, 256}, H in {64, 128, 256, 512, 768}, per dtype
   (240 points with the default dtypes). Each point also records rnnfast's largest
   relative error against cuDNN over the output, h_n and every gradient. The headline
   point runs first (LSTM B=16 T=1024 H=768 bfloat16; cuDNN in bfloat16 and float16),
   then the grid coarse to fine (:func:`grid`): the ``--quick`` widths at T=100, then at
   T=1000, then the other widths; within each tier B ascending, then H, with the dtypes
   and the three cells interleaved innermost, so a run cut at the deadline has the same
   spread of points for every cell. Points that would start past the deadline are listed
   as skipped.

Writes under ``--out`` (default ``$OUT``, else ``out/gpu``): ``env.json``, ``tests/``
(junit XML and log per shard, ``summary.json``), ``bench.json``, ``bench.csv``,
``summary.txt``; prints the summary last. Exit status 1 if a test failed or errored.

``--dry-run`` runs every step of the same script on a CPU-only machine: Triton's
interpreter (``TRITON_INTERPRET=1``) on CPU tensors, torch.nn on the CPU as the peer, one
test per test file (its first module-vs-torch.nn test) over two shards, and a tiny grid
(T=3, B=17: two batch tiles, H=16, float32; one point per cell). CI runs it
(``tests/test_bench_gpu.py``) so the script cannot rot while no GPU is here; its timings
mean nothing.
"""

import argparse
import copy
import csv
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

CELLS = ("rnn_relu", "lstm", "gru")
TS = (100, 1000)
BS = (1, 8, 64, 256)
HS = (64, 128, 256, 512, 768)
QUICK_HS = (64, 256, 768)  # --quick's widths: the grid's first tiers
TESTS = ("tests/test_triton.py", "tests/test_triton_gru.py")
HEADLINE = dict(cell="lstm", T=1024, B=16, H=768, dtype="bfloat16",
                peer_dtypes=("bfloat16", "float16"))
# cuDNN fp16 and FlashRNN's fused CUDA kernel at the headline point, H100 SXM (ms):
# forward, forward+backward (from the project's issue; not measured here).
HEADLINE_PUBLISHED = {"cudnn_fp16_h100sxm": (2.01, 5.19), "flashrnn_h100sxm": (4.87, 13.61)}
TIMING = dict(min_reps=3, max_reps=20, budget_s=0.25, settle_s=0.0)

# --dry-run: the same steps, sized for a CPU and Triton's interpreter.
DRY = dict(Ts=(3,), Bs=(17,), Hs=(16,), dtypes=("float32",), jobs=2, warm_jobs=1, tests=2,
           deadline=120.0, headline=dict(cell="lstm", T=3, B=2, H=16, dtype="float32",
                                        peer_dtypes=("float32", "float64")),
           timing=dict(min_reps=1, max_reps=1, budget_s=0.0, settle_s=0.0))


def _out_dir(arg):
    return arg or os.environ.get("OUT") or os.path.join("out", "gpu")


# ---------------------------------------------------------------- tests

def _test_env(dry_run):
    """The shards' environment: compiled Triton on the GPU, the interpreter when dry."""
    env = dict(os.environ)
    if not dry_run:
        env.pop("TRITON_INTERPRET", None)
    return env


def collect(paths, dry_run):
    """Test ids under ``paths`` (pytest --collect-only)."""
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", *paths],
                         capture_output=True, text=True, env=_test_env(dry_run))
    return [line.strip() for line in res.stdout.splitlines() if "::" in line]


def run_tests(out, jobs, ids, end, dry_run):
    """Run test ``ids`` sharded over ``jobs`` pytest processes; a shard still running
    at ``end`` (a perf_counter time) is stopped. Returns a summary dict (counts, failed
    ids, seconds)."""
    tdir = os.path.join(out, "tests")
    os.makedirs(tdir, exist_ok=True)
    if not ids:
        return dict(tests=0, failures=0, errors=1, skipped=0, failed=["(collection failed)"],
                    seconds=0.0)
    shards = [ids[i::jobs] for i in range(min(jobs, len(ids)))]
    t0 = time.perf_counter()
    procs = []
    for i, shard in enumerate(shards):
        log = open(os.path.join(tdir, f"shard{i}.log"), "w")
        xml = os.path.join(tdir, f"shard{i}.xml")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
             f"--junitxml={xml}", *shard], stdout=log, stderr=subprocess.STDOUT,
            env=_test_env(dry_run)), log, xml))
    summary = dict(tests=0, failures=0, errors=0, skipped=0, failed=[])
    for proc, log, xml in procs:
        try:
            proc.wait(timeout=max(1.0, end - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            summary["errors"] += 1
            summary["failed"].append(f"(shard stopped at the tests' time budget, see "
                                     f"{log.name})")
        log.close()
        if not os.path.exists(xml):
            if proc.returncode != -9:
                summary["errors"] += 1
                summary["failed"].append(f"(shard crashed, see {log.name})")
            continue
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            for key in ("tests", "failures", "errors", "skipped"):
                summary[key] += int(suite.get(key, 0))
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    summary["failed"].append(f"{case.get('classname')}::{case.get('name')}")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


# ---------------------------------------------------------------- benchmark

def _device(dry_run):
    import torch
    return torch.device("cpu" if dry_run else "cuda")


def _pair(cell, H, dtype, device):
    """(rnnfast module on backend='triton', torch.nn twin) with the same weights."""
    from bench.report import common
    twin = common.make_torch(cell, H, H, dtype, device, seed=0)
    return common.make_rnnfast(cell, H, H, dtype, device, "triton", like=twin), twin


def _flat(out):
    """A module's output ``(y, h_n)`` / ``(y, (h_n, c_n))``, or a tuple of gradients, as
    one flat list of tensors."""
    return [t for o in out for t in (o if isinstance(o, tuple) else (o,))]


def _max_rel_err(got, ref):
    from bench.report import common
    return max(common.rel_err(a, b) for a, b in zip(_flat(got), _flat(ref)))


def bench_point(cell, T, B, H, dtype, device, timing, peer_dtypes=None):
    """Time rnnfast and torch.nn (cuDNN on CUDA) at one point, forward and
    forward+backward, each mode one interleaved group (rnnfast and torch.nn in ``dtype``
    and in each of ``peer_dtypes``); returns a JSON-ready row (times in ms, speedup =
    torch.nn time / rnnfast time in the same dtype, rnnfast's largest relative error
    against torch.nn, the Triton configurations launched)."""
    from bench.report import common
    from rnnfast.kernels import triton as tr
    dt = common.DTYPES[dtype]
    ours, twin = _pair(cell, H, dt, device)
    x, g, gh = common.make_inputs(T, B, H, H, dt, device, seed=1)
    row = dict(cell=cell, T=T, B=B, H=H, dtype=dtype)
    fwd = common.fwd_fn(ours, x)
    y_ours = fwd()
    row["fwd_launch"] = _launch(tr.last_launch)
    fwdbwd = common.fwdbwd_fn(ours, x, g, gh)
    g_ours = fwdbwd()
    row["bwd_launch"] = _launch(tr.last_launch)
    row["max_rel_err"] = max(_max_rel_err(y_ours, common.fwd_fn(twin, x)()),
                             _max_rel_err(g_ours, common.fwdbwd_fn(twin, x, g, gh)()))
    peers = {pd: (twin, x, g, gh) if pd == dtype else
             (copy.deepcopy(twin).to(common.DTYPES[pd]),
              *(t.to(common.DTYPES[pd]) for t in (x, g, gh)))
             for pd in peer_dtypes or (dtype,)}
    for mode, mine in (("fwd", fwd), ("fwdbwd", fwdbwd)):
        fns = {"rnnfast": mine}
        for pd, (m, px, pg, pgh) in peers.items():
            fns[pd] = common.fwd_fn(m, px) if mode == "fwd" else common.fwdbwd_fn(m, px, pg, pgh)
        t = common.time_interleaved(fns, device, **timing)
        row[f"ours_{mode}_ms"] = t.pop("rnnfast")["median_s"] * 1e3
        for pd, v in t.items():
            row[f"torch_{mode}_ms" + ("" if pd == dtype else f"_{pd}")] = v["median_s"] * 1e3
    row["speedup_fwd"] = row["torch_fwd_ms"] / row["ours_fwd_ms"]
    row["speedup_fwdbwd"] = row["torch_fwdbwd_ms"] / row["ours_fwdbwd_ms"]
    return row


def _launch(last):
    cfg = last.get("config")
    return dict(kernel=last.get("kernel"), config=cfg.label() if cfg else None,
                grid=list(last.get("grid", ())), persistent=last.get("persistent"))


def _warm_worker(items, dry_run):
    """Compile (into Triton's disk cache) every binary the benchmark will use. Runs in a
    spawned process, which inherits the parent's environment (TRITON_INTERPRET)."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    from bench.report import common
    device = _device(dry_run)
    for cell, H, dtype in items:
        ours, _ = _pair(cell, H, common.DTYPES[dtype], device)
        x = torch.randn(2, 1, H, device=device, dtype=common.DTYPES[dtype],
                        requires_grad=True)
        y, _ = ours(x)
        y.sum().backward()
    common.sync(device)
    return len(items)


def start_warm(points, jobs, dry_run):
    """Start compiling the binaries of ``points`` in ``jobs`` spawned processes; returns
    (pool, async result)."""
    keys = list(dict.fromkeys((p["cell"], p["H"], p["dtype"]) for p in points))  # run order
    shards = [keys[i::jobs] for i in range(min(jobs, len(keys)))]
    pool = mp.get_context("spawn").Pool(len(shards))
    return pool, pool.starmap_async(_warm_worker, [(s, dry_run) for s in shards])


def grid(a):
    """The benchmark's points in the order they run: the headline first, then coarse to
    fine, so that a run cut at the deadline still holds a spread of points for every
    cell and dtype. Tiers: the ``--quick`` widths (:data:`QUICK_HS`) at the shortest T,
    the same widths at the longer T, then the other widths in the same T order. Within
    a tier: B ascending (the latency-bound small batches, the fused recurrence's reason
    to exist, and the cheapest points), then H ascending, then dtype, then cell: the
    three cells at one (T, B, H, dtype) run back to back, so a cut removes the same
    (largest) points from every cell."""
    if a.dry_run:
        Ts, Bs, Hs, dtypes, head = DRY["Ts"], DRY["Bs"], DRY["Hs"], DRY["dtypes"], DRY["headline"]
    else:
        Ts = (100,) if a.quick else TS
        Hs = QUICK_HS if a.quick else HS
        Bs, dtypes, head = BS, a.dtypes.split(","), HEADLINE
    points = [dict(cell=c, T=T, B=B, H=H, dtype=d) for T in Ts for B in Bs for H in Hs
              for d in dtypes for c in CELLS]
    points.sort(key=lambda p: (p["H"] not in QUICK_HS, Ts.index(p["T"])))  # stable
    return [dict(head, headline=True)] + points


def dry_run_ids(ids, n):
    """The dry run's tests: the first module-vs-torch.nn test of each test file (the
    first ``n`` ids if none has one), at most ``n``."""
    first = {}
    for i in ids:
        if "module_vs_torch" in i:
            first.setdefault(i.split("::")[0], i)
    return (list(first.values()) or ids)[:n]


def run_bench(points, device, timing, deadline):
    """Measure ``points`` in order until ``deadline`` (a perf_counter time) would be
    passed; returns the rows (failed points carry ``error``, late ones ``skipped``)."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows, longest = [], 0.0
    for p in points:
        key = {k: p[k] for k in ("cell", "T", "B", "H", "dtype")}
        if time.perf_counter() + longest > deadline:
            rows.append(dict(key, headline=p.get("headline", False), skipped="deadline"))
            continue
        t0 = time.perf_counter()
        try:
            row = bench_point(**key, device=device, timing=timing,
                              peer_dtypes=p.get("peer_dtypes"))
        except Exception as e:  # a failing point is reported, not fatal
            row = dict(key, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        row["headline"] = p.get("headline", False)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        longest = max(longest, row["seconds"])
        rows.append(row)
    return rows


def write_bench(out, rows, warm):
    # Whether anything on the Triton path imported numba (it should not on CUDA; on CPU
    # tensors the layer GEMMs are numba's).
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(dict(rows=rows, warm=warm, headline_published=HEADLINE_PUBLISHED,
                       numba_imported="numba" in sys.modules), f, indent=1)
    flat = [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()}
            for r in rows]
    keys = sorted({k for r in flat for k in r})
    with open(os.path.join(out, "bench.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(flat)


# ---------------------------------------------------------------- summary

def _geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def summary_table(rows, tests, env):
    peer = "cuDNN" if env.get("gpu") else "torch.nn (CPU)"
    lines = [f"device: {env.get('gpu') or env.get('device')}  torch {env.get('torch')}  "
             f"triton {env.get('triton')}" + ("  DRY RUN (interpreter)" if env.get("dry_run")
                                              else "")]
    if tests is not None:
        lines.append(f"tests: {tests['tests']} run, {tests['failures']} failed, "
                     f"{tests['errors']} errors, {tests['skipped']} skipped "
                     f"({tests['seconds']} s)")
        lines += [f"  FAILED {name}" for name in tests["failed"][:10]]
    ok = [r for r in rows if "speedup_fwd" in r and not r["headline"]]
    if rows:
        lines += ["", f"{'cell':8} {'dtype':9} {'pass':7} {'points':>6} "
                      f"{'geomean x ' + peer:>16} {'faster':>7} {'min x':>6} {'max x':>6} "
                      f"{'max rel err':>11}"]
        for cell in CELLS:
            for dtype in sorted({r["dtype"] for r in ok}):
                sel = [r for r in ok if r["cell"] == cell and r["dtype"] == dtype]
                for key, name in (("speedup_fwd", "fwd"), ("speedup_fwdbwd", "fwd+bwd")):
                    sp = [r[key] for r in sel]
                    if sp:
                        lines.append(f"{cell:8} {dtype:9} {name:7} {len(sp):>6} "
                                     f"{_geomean(sp):>16.2f} {sum(s > 1 for s in sp):>7} "
                                     f"{min(sp):>6.2f} {max(sp):>6.2f} "
                                     f"{max(r['max_rel_err'] for r in sel):>11.1e}")
    for r in rows:
        if r["headline"] and "speedup_fwd" in r:
            extra = [k for k in r if k.startswith("torch_fwd_ms_")]
            lines += ["", f"headline {r['cell']} B={r['B']} T={r['T']} H={r['H']} {r['dtype']} "
                          f"({r['fwd_launch']['config']}, "
                          f"{'persistent' if r['fwd_launch']['persistent'] else 'per-step'}):",
                      f"  rnnfast  fwd {r['ours_fwd_ms']:.3f} ms  fwd+bwd "
                      f"{r['ours_fwdbwd_ms']:.3f} ms",
                      f"  {peer} {r['dtype']} fwd {r['torch_fwd_ms']:.3f} ms  fwd+bwd "
                      f"{r['torch_fwdbwd_ms']:.3f} ms"
                      + "".join(f"   {k[len('torch_fwd_ms_'):]} fwd {r[k]:.3f} ms  fwd+bwd "
                                f"{r['torch_fwdbwd_ms_' + k[len('torch_fwd_ms_'):]]:.3f} ms"
                                for k in extra)]
            if not env.get("dry_run"):
                lines.append("  published (H100 SXM): cuDNN fp16 2.01 / 5.19 ms, "
                             "FlashRNN 4.87 / 13.61 ms")
    bad = [r for r in rows if "error" in r]
    late = [r for r in rows if "skipped" in r]
    if bad:
        lines.append(f"{len(bad)} benchmark points failed, first: {bad[0]['error'][:200]}")
    if late:
        lines.append(f"{len(late)} benchmark points skipped at the deadline")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.gpu",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="output folder (default $OUT, else out/gpu)")
    ap.add_argument("--quick", action="store_true", help="T=100 and H in {64, 256, 768} only")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                    help="pytest shards, and compile processes")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds for the whole run; the tests end by half of it "
                         f"(default 450; {DRY['deadline']:.0f} with --dry-run)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--tests", nargs="*", default=None,
                    help=f"test paths or ids (default: {' '.join(TESTS)})")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU only: Triton's interpreter, a tiny grid, one test per file")
    return ap.parse_args(argv)


def main(argv=None):
    t_start = time.perf_counter()
    a = parse_args(argv)
    if a.dry_run:
        # Triton reads this when its kernels are defined: before rnnfast's import.
        os.environ["TRITON_INTERPRET"] = "1"
        a.jobs = DRY["jobs"]
    a.deadline = a.deadline or (DRY["deadline"] if a.dry_run else 450.0)
    import torch
    import triton

    from bench.report import common
    if not a.dry_run and not torch.cuda.is_available():
        print("bench.gpu needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        return 2
    deadline = t_start + a.deadline
    out = _out_dir(a.out)
    os.makedirs(out, exist_ok=True)
    device = _device(a.dry_run)
    env = dict(common.machine_info(device), triton=triton.__version__, dry_run=a.dry_run)
    with open(os.path.join(out, "env.json"), "w") as f:
        json.dump(env, f, indent=1)

    phases = {}
    points = [] if a.skip_bench else grid(a)
    pool = warm = None
    if points:
        pool, warm = start_warm(points, DRY["warm_jobs"] if a.dry_run else a.jobs,
                                a.dry_run)
    tests = None
    if not a.skip_tests:
        paths = a.tests or list(TESTS)
        t0 = time.perf_counter()
        ids = collect(paths, a.dry_run)
        if a.dry_run:
            ids = dry_run_ids(ids, DRY["tests"])
        phases["collect"] = time.perf_counter() - t0
        tests = run_tests(out, a.jobs, ids, t_start + a.deadline / 2, a.dry_run)
        phases["tests"] = tests["seconds"]
        with open(os.path.join(out, "tests", "summary.json"), "w") as f:
            json.dump(tests, f, indent=1)
        print(f"tests: {tests['tests']} run, {tests['failures'] + tests['errors']} failed",
              flush=True)
    rows = []
    if points:
        # Wait for the compile pool, leaving the benchmark at least a third of what is left.
        wait_s = max(1.0, (deadline - time.perf_counter()) * 2 / 3)
        try:
            warm_info = dict(compiled=sum(warm.get(wait_s)))
        except Exception as e:  # noqa: BLE001 - the benchmark then compiles as it goes
            warm_info = dict(error=f"{type(e).__name__}: {e}")
        pool.terminate()
        warm_info["done_at_s"] = round(time.perf_counter() - t_start, 1)
        timing = DRY["timing"] if a.dry_run else TIMING
        t0 = time.perf_counter()
        rows = run_bench(points, device, timing, deadline)
        phases["bench"] = time.perf_counter() - t0
        write_bench(out, rows, warm_info)
    text = summary_table(rows, tests, env)
    text += (f"\nwall time {time.perf_counter() - t_start:.0f} s (deadline {a.deadline:.0f} s; "
             + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
             + (f"; compile pool done at {warm_info['done_at_s']:.0f} s" if points else "")
             + ")")
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print(text)
    failed = tests is not None and (tests["failures"] or tests["errors"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
