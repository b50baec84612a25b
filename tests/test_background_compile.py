"""backend='auto' while a cell's numba kernels compile in a background process
(rnnfast.warmup): torch.nn's own operator runs the calls meanwhile, then the kernels.

The fast tests replace the background compile with a stand-in child process that only
writes the ready marker, so they check the switching, not numba; the slow test runs the
real compile of one cell into an empty cache in a subprocess."""

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import warmup

from .cases import make_pair
from .checks import compare_modules


@pytest.fixture
def background(tmp_path, monkeypatch):
    """Background mode with fresh bookkeeping, markers in tmp_path and a stand-in
    compile that waits for ``release()``, then writes the ready marker and exits with
    ``rc`` (no marker when rc != 0), ``linger`` seconds after the marker (a real
    compile's process takes a while to exit once its marker is written)."""
    monkeypatch.setenv(warmup.COMPILE_ENV, "background")
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)
    for name in ("_READY", "_SYNC"):
        monkeypatch.setattr(warmup, name, set())
    monkeypatch.setattr(warmup, "_JOBS", {})
    monkeypatch.setattr(warmup, "_RUNNING", [])
    monkeypatch.setattr(warmup, "_marker_dir", lambda: str(tmp_path))
    warmup.marker_path.cache_clear()
    gate = tmp_path / "go"
    stand_in = {"rc": 0, "linger": 0.0, "commands": [], "release": gate.touch}

    def command(cell, dtype):
        stand_in["commands"].append((cell, dtype))
        code = ("import os, sys, time\n"
                "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
                "rc = int(sys.argv[3])\n"
                "rc or open(sys.argv[2], 'w').write('ok')\n"
                "time.sleep(float(sys.argv[4]))\n"
                "sys.exit(rc)")
        return [sys.executable, "-c", code, str(gate), warmup.marker_path(cell, dtype),
                str(stand_in["rc"]), str(stand_in["linger"])]

    monkeypatch.setattr(warmup, "_command", command)
    yield stand_in
    gate.touch()
    assert warmup.wait(timeout=60)
    warmup.marker_path.cache_clear()


def _x(T, B, I, dtype=torch.float32, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, I, generator=g, dtype=dtype)


@pytest.mark.parametrize("cell", ["relu", "tanh", "lstm", "lstm_proj", "gru"])
def test_torch_nn_runs_while_compiling_then_kernels(cell, background, capfd):
    ours, twin = make_pair(cell, 5, 7, torch.float64, "auto", num_layers=2,
                           bidirectional=True)
    x = _x(6, 3, 5, torch.float64)
    assert "backend=torch.nn" in rnnfast.explain(ours, x)
    compare_modules(ours, twin, x)
    err = capfd.readouterr().err
    assert err.count("in a background process") == 1, err
    assert "backend=torch.nn" in rnnfast.explain(ours, x)
    assert len(background["commands"]) == 1
    # torch.nn's own operator: bitwise torch.nn's forward
    with torch.no_grad():
        for a, b in zip(ours(x), twin(x)):
            a, b = (a, b) if isinstance(a, torch.Tensor) else (a[0], b[0])
            assert torch.equal(a, b)
    # the compile lands: the kernels take over, with the same results
    background["release"]()
    assert warmup.wait(timeout=60)
    compare_modules(ours, twin, x)
    assert "backend=numba" in rnnfast.explain(ours, x)
    assert "are compiled" in capfd.readouterr().err


