"""The numba backend on every instruction set it targets: the ISA it detects, register
tiles and vector steps that stay in registers (read off the generated assembly), and a
compile cache that never loads stale code.

Each x86 target is compiled here, in a subprocess, by pointing numba at another CPU
(``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``, as a user's machine would): haswell
without AVX-512 (AVX2 + FMA) and x86-64 (the SSE2 baseline), plus the host. aarch64
(NEON) cannot be compiled by numba on x86, so its kernels are built with the NEON vector
widths and tile (``RNNFAST_ISA=neon``) for the host, and their LLVM IR is compiled again
by llvmlite for an aarch64 target. Spills are LLVM's own asm comments ("16-byte Spill",
"8-byte Folded Reload"); loops are its loop comments, so "the inner loops" are exactly
the innermost loops LLVM found.

Run ``python tests/test_isa.py [isa]`` to print the report for one ISA.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# numba's target for each x86 ISA on an x86 host: CPU name, and the features to drop
# from the host's (as tools/isa-env.sh does for the benchmarks).
_X86 = {
    "avx2": ("haswell", ("avx512", "amx", "avx10", "evex", "vaes", "vpclmulqdq", "gfni")),
    "sse2": ("x86-64", ("avx", "fma", "f16c", "sse4", "ssse3", "amx", "evex", "vaes",
                        "vpclmulqdq", "gfni")),
}


def _host_is_x86():
    import platform
    return platform.machine().lower() in ("x86_64", "amd64")


def isa_env(isa):
    """Environment variables that make numba compile for ``isa`` on this host."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_CPU_", "RNNFAST_ISA"))}
    env["RNNFAST_NUMBA_CACHE"] = "0"  # compiled here, so that its IR and asm exist
    if isa == "neon":
        env["RNNFAST_ISA"] = "neon"
    elif isa in _X86:
        import llvmlite.binding as ll
        cpu, drop = _X86[isa]
        feats = ll.get_host_cpu_features().flatten().split(",")
        env["NUMBA_CPU_NAME"] = cpu
        env["NUMBA_CPU_FEATURES"] = ",".join(
            "-" + f[1:] if f[1:].startswith(drop) else f for f in feats)
    return env


# ---------------------------------------------------------------- reading assembly

_LABEL = re.compile(r"^(\.?L?BB\d+_\d+|[A-Za-z_$.][\w$.]*):")
_INNER_HEADER = re.compile(r"This Inner Loop Header")
_IN_LOOP = re.compile(r"in Loop: Header=(BB\d+_\d+)")
_SPILL = re.compile(r"(\d+)-byte (Folded )?(Spill|Reload)")


def inner_loop_spills(asm):
    """Spill and reload instructions inside innermost loops: [(loop header, line)].

    Each basic block is in the innermost loop named by its "in Loop: Header=BBx_y"
    comment, or heads one ("This Inner Loop Header"); a loop is innermost when its header
    says "Inner"."""
    inner, spills = set(), []
    block, header = None, None
    for line in asm.splitlines():
        m = _LABEL.match(line.strip())
        if m and not line.startswith((" ", "\t")):
            block, header = m.group(1).lstrip("."), None
            if block.startswith("LBB"):
                block = block[1:]
        if _INNER_HEADER.search(line):
            header = block
            inner.add(block)
            continue
        m = _IN_LOOP.search(line)
        if m:
            header = m.group(1)
            continue
        if _SPILL.search(line) and header is not None:
            spills.append((header, line.strip()))
    return [(h, ln) for h, ln in spills if h in inner]


# x86's optimizer turns NRT's "decrement and test for zero" into an x86 intrinsic.
_X86_ATOMIC = re.compile(r"(%[\w.\"]+) = (?:tail )?call i8 @llvm\.x86\.atomic\.sub\.cc\.i64"
                         r"\(ptr (?:nonnull )?(%[\w.\"]+), i64 (\d+), i32 4\)")
_ATOMIC_COUNT = [0]


