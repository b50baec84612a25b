"""``python -m bench``: rnnfast's speed and gradient-fidelity report against torch.

Runs on the default device (CUDA when present, else CPU) and, in one process:

1. the machine's GEMM rate (the floor every recurrence is compared with);
2. speed: rnnfast vs torch.nn, a torch.compile'd reference loop and JAX (when
   installed), fwd and fwd+bwd, over a grid narrowed by ``--cells --T --B --H ...``;
3. gradient fidelity: relative errors vs a float64 torch.nn run as T grows;
4. packed sequences: PackedSequence vs padded batch, for realistic length distributions;
5. end-to-end (``e2e``): training steps of PyTorch's example word-level language model
   with torch.nn's recurrent stack and with rnnfast's, and the recurrent layers' share;
6. host overhead (``host``, CPU): one layer's call at (B, H) = (1, 32) minus the time
   inside its compiled kernels (:mod:`.host`).

``--check`` adds the floor check (:mod:`.check`: each floor of issue 13 and the ReLU-RNN
floors with its measured value, met / not met / not measured) to the output and exits
with status 1 when one is not met; ``--check-report FILE`` checks an existing
``report.json`` without measuring.

It prints markdown tables and writes ``report.json``, ``report.md`` and PNG plots to
``--out`` (default ``out/bench``). ``--quick`` is the CI smoke test (~20 s on 2 idle
cores with the kernels compiled; minutes when it compiles them or the machine is loaded).

Examples::

    python -m bench --quick
    python -m bench --cells lstm --B 32 --H 256 --modes fwdbwd --no-jax
    python -m bench --only fidelity --long          # adds T = 10000
    python -m bench --isa avx2 --only speed --no-compile --no-jax   # as on an AVX2 CPU
    python -m bench --only e2e,packed --no-compile --no-jax
    python -m bench --check                        # every section the floors need
    python -m bench --check-report out/bench/report.json
"""

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import shlex
import sys
import time
import warnings

import torch
from tqdm import tqdm

from rnnfast import BACKENDS

from . import check, common, e2e, fidelity, host, isa, packed, speed
from .common import CELLS
from .markdown import markdown

SECTIONS = ("speed", "fidelity", "packed", "e2e", "host")


def _csv(type_=str, empty_ok=False, choices=None):
    """An argparse type: a comma list of ``type_`` (each one of ``choices`` if given).
    An empty list is a usage error (unless ``empty_ok``): a list option left out means
    "all", and an empty one (an unset shell variable) ran the whole grid."""
    def parse(s):
        values = [type_(v) for v in s.split(",") if v]
        if not values and not empty_ok:
            raise argparse.ArgumentTypeError(f"expected a comma list of one or more "
                                             f"values, got {s!r}")
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(str, bad))} "
                                             f"(choose from {', '.join(choices)})")
        return values
    return parse


def _batch_by_hidden(s):
    """An argparse type for one item of a comma list: ``BxH`` with positive integers."""
    parts = s.split("x")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected BxH with positive integers, got {s!r}")
    return tuple(int(p) for p in parts)


def _number(s, type_):
    try:
        return type_(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def _at_least(lo, type_=int):
    """An argparse type: a number of ``type_`` >= lo (else argparse's usage error)."""
    def parse(s):
        v = _number(s, type_)
        if not v >= lo:  # NaN too
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {s}")
        return v
    return parse


def _positive(type_=float):
    """An argparse type: a number of ``type_`` > 0."""
    def parse(s):
        v = _number(s, type_)
        if not v > 0:  # NaN too
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def _device(s):
    """An argparse type: a torch device rnnfast's bench runs on (cpu or cuda[:N])."""
    try:
        d = torch.device(s)
    except RuntimeError:
        d = None
    if d is None or d.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {s!r}")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{s!r}: torch sees no CUDA device here")
    return s


def _existing_file(s):
    if not os.path.isfile(s):
        raise argparse.ArgumentTypeError(f"no such file: {s!r}")
    return s