def test_kernels_take_over_line_when_a_call_finds_the_marker_first(background, capfd):
    """A call loop (no warmup.wait) whose next call comes after the compile wrote its
    ready marker but before its process exited: that call runs the kernels, prints the
    "are compiled" line and reaps the child. It used to record the marker and return,
    so the job was never retired: no line, and the child stayed a zombie."""
    background["linger"] = 1.0
    m, twin = make_pair("gru", 4, 6, torch.float64, "auto")
    x = _x(5, 2, 4, torch.float64)
    m(x)
    (job,) = warmup._RUNNING
    background["release"]()
    marker = warmup.marker_path("gru", torch.float64)
    for _ in range(500):
        if os.path.exists(marker):
            break
        time.sleep(0.01)
    assert os.path.exists(marker) and job.proc.poll() is None
    assert "backend=numba" in rnnfast.explain(m, x)
    compare_modules(m, twin, x)
    assert "are compiled" in capfd.readouterr().err
    assert not warmup._RUNNING and job.proc.returncode == 0


def test_packed_and_batch_first_while_compiling(background):
    ours, twin = make_pair("lstm", 4, 6, torch.float64, "auto", batch_first=True)
    lengths = torch.tensor([2, 5, 3])
    x = _x(3, 5, 4, torch.float64)  # [B, T, I]

    def packer(t):
        return pack_padded_sequence(t, lengths, batch_first=True, enforce_sorted=False)

    compare_modules(ours, twin, x, packer=packer)
    compare_modules(ours, twin, x)
    assert "backend=torch.nn" in rnnfast.explain(ours, packer(x))


def test_reference_loop_where_torch_nn_has_no_operator(background):
    ours, twin = make_pair("leaky_relu", 4, 6, torch.float64, "auto")
    x = _x(5, 2, 4, torch.float64)
    assert "backend=torch:" in rnnfast.explain(ours, x)
    compare_modules(ours, twin, x)
    gru, _ = make_pair("gru", 4, 6, torch.float64, "auto")
    gru.record_grad_norms = True
    assert "backend=torch:" in rnnfast.explain(gru, x)
    gru(x)[0].sum().backward()
    assert gru.last_grad_norms is not None and gru.last_grad_norms.shape == (1, 5)


def test_autocast_runs_the_reference_loop_while_compiling(background):
    """Under CPU autocast torch's GRU operator would multiply in bfloat16 (GRU is not on
    CPU autocast's list, yet its products are); the kernels, and so the stand-in, keep
    float32: the reference loop with autocast off, as backend='torch' computes."""
    x = _x(5, 2, 4)
    for cell in ("gru", "lstm"):
        ours, _ = make_pair(cell, 4, 6, torch.float32, "auto")
        ref, _ = make_pair(cell, 4, 6, torch.float32, "torch")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert "backend=torch:" in rnnfast.explain(ours, x)
            a, b = ours(x)[0], ref(x)[0]
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_process_waits_for_the_parents_compile(background):
    m, _ = make_pair("relu", 4, 6, torch.float32, "auto")
    x = _x(5, 2, 4)
    assert "backend=torch.nn" in rnnfast.explain(m, x)
    m(x)  # starts the (stand-in) compile
    pid = os.fork()
    if pid == 0:  # the child: never a failure, never a second compile; the marker decides
        code = 1
        try:
            why = warmup.kernels_status("rnn", torch.float32)
            if why and "compiling" in why and not warmup._SYNC:
                background["release"]()
                if warmup.wait(timeout=60) and ("rnn", torch.float32) in warmup._READY \
                        and len(background["commands"]) == 1:
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert warmup.wait(timeout=60)
    assert "backend=numba" in rnnfast.explain(m, x)


def test_explicit_backend_and_sync_mode_compile_in_process(background, monkeypatch):
    ours, _ = make_pair("gru", 4, 6, torch.float32, "numba")
    x = _x(5, 2, 4)
    assert "backend=numba" in rnnfast.explain(ours, x)
    monkeypatch.setenv("RNNFAST_BACKEND", "numba")
    auto, _ = make_pair("gru", 4, 6, torch.float32, "auto")
    assert "backend=numba" in rnnfast.explain(auto, x)
    monkeypatch.delenv("RNNFAST_BACKEND")
    assert "backend=torch.nn" in rnnfast.explain(auto, x)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert "backend=numba" in rnnfast.explain(auto, x)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    monkeypatch.setenv(warmup.COMPILE_ENV, "sync")
    assert "backend=numba" in rnnfast.explain(auto, x)
    auto(x)
    monkeypatch.setenv(warmup.COMPILE_ENV, "background")
    monkeypatch.setattr(warmup, "CACHE", False)  # RNNFAST_NUMBA_CACHE=0: nothing to share
    lstm, _ = make_pair("lstm", 4, 6, torch.float32, "auto")
    assert "backend=numba" in rnnfast.explain(lstm, x)
    assert background["commands"] == []


