"""Compile every Triton kernel configuration the launchers can choose for real GPUs,
without a GPU, and read the resource use off each cubin.

    python -m rnnfast.kernels.triton.compile_check [--arch 80 90] [--jobs N] [--json PATH]
                                                   [--only SUBSTR]

(``python -m bench.compile`` is the same command.) The kernels are
:data:`config.KERNELS`, each ``<cell>_<fwd|bwd>`` found by name as the ``@triton.jit``
function ``<cell>_<fwd|bwd>_kernel`` in ``kernels/triton/<cell>.py``; a new cell joins by
its names in ``config.KERNELS`` (which :func:`config.pick` and
:func:`config.all_configs` serve). For every configuration in ``config.all_configs()``
and every target (sm_80, sm_90) this runs
``triton.compile(ASTSource(...), target=GPUTarget(...))`` and
``cuobjdump --dump-resource-usage`` (shipped with the triton wheel) on the cubin.
Prints one row per (kernel, config): registers per thread, shared memory (static +
Triton's dynamic), local memory (stack + spill bytes) for both targets; exits 1 if any
configuration fails to compile or does not fit (:func:`problems`).

Imports nothing from rnnfast outside ``rnnfast.kernels``: tests and the bench both use it.
"""

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import triton
from triton.backends.compiler import GPUTarget

from . import config

ARCHS = (80, 90)
# Shared memory one block may use (bytes): A100 163 KiB, H100 227 KiB; registers per SM.
SMEM_LIMIT = {80: 166912, 90: 232448}
REGS_PER_SM = 65536

_PTR = {"fp32": "*fp32", "fp64": "*fp64", "fp16": "*fp16", "bf16": "*bf16"}
# Kernel arguments by role (every kernel names its arguments from these); any other
# argument that is not a meta-parameter is a tensor in the input dtype.
_STATE_PTRS = {"hbuf", "cbuf", "dhbuf", "dcbuf", "norms", "slope_ptr"}  # float32/64 state
_INT32 = {"T", "B", "H", "P", "s_begin", "s_end", "reverse", "activation", "phases", "sync"}
_OTHER_PTRS = {"lengths": "*i64", "counter": "*i32"}


def cuobjdump_path():
    """The triton wheel's ``cuobjdump``, or None when this wheel has none."""
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    return path if os.path.exists(path) else None


def kernel_fn(name):
    """The ``@triton.jit`` function of kernel ``name`` (one of ``config.KERNELS``,
    ``<cell>_fwd`` or ``<cell>_bwd``): ``<name>_kernel`` in ``kernels/triton/<cell>.py``.
    Raises ValueError for a name outside ``config.KERNELS``."""
    if name not in config.KERNELS:
        raise ValueError(f"kernel must be one of {config.KERNELS}, got {name!r}")
    cell = name.rsplit("_", 1)[0]
    return getattr(importlib.import_module(f"{__package__}.{cell}"), f"{name}_kernel")


def signature(cfg):
    """Triton signature (every argument's type, 'constexpr' for meta-parameters) and the
    constexpr values of a configuration, as ``triton.compile`` takes them."""
    fn = kernel_fn(cfg.kernel)
    data = _PTR[config._TRITON_DTYPES[cfg.dtype]]
    state = "*fp64" if data == "*fp64" else "*fp32"
    consts = cfg.constexprs()
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in _OTHER_PTRS:
            sig[name] = _OTHER_PTRS[name]
        elif name in _STATE_PTRS:
            sig[name] = state
        elif name in _INT32:
            sig[name] = "i32"
        else:
            sig[name] = data
    return fn, sig, consts