def _report_file(s):
    """An argparse type: a report.json that ``python -m bench`` wrote (a JSON object with
    its "config"), read; else a usage error naming the file."""
    _existing_file(s)
    try:
        with open(s) as f:
            report = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise argparse.ArgumentTypeError(f"{s!r} is not a report.json of python -m bench "
                                         f"({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("config"), dict):
        raise argparse.ArgumentTypeError(f"{s!r} is not a report.json of python -m bench "
                                         f"(no \"config\" object)")
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small grid, few repeats (~20 s warm; minutes with a cold compile cache)")
    p.add_argument("--out", default="out/bench", help="output folder (default out/bench)")
    p.add_argument("--device", type=_device, default=None,
                   help="cpu or cuda (default: cuda if present)")
    p.add_argument("--isa", choices=isa.ISAS, default="native",
                   help="CPU instruction set to run as: numba compiles for it and torch is "
                        "held to it, in a child process (default: native)")
    p.add_argument("--threads", type=_at_least(1), default=None,
                   help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--cells", type=_csv(choices=CELLS), default=None,
                   help=f"comma list from {list(CELLS)}")
    p.add_argument("--backends", type=_csv(choices=BACKENDS), default=None,
                   help="rnnfast backends (default: numba on CPU, triton on CUDA)")
    p.add_argument("--T", type=_csv(_at_least(1)), default=None, help="sequence lengths")
    p.add_argument("--B", type=_csv(_at_least(1)), default=None, help="batch sizes")
    p.add_argument("--H", type=_csv(_at_least(1)), default=None, help="hidden sizes (I = H)")
    p.add_argument("--dtype", type=_csv(choices=common.DTYPES), default=None,
                   help="speed dtypes (default float32)")
    p.add_argument("--modes", type=_csv(choices=common.MODES), default=None, help="fwd,fwdbwd")
    p.add_argument("--only", type=_csv(choices=SECTIONS), default=None,
                   help=f"sections from {SECTIONS}")
    p.add_argument("--skip", type=_csv(empty_ok=True, choices=SECTIONS), default=[],
                   help="sections to skip")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--compile-cap", type=_positive(), default=60.0,
                   help="skip torch.compile at a point whose compile exceeds this (s)")
    p.add_argument("--compile-budget", type=_at_least(0.0, float), default=None,
                   help="total torch.compile seconds for the run, after which the column "
                        "is skipped (default 10 with --quick, 240 otherwise)")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX column")
    p.add_argument("--max-reps", type=_at_least(1), default=None,
                   help="timing rounds per point (max)")
    p.add_argument("--budget", type=_positive(), default=None,
                   help="seconds of timing rounds per point before stopping (after min reps)")
    p.add_argument("--fidelity-T", type=_csv(_at_least(1)), default=None,
                   help="fidelity sequence lengths (default 10,100,1000)")
    p.add_argument("--long", action="store_true", help="add T = 10000 to fidelity")
    p.add_argument("--fidelity-dtypes", type=_csv(choices=common.DTYPES), default=None,
                   help="rnnfast dtypes in the fidelity table (default float32,float64)")
    p.add_argument("--seeds", type=_at_least(1), default=None,
                   help="fidelity seeds per (cell, T) (default 3; 2 with --quick)")
    p.add_argument("--dists", type=_csv(choices=packed.DISTRIBUTIONS), default=None,
                   help=f"packed length distributions from {list(packed.DISTRIBUTIONS)}")
    p.add_argument("--e2e-steps", type=_at_least(1), default=None,
                   help="timed word-LM steps per model after warm-up (default "
                        f"{e2e.FULL.steps}; {e2e.QUICK.steps} with --quick)")
    p.add_argument("--check", action="store_true",
                   help="add the floor check and exit 1 when a floor is not met or none "
                        "was measured")
    p.add_argument("--check-report", metavar="FILE", type=_report_file, default=None,
                   help="print the floor check of an existing report.json (no measuring); "
                        "exit 1 when a floor is not met or none was measured")
    return p.parse_args(argv)


# ---------------------------------------------------------------- grid