def test_one_background_process_at_a_time(background, capfd):
    x = _x(5, 2, 4)
    for cell in ("relu", "lstm", "gru"):
        m, _ = make_pair(cell, 4, 6, torch.float32, "auto")
        m(x)
    err = capfd.readouterr().err
    assert err.count("(started;") == 1, err
    assert err.count("queued behind another compile of this cache") == 2, err
    background["release"]()
    assert warmup.wait(timeout=60)
    assert [c for c, _ in background["commands"]] == ["rnn", "lstm", "gru"]
    for cell in ("relu", "lstm", "gru"):
        m, _ = make_pair(cell, 4, 6, torch.float32, "auto")
        assert "backend=numba" in rnnfast.explain(m, x)


def test_failed_background_compile_compiles_in_process(background, capfd):
    background["rc"] = 3
    m, twin = make_pair("relu", 4, 6, torch.float64, "auto")
    x = _x(5, 2, 4, torch.float64)
    m(x)
    background["release"]()
    assert warmup.wait(timeout=60)
    assert "failed (exit 3" in capfd.readouterr().err
    assert "backend=numba" in rnnfast.explain(m, x)
    compare_modules(m, twin, x)


def test_compile_environment_variable_checked(background, monkeypatch):
    monkeypatch.setenv(warmup.COMPILE_ENV, "later")
    m, _ = make_pair("relu", 4, 6, torch.float32, "auto")
    with pytest.raises(ValueError, match=r"environment variable RNNFAST_COMPILE must be "
                                         r"one of \('background', 'sync'\), got 'later'"):
        m(_x(5, 2, 4))


