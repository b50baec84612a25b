"""``python -m bench --isa ...``: the report as it runs on a CPU with a narrower
instruction set, measured on this one.

numba and torch pick their instruction set once per process, from the environment, so
a target other than ``native`` re-runs the same command in a child process with:

* numba emitting code for that CPU: ``NUMBA_CPU_NAME`` (``haswell`` for AVX2+FMA,
  ``x86-64`` for the SSE2 baseline) and ``NUMBA_CPU_FEATURES``, the host's feature
  string (as numba flattens it) with every wider feature turned off (``+avx512f`` ->
  ``-avx512f``; for the baseline also AVX, AVX2, FMA, F16C, BMI, SSE4, ...);
* torch held to the same set: ``ATEN_CPU_CAPABILITY`` (ATen's kernels and
  torch.compile's generated code), ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``;
  JAX through ``XLA_FLAGS=--xla_cpu_max_isa``.

``avx512`` keeps numba on the host CPU (which must have AVX-512) and holds torch to the
AVX-512 foundation (no AMX or VNNI). The report records what the child process actually
runs (:func:`describe`): numba's target CPU, and torch's CPU capability.
"""

import os
import platform
import subprocess
import sys

ISAS = ("native", "avx512", "avx2", "x86-64")
# Set in the child: the report runs there, and does not re-run itself.
MARKER = "RNNFAST_BENCH_ISA"

# Feature-name prefixes turned off for each target (LLVM's x86 feature names).
_WIDER_THAN_AVX2 = ("avx512", "avx10", "amx", "avxvnni", "avxifma", "avxneconvert", "evex",
                    "vaes", "vpclmulqdq", "gfni", "sha512", "sm3", "sm4")
_WIDER_THAN_BASELINE = _WIDER_THAN_AVX2 + (
    "avx", "fma", "f16c", "bmi", "sse4", "ssse3", "popcnt", "movbe", "lzcnt", "xsave", "sha",
    "aes", "pclmul", "adx", "rdseed", "rdrnd", "fsgsbase", "rdpid", "clflushopt", "clwb")

# isa -> (numba CPU name or None for the host, features turned off, torch and XLA limits)
_TARGETS = {
    "avx512": (None, ("amx", "avx10"),
               dict(ATEN_CPU_CAPABILITY="avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE",
                    MKL_ENABLE_INSTRUCTIONS="AVX512"), "AVX512"),
    "avx2": ("haswell", _WIDER_THAN_AVX2,
             dict(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2",
                  MKL_ENABLE_INSTRUCTIONS="AVX2"), "AVX2"),
    "x86-64": ("x86-64", _WIDER_THAN_BASELINE,
               dict(ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41",
                    MKL_ENABLE_INSTRUCTIONS="SSE4_2"), "SSE4_2"),
}
# What the host needs for a target to be a narrowing of it, not a widening.
_REQUIRES = {"avx512": ("avx512f",), "avx2": ("avx2", "fma"), "x86-64": ()}


def host_features():
    """The host's LLVM feature string, flattened as numba flattens it
    (``+avx2,-avx512fp16,...``)."""
    import llvmlite.binding as ll
    return ll.get_host_cpu_features().flatten()


def narrowed_features(features, drop):
    """``features`` (``+a,-b,...``) with every ``+name`` whose name starts with one of
    ``drop`` turned into ``-name``."""
    out = []
    for f in features.split(","):
        if f and f[0] == "+" and f[1:].startswith(drop):
            f = "-" + f[1:]
        out.append(f)
    return ",".join(out)


def child_env(isa, environ=None, features=None):
    """The environment of a process that runs as on ``isa``: ``environ`` (default
    ``os.environ``) plus numba's, torch's and XLA's variables and :data:`MARKER`.

    Raises ValueError for an unknown ``isa``, for ``native`` (nothing to set), on a
    non-x86 host, and when the host lacks the target's features (``--isa avx512`` on an
    AVX2 machine would not narrow anything)."""
    if isa not in _TARGETS:
        raise ValueError(f"isa must be one of {[i for i in ISAS if i != 'native']}, got {isa!r}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise ValueError(f"--isa {isa} runs on an x86-64 host, this one is {platform.machine()}")
    features = host_features() if features is None else features
    have = {f[1:] for f in features.split(",") if f.startswith("+")}
    missing = [f for f in _REQUIRES[isa] if f not in have]
    if missing:
        raise ValueError(f"--isa {isa}: this CPU lacks {', '.join(missing)}")
    cpu, drop, torch_env, xla_isa = _TARGETS[isa]
    env = dict(os.environ if environ is None else environ)
    if cpu is not None:
        env["NUMBA_CPU_NAME"] = cpu
    env["NUMBA_CPU_FEATURES"] = narrowed_features(features, drop)
    env.update(torch_env)
    env["XLA_FLAGS"] = f"--xla_cpu_max_isa={xla_isa} {env.get('XLA_FLAGS', '')}".strip()
    env[MARKER] = isa
    return env


def in_child(isa):
    """True when this process is the re-run for ``isa`` (or ``isa`` is native)."""
    return isa == "native" or os.environ.get(MARKER) == isa


def rerun(isa, argv, module="bench"):
    """Run ``python -m <module> <argv>`` (``bench``, ``bench.ab``) in a child process
    that runs as on ``isa``; returns its exit status, or 2 with the reason on stderr
    where this host cannot run as on ``isa`` (:func:`child_env`'s ValueError)."""
    try:
        env = child_env(isa)
    except ValueError as e:
        print(f"python -m {module}: {e}", file=sys.stderr)
        return 2
    print(f"{module}: re-running for --isa {isa} (numba CPU "
          f"{env.get('NUMBA_CPU_NAME', 'host')}, torch {env['ATEN_CPU_CAPABILITY']})",
          file=sys.stderr, flush=True)
    return subprocess.call([sys.executable, "-m", module, *argv], env=env)


def describe(isa):
    """What this process runs: the requested target, numba's CPU and its wider
    features left on, torch's CPU capability and oneDNN's limit."""
    import llvmlite.binding as ll
    import numba
    import torch
    feats = numba.config.CPU_FEATURES or host_features()
    on = [f[1:] for f in feats.split(",") if f.startswith("+")]
    return {"requested": isa,
            "numba_cpu": numba.config.CPU_NAME or ll.get_host_cpu_name(),
            "numba_widest": next((w for w in ("avx512f", "avx2", "avx", "sse4.2", "sse2")
                                  if w in on), "none"),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "unset")}