def speed_grid(a):
    base = speed.default_grid(a.quick)
    cells = a.cells or list(dict.fromkeys(p.cell for p in base))
    modes = a.modes or list(common.MODES)
    dtypes = a.dtype or ["float32"]
    if a.T is None and a.B is None and a.H is None:
        # the default grid's points for its own cells; another cell gets the ReLU-RNN's
        relu = [(p.T, p.B, p.H) for p in base if p.cell == "rnn_relu"]
        own = {p.cell for p in base}
        shapes = {c: ([(p.T, p.B, p.H) for p in base if p.cell == c] if c in own else relu)
                  for c in cells}
        # the default grid's own order (floor points first), then any extra cells
        pts = [speed.Point(p.cell, p.T, p.B, p.H, dt, p.mode) for p in base
               if p.cell in cells for dt in dtypes]
        pts += [speed.Point(c, T, B, H, dt, m) for c in cells if c not in own
                for (T, B, H) in dict.fromkeys(shapes[c]) for dt in dtypes for m in modes]
    else:
        pairs = [bh for bh in speed.FLOOR_POINTS
                 if (a.B is None or bh[0] in a.B) and (a.H is None or bh[1] in a.H)]
        if not pairs:
            pairs = [(B, H) for B in (a.B or [16]) for H in (a.H or [64])]
        Ts = a.T or [speed.FLOOR_T]
        pts = [speed.Point(c, T, B, H, dt, m) for c in cells for T in Ts for (B, H) in pairs
               for dt in dtypes for m in modes]
    pts = [p for p in pts if p.cell in cells and p.mode in modes]
    return list(dict.fromkeys(pts))


def fidelity_grid(a):
    cells = [c for c in (a.cells or ["rnn_relu", "rnn_tanh", "lstm", "gru"])
             if c != "rnn_leaky_relu"]
    Ts = a.fidelity_T or ([10, 100] if a.quick else [10, 100, 1000])
    if a.long and 10000 not in Ts:
        Ts = Ts + [10000]
    return [(c, T) for c in cells for T in Ts]


def packed_grid(a):
    cases = packed.default_cases(a.quick)
    if a.cells:
        cases = [c for c in cases if c[0] in a.cells] or [
            (c, 100, 32, 128, "uniform") for c in a.cells]
    if a.T:
        cases = [(c, T, B, H, d) for (c, _, B, H, d) in cases for T in a.T]
    if a.dists:
        cases = [(c, T, B, H, d) for (c, T, B, H, _) in cases for d in a.dists]
    return list(dict.fromkeys(cases))


def host_grid(a):
    """Cells of the host section (numba kernels; leaky-ReLU is the ReLU kernel's)."""
    return [c for c in (a.cells or host.default_cells(a.quick)) if c != "rnn_leaky_relu"]


def e2e_grid(a):
    """(cells, config) of the end-to-end section; ``--cells`` picks among the cells the
    example offers (torch.nn has no leaky-ReLU RNN)."""
    cfg = e2e.default_config(a.quick)
    if a.e2e_steps:
        cfg = dataclasses.replace(cfg, steps=a.e2e_steps)
    cells = [c for c in (a.cells or e2e.default_cells(a.quick)) if c in e2e.E2E_CELLS]
    return cells, cfg


# ---------------------------------------------------------------- main