def _generic_atomic(m):
    """The same operation in target-independent IR: cc 4 (equal) = the result is 0."""
    res, ptr, n = m.groups()
    _ATOMIC_COUNT[0] += 1
    k = _ATOMIC_COUNT[0]
    return (f"%x86old.{k} = atomicrmw sub ptr {ptr}, i64 {n} seq_cst\n"
            f"  %x86zero.{k} = icmp eq i64 %x86old.{k}, {n}\n"
            f"  {res} = zext i1 %x86zero.{k} to i8")


def _retarget_aarch64(llvm_ir):
    """x86 LLVM IR of a numba library -> aarch64 assembly (cpu neoverse-n1)."""
    import llvmlite.binding as ll
    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    triple = "aarch64-unknown-linux-gnu"
    tm = ll.Target.from_triple(triple).create_target_machine(cpu="neoverse-n1", opt=3)
    text = re.sub(r'"target-(cpu|features)"="[^"]*"', "", llvm_ir)
    text = re.sub(r"^target (datalayout|triple) = .*$", "", text, flags=re.M)
    text = _X86_ATOMIC.sub(_generic_atomic, text)
    text = re.sub(r"^declare .*@llvm\.x86\.atomic\..*$", "", text, flags=re.M)
    mod = ll.parse_assembly(text)
    mod.triple = triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    return tm.emit_assembly(mod)


def _worker(isa):
    """Compile the kernels for the ISA of this process (float32, and float64 for the
    GEMM) and print a JSON report: {kernel: [spill lines in innermost loops]}."""
    import numpy as np
    import torch

    from rnnfast.kernels import numba as nk
    from rnnfast.kernels.numba import config, gemm, lstm, rnn

    report = {"isa": config.ISA.name, "kernels": {}}
    # Each library's IR after optimization and before x86 code generation (which
    # rewrites some IR in place, e.g. into x86 atomic intrinsics).
    from numba.core import codegen
    final_ir = {}
    optimize = codegen.CPUCodeLibrary._optimize_final_module

    def keep_ir(self):
        optimize(self)
        final_ir[self.name] = str(self._final_module)

    codegen.CPUCodeLibrary._optimize_final_module = keep_ir
    for dt in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(0)
        T, B, H = 3, 3, 37  # B * G * H under PARALLEL_MIN_MACS: the serial kernels

        def r(*s):
            return torch.randn(*s, generator=g, dtype=dt)

        a = r(9, 40).numpy()
        gemm.matmul_tn_kernel(a, r(9, 37).numpy(), np.empty((40, 37), dt and a.dtype))
        if dt == torch.float64:
            continue
        w = r(H, H)
        y, _ = nk.rnn_fwd(r(T, B, H), w, r(B, H), activation=1)
        nk.rnn_bwd(r(T, B, H), r(B, H), y, w, activation=1)
        G = 4 * H
        whh = r(G, H)
        out = nk.lstm_fwd(r(T, B, G), whh, None, r(B, H), r(B, H))
        nk.lstm_bwd(r(T, B, H), r(B, H), r(B, H), out[3], out[4], r(B, H), whh, None)
    for fn in (gemm.matmul_tn_kernel, rnn.rnn_fwd_kernel, rnn.rnn_bwd_kernel,
               lstm.lstm_fwd_kernel, lstm.lstm_bwd_kernel):
        for sig in fn.signatures:
            name = f"{fn.py_func.__name__}[{sig[0].dtype}]"
            if isa == "neon":
                asm = _retarget_aarch64(final_ir[fn.overloads[sig].library.name])
            else:
                asm = fn.inspect_asm(sig)
            report["kernels"][name] = {
                "spills": [f"{h}: {ln}" for h, ln in inner_loop_spills(asm)],
                "wide": sorted(set(re.findall(r"%([xyz]mm)\d+", asm))),
            }
    print("REPORT " + json.dumps(report))


def _run_worker(isa, timeout=1800):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), isa],
                         env=isa_env(isa), cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


# ---------------------------------------------------------------- tests