def test_jit_trace_records_the_kernels_not_the_stand_in(background):
    m, _ = make_pair("relu", 4, 6, torch.float32, "auto")
    x = _x(5, 2, 4)
    assert "backend=torch.nn" in rnnfast.explain(m, x)
    traced = torch.jit.trace(m, (x,), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "aten::rnn_relu" not in graph


@pytest.mark.slow
def test_real_background_compile_into_an_empty_cache(tmp_path):
    """A fresh cache: the first call runs torch.nn's operator while `python -m
    rnnfast.warmup` compiles the ReLU-RNN's float64 kernels in a child process; then the
    kernels run, from the cache the child wrote."""
    script = textwrap.dedent("""
        import torch, rnnfast
        from rnnfast import warmup
        torch.manual_seed(0)
        m = rnnfast.RNN(4, 6, nonlinearity="relu").double()
        x = torch.randn(5, 2, 4, dtype=torch.float64)
        first = rnnfast.explain(m, x)
        y0 = m(x)[0]
        assert "backend=torch.nn" in rnnfast.explain(m, x), first
        assert warmup.wait(timeout=900)
        y1 = m(x)[0]
        assert "backend=numba" in rnnfast.explain(m, x), rnnfast.explain(m, x)
        torch.testing.assert_close(y1, y0, atol=1e-12, rtol=1e-10)
        print("ok")
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_NUM_THREADS="1",
               RNNFAST_COMPILE="background")
    env.pop("RNNFAST_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
    assert "in a background process" in r.stderr and "are compiled" in r.stderr, r.stderr
    assert any(p.startswith("rnnfast-ready-rnn-float64") and not p.endswith(".log")
               for p in os.listdir(next(tmp_path.iterdir())))


@pytest.mark.skipif(sys.platform == "win32", reason="the cross-process lock is POSIX's flock")
def test_background_compiles_take_turns_across_processes(tmp_path):
    """Cold processes each start a background compile (DDP ranks, a rerun); those
    children hold one lock per cache directory, so the later ones wait and then load
    what the first compiled instead of compiling it again alongside."""
    import fcntl
    lock_path = os.path.join(warmup._marker_dir(), "rnnfast-compile.lock")
    out = tmp_path / "child.out"
    env = dict(os.environ)
    env.pop("RNNFAST_BACKEND", None)
    with open(lock_path, "w") as lock, open(out, "w") as f:
        fcntl.flock(lock, fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-m", "rnnfast.warmup", "--background",
                                  "--cell", "rnn", "--dtype", "float64", "--serial"],
                                 stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            child.wait(timeout=15)  # time to import; its first line comes after the lock
        except subprocess.TimeoutExpired:
            pass
        assert child.poll() is None and out.read_text() == "", out.read_text()
    assert child.wait(timeout=900) == 0, out.read_text()
    assert "done in" in out.read_text()


def _train_outputs(model, x, seed=5):
    torch.manual_seed(seed)
    out, state = model(x)
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "packed"])
@pytest.mark.parametrize("cell", ["relu", "lstm_proj", "gru", "leaky_relu"])
def test_dropout_masks_the_same_while_compiling(cell, layout, background):
    """Training with dropout between layers: the same seed gives the same result while
    the kernels compile (torch.nn's operator layer by layer, or the reference loop for
    leaky-ReLU, with rnnfast's Philox masks drawn by torch ops), after they land (the
    numba mask kernel), and with backend='numba' or backend='torch' throughout."""
    import copy

    from .tolerances import assert_close
    ours, _ = make_pair(cell, 4, 6, torch.float64, "auto", num_layers=3, dropout=0.5,
                        bidirectional=True, batch_first=layout == "batch_first")
    ours.train()
    numba_twin, torch_twin = copy.deepcopy(ours), copy.deepcopy(ours)
    numba_twin.backend, torch_twin.backend = "numba", "torch"
    x = _x(5, 3, 4, torch.float64)  # [B, T, I] with batch_first
    if layout == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([2, 5, 3]),
                                                    enforce_sorted=False)
    want = _train_outputs(numba_twin, x)
    expect = "reference loop" if cell == "leaky_relu" else "backend=torch.nn"
    assert expect in rnnfast.explain(ours, x)
    for name, got in (("while compiling", _train_outputs(ours, x)),
                      ("backend='torch'", _train_outputs(torch_twin, x))):
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(f"{name}: output {i}", a, b, torch.float64)
    background["release"]()
    assert warmup.wait(timeout=60)
    assert "backend=numba" in rnnfast.explain(ours, x)
    for i, (a, b) in enumerate(zip(_train_outputs(ours, x), want)):
        assert torch.equal(a, b), f"after the compile: output {i}"


@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True},
                                     {"num_layers": 2, "dropout": 0.5}],
                         ids=["1layer", "2layer-bidir", "2layer-dropout"])
def test_lstm_outputs_and_biases_changed_in_place_while_compiling(options, background):
    """A float32 LSTM training call while the kernels compile runs torch.nn's operator,
    oneDNN's fused LSTM, which keeps its output and its biases for backward (torch.nn's
    LSTM raises autograd's in-place error for a change of either before backward).
    rnnfast gives it copies: the in-place changes the kernels allow (output, h_n, c_n,
    a bias) are allowed while compiling too, and the gradients, first and second order,
    are bitwise those of torch.nn's forward as it ran (with dropout: the numba
    kernels', which draw the same masks)."""
    ours, twin = make_pair("lstm", 5, 8, torch.float32, "auto", **options)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 5, generator=g)
    D = ours.num_layers * (1 + ours.bidirectional)
    hx = (torch.randn(D, 3, 8, generator=g), torch.randn(D, 3, 8, generator=g))
    assert "backend=torch.nn" in rnnfast.explain(ours, x)
    results = []
    for m, change in ((ours, True), (twin, False)):
        torch.manual_seed(11)
        xr, h0, c0 = (t.clone().requires_grad_(True) for t in (x, *hx))
        y, (h, c) = m(xr, (h0, c0))
        got = [t.detach().clone() for t in (y, h, c)]
        w = [torch.randn(t.shape, generator=torch.Generator().manual_seed(i))
             for i, t in enumerate((y, h, c))]
        loss = sum((t * wt).sum() for t, wt in zip((y, h, c), w))
        if change:  # torch.nn.LSTM raises for the output's and the bias's
            y.relu_()
            h.mul_(2)
            c.add_(1)
            with torch.no_grad():
                m.bias_ih_l0.add_(1)
        first = torch.autograd.grad(loss, [xr, h0, c0, *m.parameters()], create_graph=True)
        if change:
            with torch.no_grad():
                m.bias_ih_l0.sub_(1)
        second = torch.autograd.grad(sum((t * t).sum() for t in first[:3]),
                                     [xr, m.bias_hh_l0, m.weight_hh_l0])
        results.append(got + [t.detach() for t in first] + list(second))
    if options.get("dropout"):  # torch.nn draws other masks: the kernels' path instead
        ours.backend = "numba"
        torch.manual_seed(11)
        from .tolerances import assert_close
        assert_close("dropout output", results[0][0], ours(x, hx)[0], torch.float32)
        return
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), i