def _clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def main(argv=None):
    """Run the report; returns the exit status (a ``--isa`` re-run's own)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    if a.check_report:
        report = a.check_report  # read and checked by parse_args
        rows = check.rows(report)
        print(check.markdown(rows, report))
        return 1 if check.failed(rows, report) else 0
    if not isa.in_child(a.isa):
        return isa.rerun(a.isa, argv)
    report = run(a, "python -m bench" + ("" if not argv else " " + shlex.join(argv)))
    return 1 if a.check and check.failed(report["check"], report) else 0


def run(a, command):
    """The whole report for parsed arguments ``a``: measures, writes ``report.json``,
    ``report.md`` and plots to ``a.out``, prints the markdown; returns the report."""
    t_start = time.perf_counter()
    device = torch.device(a.device) if a.device else common.default_device()
    if a.threads:
        torch.set_num_threads(a.threads)
    sections = [s for s in (a.only or SECTIONS) if s not in a.skip]
    notes = []
    backends = a.backends or common.available_backends(device)
    if not backends:
        notes.append(f"no rnnfast backend runs on {device} (the Triton backend did not "
                     "import): peers only")
    use_jax = not a.no_jax and common.have_jax()
    if not a.no_jax and not use_jax:
        notes.append("JAX columns skipped: jax is not installed (pip install rnnfast[jax])")
    if use_jax and device.type == "cuda":
        import jax
        if jax.default_backend() != "gpu":
            use_jax = False
            notes.append("JAX columns skipped: jax has no GPU backend here (jax[cuda12])")
    if device.type == "cuda":
        notes.append("torch.nn on CUDA uses cuDNN")
    machine = dict(common.machine_info(device), loadavg_start=_loadavg())
    if device.type == "cpu":
        machine["isa"] = isa.describe(a.isa)
    timing = (dict(min_reps=3, max_reps=a.max_reps or 12, budget_s=a.budget or 0.4)
              if a.quick else
              dict(min_reps=5, max_reps=a.max_reps or 30, budget_s=a.budget or 1.0))
    os.makedirs(a.out, exist_ok=True)

    sgrid = speed_grid(a) if "speed" in sections else []
    fgrid = fidelity_grid(a) if "fidelity" in sections and backends else []
    pgrid = packed_grid(a) if "packed" in sections and backends else []
    ecells, ecfg = e2e_grid(a) if "e2e" in sections and backends else ([], None)
    hcells = host_grid(a) if "host" in sections and "numba" in backends \
        and device.type == "cpu" else []
    fdtypes = a.fidelity_dtypes or ["float32", "float64"]
    report = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine,
        "config": {"backends": backends, "sections": sections, "quick": a.quick,
                   "timing": timing, "compile_cap_s": a.compile_cap, "jax": use_jax,
                   "fidelity_dtypes": fdtypes, "notes": notes,
                   "e2e": None if ecfg is None else dataclasses.asdict(ecfg)},
    }
    bar = tqdm(total=1 + len(sgrid) + len(fgrid) + len(pgrid) + len(ecells) + len(hcells),
               desc="bench",
               file=sys.stderr, dynamic_ncols=True)

    bar.set_postfix_str("GEMM rate")
    report["gemm"] = common.measure_gemm_rate(device)
    bar.update()

    budget = a.compile_budget if a.compile_budget is not None else (10.0 if a.quick else 240.0)
    cache = speed.CompileCache(cap_s=a.compile_cap, enabled=not a.no_compile, budget_s=budget)
    walls = report["section_wall_s"] = {}
    t0 = time.perf_counter()
    report["speed"] = []
    for p in sgrid:
        bar.set_postfix_str(p.label())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report["speed"].append(speed.run_point(p, device, backends, cache, use_jax, timing))
        bar.update()
    report["compile_log"] = cache.log
    report["floor"] = {be: speed.floor_summary(report["speed"], be) for be in backends}

    walls["speed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report["fidelity"] = []
    for cell, T in fgrid:
        bar.set_postfix_str(f"fidelity {cell} T{T}")
        report["fidelity"].append(fidelity.run_case(cell, T, backends, fdtypes, device,
                                                    seeds=a.seeds or (2 if a.quick else 3)))
        bar.update()
    report["fidelity_summary"] = fidelity.summary_rows(report["fidelity"], backends)

    walls["fidelity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report["packed"] = []
    for cell, T, B, H, dist in pgrid:
        bar.set_postfix_str(f"packed {cell} T{T} B{B} H{H} {dist}")
        report["packed"].append(packed.run_case(cell, T, B, H, device, backends, timing,
                                                dist=dist))
        bar.update()
    walls["packed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report["e2e"] = []
    for cell in ecells:
        bar.set_postfix_str(f"e2e word LM {cell}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report["e2e"].append(e2e.run_case(cell, ecfg, device, backends))
        bar.update()
    walls["e2e"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report["host"] = []
    for cell in hcells:
        bar.set_postfix_str(f"host {cell}")
        report["host"].append(host.run_case(cell, device, quick=a.quick))
        bar.update()
    walls["host"] = time.perf_counter() - t0
    bar.close()
    report["machine"]["loadavg_end"] = _loadavg()
    if device.type == "cpu":
        from rnnfast.kernels._env import setting
        from rnnfast.kernels.numba import gemm
        choices = gemm.layer_gemm_choices(torch.float32)
        report["gemm"]["layer_gemm"] = (
            {"classes": {c: {"provider": p, "seconds": t} for c, (p, t) in choices.items()}}
            if choices else {"provider": setting(gemm.LAYER_GEMM_ENV, "auto")})

    report["plots"] = _try_plots(report, a.out, notes)
    report["wall_s"] = time.perf_counter() - t_start
    if a.check:
        report["check"] = check.rows(report)
    md = markdown(report)
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(_clean(report), f, indent=1)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {a.out}/report.json, report.md"
          + "".join(f", {os.path.basename(v)}" for v in report["plots"].values()))
    return report


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _try_plots(report, out, notes):
    try:
        from . import plots
    except ImportError as e:
        notes.append(f"plots skipped: {e} (pip install rnnfast[bench])")
        return {}
    return plots.write_all(report, out)
