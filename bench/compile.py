"""Compile every Triton kernel configuration the launchers can choose for real GPUs, without
a GPU, and read the resource use off each cubin.

    python -m bench.compile [--arch 80 90] [--jobs N] [--json PATH] [--only SUBSTR]

For every configuration in ``rnnfast.kernels.triton.config.all_configs()`` and every
target (sm_80, sm_90) this runs ``triton.compile(ASTSource(...), target=GPUTarget(...))``
and ``cuobjdump --dump-resource-usage`` (shipped with the triton wheel) on the cubin.
Prints one row per (kernel, config): registers per thread, shared memory (static +
Triton's dynamic), local memory (stack + spill bytes) for both targets; exits 1 if any
configuration fails to compile or uses local memory.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

ARCHS = (80, 90)
# Shared memory one block may use (bytes): A100 163 KiB, H100 227 KiB; registers per SM.
SMEM_LIMIT = {80: 166912, 90: 232448}
REGS_PER_SM = 65536

_PTR = {"fp32": "*fp32", "fp64": "*fp64", "fp16": "*fp16", "bf16": "*bf16"}


def cuobjdump_path():
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    return path if os.path.exists(path) else None


def _kernel(name):
    from rnnfast.kernels.triton import lstm, rnn
    return {"rnn_fwd": rnn.rnn_fwd_kernel, "rnn_bwd": rnn.rnn_bwd_kernel,
            "lstm_fwd": lstm.lstm_fwd_kernel, "lstm_bwd": lstm.lstm_bwd_kernel}[name]


def signature(cfg):
    """Triton signature (every argument's type, 'constexpr' for meta-parameters) and the
    constexpr values of a configuration, as ``triton.compile`` takes them."""
    from rnnfast.kernels.triton.config import _TRITON_DTYPES
    fn = _kernel(cfg.kernel)
    data = _PTR[_TRITON_DTYPES[cfg.dtype]]
    state = "*fp64" if data == "*fp64" else "*fp32"
    # Pointers by role: data tensors in the input dtype, state buffers in the state dtype.
    state_ptrs = {"hbuf", "cbuf", "dhbuf", "dcbuf", "norms", "slope_ptr"}
    consts = cfg.constexprs()
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "lengths":
            sig[name] = "*i64"
        elif name == "counter":
            sig[name] = "*i32"
        elif name in state_ptrs:
            sig[name] = state
        elif name in ("T", "B", "H", "P", "s_begin", "s_end", "reverse", "activation",
                      "phases", "sync"):
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
    """Compile ``cfg`` for sm_<arch>; returns a result row (dict)."""
    import triton
    from triton.backends.compiler import GPUTarget
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


def run(archs=ARCHS, jobs=None, only=None):
    from rnnfast.kernels.triton.config import all_configs
    cfgs = [c for c in all_configs() if not only or only in f"{c.kernel}-{c.label()}"]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--only", default=None, help="configs whose 'kernel-label' contains this")
    args = ap.parse_args(argv)
    if cuobjdump_path() is None:
        print("cuobjdump not found in the triton wheel", file=sys.stderr)
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