@pytest.mark.skipif(sys.platform == "win32", reason="the cross-process lock is POSIX's flock")
def test_no_child_while_another_process_compiles(background, capfd):
    """While another process's background compile holds the cache's compile lock, a
    cold process queues its compile instead of starting a child that would wait on the
    lock (ten short programs in a row left ten waiting children of ~450 MB each); once
    the lock is free, its next call starts one."""
    import fcntl
    x = _x(5, 2, 4)
    m, _ = make_pair("relu", 4, 6, torch.float32, "auto")
    with open(os.path.join(warmup._marker_dir(), "rnnfast-compile.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        m(x)
        m(x)
        assert background["commands"] == []
        assert "queued behind another compile of this cache" in capfd.readouterr().err
    m(x)
    assert [c for c, _ in background["commands"]] == ["rnn"]
    background["release"]()
    assert warmup.wait(timeout=60)
    assert "backend=numba" in rnnfast.explain(m, x)


def test_background_child_imports_this_rnnfast(tmp_path):
    """The background compile's child imports the rnnfast of the process that starts it,
    not whichever one its path finds first (here a decoy package in its working
    directory, as a program run by path from another checkout's folder would have)."""
    decoy = tmp_path / "rnnfast"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy rnnfast')\n")
    (decoy / "warmup.py").write_text("raise SystemExit('the decoy rnnfast')\n")
    cmd = warmup._command("rnn", torch.float64)
    argv = ["--background", "--cell", "rnn", "--dtype", "float64"]
    assert repr(argv) in cmd[-1]
    cmd[-1] = cmd[-1].replace(repr(argv), "['--help']")
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "usage: python -m rnnfast.warmup" in r.stdout, \
        r.stdout + r.stderr


@pytest.mark.slow
def test_unreadable_cache_files_are_recompiled(tmp_path):
    """A truncated or corrupt compile-cache file (a full disk, a killed process, a
    flipped byte) is a miss: the kernel compiles again, with one line naming the file,
    and the save rewrites it. numba's own loader raised the unpickling error of a
    truncated file on every later call, and loaded a flipped byte without a word (each
    data file now carries its sha256)."""
    script = textwrap.dedent("""
        import torch
        from rnnfast.kernels.numba import gemm
        g = torch.Generator().manual_seed(0)
        a = torch.randn(7, 3, dtype=torch.float64, generator=g)
        b = torch.randn(7, 5, dtype=torch.float64, generator=g)
        torch.testing.assert_close(gemm.matmul_tn(a, b), a.t() @ b)
        print("ok")
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), RNNFAST_LAYER_GEMM="numba")

    def run():
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
        return r.stderr

    def damage(suffix, how):
        files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs
                 if "matmul_tn_kernel" in f and f.endswith(suffix)]
        assert files
        for path in files:
            with open(path, "r+b") as f:
                how(f)

    def truncate(f):
        f.truncate(max(1, os.fstat(f.fileno()).st_size // 2))

    def flip(f):
        data = bytearray(f.read())
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0x5A
        f.seek(0)
        f.write(data)

    assert "unreadable" not in run()
    for suffix, how in ((".nbc", truncate), (".nbi", truncate), (".nbc", flip)):
        damage(suffix, how)
        err = run()
        assert "rnnfast: unreadable compile-cache file" in err, (suffix, how, err)
        if suffix == ".nbc":  # each damaged file by its own name
            named = re.findall(r"unreadable compile-cache file (\S+\.nbc) ", err)
            assert named and all(os.path.exists(p) for p in named), err
        assert "unreadable" not in run()  # rewritten by the recompile


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_temp_cache_folder_must_be_private(tmp_path, monkeypatch):
    """The temp-dir cache folder is used only when it is a real folder of this user's
    that nobody else may write: a cache entry is a pickle, and another user who made
    <tempdir>/rnnfast-numba-cache-<uid> first could plant one that runs code in this
    process. Otherwise each process gets a private folder of its own."""
    import tempfile

    from rnnfast.kernels.numba import cache
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / f"rnnfast-numba-cache-{os.getuid()}"
    root = cache._temp_cache_root.__wrapped__
    assert root() == str(shared) and (os.stat(shared).st_mode & 0o777) == 0o700
    os.chmod(shared, 0o777)
    assert root() != str(shared) and os.path.dirname(root()) == str(tmp_path)
    os.rmdir(shared)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    shared.symlink_to(target)
    assert root() != str(shared)
    shared.unlink()
    if os.getuid() == 0:  # a folder another user owns
        shared.mkdir(mode=0o700)
        os.chown(shared, 65534, 65534)
        assert root() != str(shared)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_cache_in_the_temp_dir_where_nothing_else_is_writable(tmp_path):
    """A read-only install whose user has no writable cache folder (a read-only
    container): the kernels compile and cache under <tempdir>/rnnfast-numba-cache-<uid>
    instead of raising numba's "no locator available" on the first call. Here the
    package's __pycache__ is a file and HOME a file, which not even root can write into."""
    import shutil
    root = os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))
    pkg = tmp_path / "pkg"
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc", "rnnfast-*")
    for name in ("rnnfast", "kernels"):
        shutil.copytree(os.path.join(root, name), pkg / name, ignore=ignore)
    (pkg / "kernels" / "numba" / "__pycache__").write_text("not a folder")
    (tmp_path / "home").write_text("not a folder")
    (tmp_path / "tmp").mkdir()
    script = textwrap.dedent("""
        import torch, rnnfast
        assert rnnfast.__file__.startswith(%r), rnnfast.__file__
        from rnnfast.kernels.numba import gemm
        a, b = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
        torch.testing.assert_close(gemm.matmul_tn(a, b), a.t() @ b)
        print("ok")
    """ % str(pkg))
    env = dict(os.environ, HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"),
               XDG_CACHE_HOME=str(tmp_path / "home" / "cache"), PYTHONPATH=str(pkg),
               RNNFAST_LAYER_GEMM="numba")
    env.pop("NUMBA_CACHE_DIR", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
    cached = [f for _, _, fs in os.walk(tmp_path / "tmp") for f in fs
              if "matmul_tn_kernel" in f and f.endswith(".nbc")]
    assert cached and os.path.isdir(tmp_path / "tmp" / f"rnnfast-numba-cache-{os.getuid()}")