def resource_usage(cubin):
    """{'regs', 'shared', 'stack', 'local'} of the one kernel in ``cubin`` (bytes)."""
    tool = cuobjdump_path()
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([tool, "--dump-resource-usage", path], check=True,
                             capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    use = {}
    for key, field in (("regs", "REG"), ("stack", "STACK"), ("shared", "SHARED"),
                       ("local", "LOCAL")):
        m = re.search(rf"\b{field}:(\d+)", out)
        use[key] = int(m.group(1)) if m else 0
    return use


def compile_one(cfg, arch):
    """Compile ``cfg`` for sm_<arch>; returns a result row (dict): kernel, config,
    arch, num_warps, ok, and regs / shared / stack / local (bytes) or error."""
    fn, sig, consts = signature(cfg)
    row = dict(kernel=cfg.kernel, config=cfg.label(), arch=arch, num_warps=cfg.num_warps)
    try:
        k = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", arch, 32),
                           options=cfg.launch_options())
        use = resource_usage(k.asm["cubin"])
        use["shared"] += int(k.metadata.shared)
        row.update(use, ok=True)
    except Exception as e:  # reported in the table, and a failing exit status
        row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return row


def _job(args):
    cfg, arch = args
    return compile_one(cfg, arch)


def run(archs=ARCHS, jobs=None, only=None, configs=None):
    """Result rows of every configuration (or of ``configs``; those whose
    ``kernel-label`` contains ``only``, when given) for every target in ``archs``,
    compiled in ``jobs`` processes (default: one per core)."""
    cfgs = [c for c in (config.all_configs() if configs is None else configs)
            if not only or only in f"{c.kernel}-{c.label()}"]
    work = [(c, a) for c in cfgs for a in archs]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        return [_job(w) for w in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_job, work))


def table(rows, archs=ARCHS):
    """One line per (kernel, config): regs / shared / local bytes per target."""
    by = {}
    for r in rows:
        by.setdefault((r["kernel"], r["config"]), {})[r["arch"]] = r
    head = f"{'kernel':9} {'config':38}" + "".join(
        f" | sm_{a}: {'regs':>4} {'smem':>6} {'spill':>5}" for a in archs)
    lines = [head, "-" * len(head)]
    for (kernel, label), per in by.items():
        line = f"{kernel:9} {label:38}"
        for a in archs:
            r = per.get(a)
            if r is None:
                line += f" | sm_{a}: {'-':>18}"
            elif not r["ok"]:
                line += f" | sm_{a}: {'FAILED':>18}"
            else:
                line += f" | sm_{a}: {r['regs']:>4} {r['shared']:>6} {r['stack'] + r['local']:>5}"
        lines.append(line)
    return "\n".join(lines)


def problems(rows):
    """Why a row is not launchable as the persistent kernel needs it: compile failure,
    local memory (spills), more shared memory or registers than one block may have."""
    out = []
    for r in rows:
        where = f"{r['kernel']} {r['config']} sm_{r['arch']}"
        if not r["ok"]:
            out.append(f"{where}: {r['error']}")
            continue
        if r["stack"] or r["local"]:
            out.append(f"{where}: local memory (stack {r['stack']} B, local {r['local']} B)")
        limit = SMEM_LIMIT.get(r["arch"])
        if limit is not None and r["shared"] > limit:
            out.append(f"{where}: shared memory {r['shared']} B > {limit} B")
        if r["regs"] * r["num_warps"] * 32 > REGS_PER_SM:
            out.append(f"{where}: {r['regs']} registers x {r['num_warps'] * 32} threads "
                       f"> {REGS_PER_SM}")
    return out


def main(argv=None, prog="python -m rnnfast.kernels.triton.compile_check"):
    """Command line; returns the exit status (0 all fit, 1 problems, 2 no cuobjdump)."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--only", default=None, help="configs whose 'kernel-label' contains this")
    args = ap.parse_args(argv)
    if cuobjdump_path() is None:
        print("cuobjdump not found in the triton wheel", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("the compile check needs Triton's compiler: unset TRITON_INTERPRET",
              file=sys.stderr)
        return 2
    rows = run(tuple(args.arch), args.jobs, args.only)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows, tuple(args.arch)))
    bad = problems(rows)
    n = len({(r["kernel"], r["config"]) for r in rows})
    print(f"\n{n} configurations x {len(args.arch)} targets: "
          f"{'all compile, no local memory' if not bad else f'{len(bad)} problems'}")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