def test_isa_tiles_fit_the_registers():
    """Each ISA's tile: mr * nv accumulators + nv vectors of B + the broadcast (+ the
    product, without FMA) fit its vector registers; the row arm's row_panels * nv
    accumulators with the broadcast and one vector of B at a time (each is used by one
    FMA only; test_no_spill_in_inner_loops reads the code) too, and it has at least the
    8 accumulators that hide the FMA latency on two pipes."""
    from rnnfast.kernels.numba.config import ISAS
    for isa in ISAS.values():
        need = isa.mr * isa.nv + isa.nv + (1 if isa.fma else 2)
        assert need <= isa.registers, (isa, need)
        row = isa.row_panels * isa.nv
        assert row >= 8 and row + 1 + (1 if isa.fma else 2) <= isa.registers, (isa, row)
        two = isa.row_panels // 2 * isa.nv  # two rows: each vector of B is used twice
        assert 2 * two + two + (1 if isa.fma else 2) <= isa.registers, (isa, two)


@pytest.mark.skipif(not _host_is_x86(), reason="x86 targets are compiled on an x86 host")
@pytest.mark.parametrize("isa", ["avx2", "sse2"])
def test_isa_detected_from_numba_target(isa):
    code = "from rnnfast.kernels.numba.config import ISA; print(ISA.name)"
    out = subprocess.run([sys.executable, "-c", code], env=isa_env(isa), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == isa


def test_pack_a_follows_the_host_cpu(monkeypatch):
    """pack_a (the per-step product packs A first) is the ISA's own setting except on
    the AMD cores where the plain product measured faster, whatever ISA the code
    targets; RNNFAST_PACK_A overrides, and anything else there is an error. The setting
    is part of the cache's index names (ISA_TAG), so builds made for either choice
    never stand in for each other."""
    from rnnfast.kernels.numba import cache, config
    avx2, avx512 = config.ISAS["avx2"], config.ISAS["avx512"]
    assert avx2.pack_a and not avx512.pack_a
    monkeypatch.delenv("RNNFAST_PACK_A", raising=False)
    for cpu, packs in (("znver2", False), ("znver4", False), ("bdver2", False),
                       ("skylake-avx512", True), ("haswell", True), ("icelake-server", True)):
        monkeypatch.setattr(config, "host_cpu", lambda cpu=cpu: cpu)
        assert config._tune(avx2).pack_a is packs, cpu
        assert config._tune(config.ISAS["sse2"]).pack_a is packs, cpu
        assert config._tune(avx512).pack_a is False, cpu
        assert config._tune(avx2)._replace(pack_a=True) == avx2  # nothing else changes
    for value, packs in (("0", False), ("1", True)):
        monkeypatch.setenv("RNNFAST_PACK_A", value)
        assert config._tune(avx2).pack_a is packs
        assert config._tune(avx512).pack_a is packs
    monkeypatch.setenv("RNNFAST_PACK_A", "yes")
    with pytest.raises(ValueError, match="RNNFAST_PACK_A='yes'"):
        config._tune(avx2)
    assert config.ISA_TAG == config.ISA.name + ("-packa" if config.ISA.pack_a else "")
    if config.CACHE:
        from rnnfast.kernels.numba import rnn
        locator = rnn.rnn_fwd_kernel._cache._impl.locator
        assert isinstance(locator, cache._PackageKeyed)
        assert locator.get_disambiguator().endswith("-" + config.ISA_TAG)


def test_inner_loop_spill_reader():
    """The asm reader finds a spill in an innermost loop and ignores one outside."""
    asm = textwrap.dedent("""\
        f:
        \tvmovups %zmm1, 64(%rsp)                # 64-byte Spill
        .LBB0_1:                                # =>This Loop Header: Depth=1
        \tmovq %rax, 8(%rsp)                      # 8-byte Spill
        .LBB0_2:                                #   Parent Loop BB0_1 Depth=1
                                                # =>  This Inner Loop Header: Depth=2
        \tvfmadd231ps %zmm2, %zmm3, %zmm4
        .LBB0_3:                                #   in Loop: Header=BB0_2 Depth=2
        \tvmovups 64(%rsp), %zmm1                # 64-byte Reload
        .LBB0_4:                                #   in Loop: Header=BB0_1 Depth=1
        \tmovq 8(%rsp), %rax                      # 8-byte Reload
        """)
    assert [(h, ln.split()[0]) for h, ln in inner_loop_spills(asm)] == [("BB0_2", "vmovups")]


def _targets():
    isas = ["neon"]
    if _host_is_x86():
        isas = ["host", "avx2", "sse2"] + isas
    return isas


@pytest.mark.slow
@pytest.mark.parametrize("isa", _targets())
def test_no_spill_in_inner_loops(isa):
    """The GEMM tile's k loop and the RNN / LSTM steps' unit loops (every innermost
    loop of the kernels) keep their values in registers on each ISA; x86 code for
    AVX2 / SSE2 uses no register wider than the ISA has."""
    report = _run_worker(isa)
    bad = {k: v["spills"] for k, v in report["kernels"].items() if v["spills"]}
    assert not bad, f"{report['isa']}: spills in inner loops:\n" + json.dumps(bad, indent=1)
    widest = {"avx2": {"xmm", "ymm"}, "sse2": {"xmm"}}.get(isa)
    if widest is not None:
        for name, v in report["kernels"].items():
            assert set(v["wide"]) <= widest, (name, v["wide"])


@pytest.mark.slow
@pytest.mark.skipif(not _host_is_x86(), reason="x86 targets are compiled on an x86 host")
@pytest.mark.parametrize("isa", ["avx2", "sse2"])
def test_cpu_math_on_isa(isa):
    """tests/test_cpu_math.py (every tile shape, the layer GEMMs, the vector math)
    compiled for AVX2 and for SSE2 (no FMA, 4 float32 lanes), in a subprocess, with
    the per-step product packing A (those ISAs' setting on Intel cores; the native
    run covers the host's own choice, so both branches of mm_into run on any host)."""
    env = isa_env(isa)
    env.pop("RNNFAST_NUMBA_CACHE")
    env["RNNFAST_PACK_A"] = "1"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          os.path.join("tests", "test_cpu_math.py")],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


@pytest.mark.slow
def test_cache_recompiles_when_an_inlined_helper_changes(tmp_path):
    """Copy the kernel package, compile a kernel (cache miss), load it again (cache
    hit), then change vec.py (which the kernel inlines, not its own file): the next
    process must recompile and run the new code, not load the old machine code."""
    pkg = tmp_path / "pkg"
    shutil.copytree(os.path.join(REPO, "kernels"), pkg / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "triton"))
    code = textwrap.dedent("""\
        import numpy as np
        from kernels.numba import gemm
        out = gemm.pack_b(np.ones((3, 5), np.float32))
        print(out.shape[2], sum(gemm.pack_b.stats.cache_hits.values()),
              sum(gemm.pack_b.stats.cache_misses.values()))
        """)
    env = {k: v for k, v in os.environ.items() if k != "RNNFAST_NUMBA_CACHE"}
    env.update(PYTHONPATH=str(pkg), NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run():
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return [int(x) for x in out.stdout.split()]

    width, hits, misses = run()
    assert (hits, misses) == (0, 1)
    assert run() == [width, 1, 0]  # unchanged sources: loaded from the cache
    vec = pkg / "kernels" / "numba" / "vec.py"
    src = vec.read_text()
    edited = src.replace("    n = kind.lanes\n", "    n = 2 * kind.lanes\n")
    assert edited != src
    vec.write_text(edited)
    assert run() == [2 * width, 0, 1]  # recompiled, with the new lanes


@pytest.mark.slow
def test_cache_never_loads_another_overloads_code(tmp_path):
    """Two processes compiling different overloads of one kernel (the background
    warm-up and a foreground call; two dtypes) race on numba's cache index. Replay the
    interleaving in which the float32 process's index write lands after the float64
    process saved its own: numba's numbering put both builds in the same data file, and
    the next float32 call loaded the float64 machine code ("can't unbox array"). With
    kernels/numba/cache.KeyedDataFile each build has its own file: the float32 call
    loads its own code, the float64 one (lost from the index) recompiles."""
    pkg = tmp_path / "pkg"
    shutil.copytree(os.path.join(REPO, "kernels"), pkg / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "triton"))
    code = textwrap.dedent("""\
        import sys
        import numpy as np
        from kernels.numba import gemm
        dt = np.dtype(sys.argv[1])
        a = np.arange(12, dtype=dt).reshape(4, 3)
        out = gemm.pack_bt(a)
        assert out.dtype == dt and np.array_equal(out[0, :, :4], a.T), (out.dtype, out.shape)
        print(sum(gemm.pack_bt.stats.cache_hits.values()),
              sum(gemm.pack_bt.stats.cache_misses.values()))
        """)
    env = {k: v for k, v in os.environ.items() if k != "RNNFAST_NUMBA_CACHE"}
    env.update(PYTHONPATH=str(pkg), NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run(dtype):
        out = subprocess.run([sys.executable, "-c", code, dtype], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return [int(x) for x in out.stdout.split()]

    assert run("float32") == [0, 1]
    (index,) = (tmp_path / "cache").rglob("gemm.pack_bt-*.nbi")
    float32_index = index.read_bytes()
    index.unlink()  # the float64 process saw no float32 entry yet
    assert run("float64") == [0, 1]
    index.write_bytes(float32_index)  # ... and the float32 process's index write won
    assert run("float32") == [1, 0]  # its own build, from the cache
    assert run("float64") == [0, 1]  # not in the index: compiled again, not misloaded



@pytest.mark.slow
def test_cache_keeps_each_import_name_apart(tmp_path):
    """The same kernel file imported under two package names (the installed
    ``rnnfast.kernels``, or ``kernels`` with the checkout's root on sys.path) with one
    cache directory: a build pickles its module's name, so the second name must compile
    its own build, not load the first's (which raised ModuleNotFoundError)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(os.path.join(REPO, "kernels"), pkg / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "triton"))
    code = textwrap.dedent("""\
        import importlib.util, sys
        import numpy as np
        name, root = sys.argv[1], sys.argv[2]
        spec = importlib.util.spec_from_file_location(
            name, root + "/kernels/__init__.py", submodule_search_locations=[root + "/kernels"])
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
        gemm = importlib.import_module(name + ".numba.gemm")
        out = gemm.pack_b(np.ones((3, 5), np.float32))
        assert out[0, :3, :5].sum() == 15
        print(sum(gemm.pack_b.stats.cache_hits.values()),
              sum(gemm.pack_b.stats.cache_misses.values()))
        """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RNNFAST_NUMBA_CACHE", "PYTHONPATH")}
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run(name):
        out = subprocess.run([sys.executable, "-c", code, name, str(pkg)], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return [int(x) for x in out.stdout.split()]

    assert run("kernels") == [0, 1]
    assert run("kernels_alias") == [0, 1]  # its own build, not the other name's
    assert run("kernels") == [1, 0]
    assert run("kernels_alias") == [1, 0]


if __name__ == "__main__":
    _worker(sys.argv[1] if len(sys.argv) > 1 else "host")


@pytest.mark.parametrize("env,want", [
    ({"ATEN_CPU_CAPABILITY": "avx2"}, "{default}_cap_avx2"),
    ({"ATEN_CPU_CAPABILITY": "avx2", "TORCHINDUCTOR_CACHE_DIR": "/tmp/mine"}, "/tmp/mine"),
    ({"ATEN_CPU_CAPABILITY": "avx2", "TORCHINDUCTOR_CACHE_DIR": "{default}"},
     "{default}_cap_avx2"),  # torch's default, exported by a parent that compiled
    ({}, "{default}"),  # torch's own cache_dir() may have exported its default
], ids=["held-to-avx2", "user-dir-kept", "inherited-default", "native"])
def test_inductor_cache_isolated_per_held_capability(env, want):
    """Importing rnnfast under ATEN_CPU_CAPABILITY gives torch inductor a cache
    directory of that capability's own (its FX graph cache key omits the capability:
    rnnfast/__init__.py, _isolate_inductor_cache); otherwise nothing changes."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}
    code = ("import os, rnnfast\n"
            "from torch._inductor.runtime.cache_dir_utils import default_cache_dir\n"
            "print(repr(os.environ.get('TORCHINDUCTOR_CACHE_DIR')), default_cache_dir())")
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    env = {k: v.format(default=default_cache_dir()) for k, v in env.items()}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got, default = out.stdout.split()
    expected = repr(want.format(default=default))
    assert got == expected or (not env and got == "None"), (got, expected)
