"""The numba backend's own arithmetic, tested directly: the GEMM register tile and its
drivers (kernels/numba/tile.py, gemm.py) and the vector math (vec.py, vmath.py), at the
vector width and tile shape of the ISA numba compiles for (tests/test_isa.py runs this
file again for the other x86 ISAs).

The module tests reach these only through whole layers; here every tile shape (1-MR
rows, 1-NV vectors, masked tails), reduction lengths across the KC chunk and the
float64 block boundary, transposed operands, bias seeding, and the serial / parallel
drivers are checked against float64 numpy, and that nothing is written outside C.
"""

import numba
import numpy as np
import pytest
import torch
from numba import njit

from rnnfast.kernels import numba as nk
from rnnfast.kernels.numba import gemm
from rnnfast.kernels.numba import vec as V

from .tolerances import assert_close

DTYPES = (np.float32, np.float64)
TORCH = {np.float32: torch.float32, np.float64: torch.float64}


def _rand(rng, shape, dt):
    return rng.standard_normal(shape).astype(dt)


def _check(name, got, ref, dt, k):
    """Within the table's kernel tolerance, scaled by the reduction length k (a GEMM's
    float32 rounding grows like sqrt(k); the table is set for layer-sized sums)."""
    scale = max(1.0, (k / 256) ** 0.5)
    ref_t = torch.from_numpy(np.asarray(ref))
    assert_close(name, torch.from_numpy(np.asarray(got, dtype=np.float64)) / scale,
                 ref_t / scale, dtype=TORCH[dt])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 32, 128), (6, 64, 64), (7, 37, 148),
                                   (13, 300, 17), (5, 0, 33), (12, 257, 130), (3, 5, 200),
                                   (1, 300, 200), (1, 37, 77), (1, 0, 100), (2, 300, 200),
                                   (2, 37, 77), (2, 1, 33), (0, 5, 100),
                                   (250, 300, 40), (131, 600, 20)])
def test_gemm_tile_shapes_and_no_stray_writes(dt, M, K, N):
    """C = A @ B through _gemm for every tile shape and masked tail, and over several
    L2 row blocks (gemm._block_rows: 54-108 rows at K = 300, a partial last one); C lives
    inside a wider NaN-filled buffer: the columns past N and the rows around stay NaN."""
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a, b = _rand(rng, (M, K), dt), _rand(rng, (K, N), dt)
    big = np.full((M + 2, N + 19), np.nan, dtype=dt)
    c_off, ldc = 1 * big.shape[1] + 3, big.shape[1]
    gemm._gemm(a, 0, K, 1, K, M, K, gemm.pack_b(b), N, big, c_off, ldc, 0, big[:0])
    ref = a.astype(np.float64) @ b.astype(np.float64)
    _check("C", big[1:M + 1, 3:N + 3], ref, dt, K)
    outside = np.ones(big.shape, dtype=bool)
    outside[1:M + 1, 3:N + 3] = False
    assert np.isnan(big[outside]).all(), "the tile wrote outside C"


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("K,N", [(32, 128), (300, 200), (37, 77), (5, 1000)])
def test_row_arm_is_bitwise_the_tile(dt, K, N):
    """A single row (the row arm: several panels of B at once, tile.py) gives bitwise
    the same row of a multi-row product (the plain tiles, split as evenly as the rows
    allow), with and without bias and beta: a recurrence's result does not depend on
    how its rows are split across threads."""
    rng = np.random.default_rng(K + N)
    a, b = _rand(rng, (13, K), dt), _rand(rng, (K, N), dt)
    bias, c0 = _rand(rng, (N,), dt), _rand(rng, (13, N), dt)
    bp = gemm.pack_b(b)
    bias = bias.reshape(1, N)  # _gemm's bias row
    for beta, bs in ((0, bias[:0]), (0, bias), (1, bias[:0])):
        for m in (1, 2, 3, 7, 8, 13):  # 8 and 13 rows: tiles of 4 + 4 and 5 + 4 + 4 (AVX2)
            many = c0.copy()
            gemm._gemm(a, 0, K, 1, K, m, K, bp, N, many, 0, N, beta, bs)
            one = c0[m - 1:m].copy()
            gemm._gemm(a, (m - 1) * K, K, 1, K, 1, K, bp, N, one, 0, N, beta, bs)
            assert np.array_equal(one[0], many[m - 1]), (beta, bs.shape, m)


@njit
def _mm_into(a, bp, c, ap):
    gemm.mm_into(a, bp, c, ap)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 7, 33), (6, 64, 64), (24, 37, 148), (37, 300, 17),
                                   (61, 257, 130), (200, 40, 20)])
def test_packed_a_is_bitwise_the_plain_product(dt, M, K, N):
    """A packed tile-major (pack_a, read with a_ts = K) gives bitwise the product of A
    read in place, for every row-tile remainder; mm_into with a scratch made for more
    rows than it gets (the active prefix of a packed batch) does too, and where the
    ISA does not pack (PACK_A off, or too few rows) it leaves the scratch alone."""
    from rnnfast.kernels.numba.tile import MR
    rng = np.random.default_rng(M + K + N)
    a, b = _rand(rng, (M, K), dt), _rand(rng, (K, N), dt)
    bp = gemm.pack_b(b)
    plain = np.full((M, N), np.nan, dtype=dt)
    gemm._gemm(a, 0, K, 1, K, M, K, bp, N, plain, 0, N, 0, plain[:0])
    ap = np.full(((M + MR - 1) // MR * MR, K), np.nan, dtype=dt)
    gemm.pack_a(a, ap)
    packed = np.full((M, N), np.nan, dtype=dt)
    gemm._gemm(ap, 0, 1, MR, K, M, K, bp, N, packed, 0, N, 0, packed[:0])
    assert np.array_equal(plain, packed)
    _check("C", packed, a.astype(np.float64) @ b, dt, K)
    big = np.vstack([a, a[:5]])  # scratch sized for more rows than the product gets
    scratch = gemm.a_scratch(big)
    assert scratch.shape == ((M + 5 + MR - 1) // MR * MR
                             if gemm.PACK_A and M + 5 >= gemm.PACK_A_MIN_ROWS else 0, K)
    scratch[:] = np.nan
    c = np.full((M, N), np.nan, dtype=dt)
    _mm_into(a, bp, c, scratch)
    assert np.array_equal(plain, c)
    if not (gemm.PACK_A and M >= gemm.PACK_A_MIN_ROWS):
        assert np.isnan(scratch).all()


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("N,K", [(1, 1), (37, 5), (64, 64), (200, 129), (800, 200)])
def test_pack_bt_is_pack_b_of_the_transpose(dt, N, K):
    """pack_bt(w) reads w [N, K] in place and makes exactly pack_b(w.T)'s panels: w.T's
    columns in panels of W, the last one zero-padded; written into a given buffer of
    that shape (a pooled one, whatever it held: NaN here), else into a new array."""
    w = _rand(np.random.default_rng(N + K), (N, K), dt)
    W = gemm.NV * gemm.ISA.lanes(np.dtype(dt).itemsize)
    P = (N + W - 1) // W
    ref = np.zeros((P, K, W), dt)
    for p in range(P):
        n = min(W, N - p * W)
        ref[p, :, :n] = w.T[:, p * W:p * W + n]
    assert np.array_equal(gemm.pack_b(np.ascontiguousarray(w.T)), ref)
    assert np.array_equal(gemm.pack_bt(w), ref)
    for pack, b in ((gemm.pack_bt, w), (gemm.pack_b, np.ascontiguousarray(w.T))):
        buf = np.full(ref.shape, np.nan, dt)
        assert np.shares_memory(pack(b, buf), buf) and np.array_equal(buf, ref)
        other = np.full((P + 1, K, W), np.nan, dt)  # not its shape: left alone
        out = pack(b, other)
        assert not np.shares_memory(out, other) and np.array_equal(out, ref)
        assert np.isnan(other).all()


@pytest.mark.parametrize("dt", DTYPES)
def test_gemm_beta_and_bias(dt):
    rng = np.random.default_rng(1)
    M, K, N = 9, 70, 77
    a, b = _rand(rng, (M, K), dt), _rand(rng, (K, N), dt)
    bias, c0 = _rand(rng, (N,), dt), _rand(rng, (M, N), dt)
    ref = a.astype(np.float64) @ b
    c = c0.copy()
    gemm._gemm(a, 0, K, 1, K, M, K, gemm.pack_b(b), N, c, 0, N, 1, c[:0])
    _check("C += A @ B", c, c0.astype(np.float64) + ref, dt, K)
    c = np.full((M, N), np.nan, dtype=dt)
    gemm._gemm(a, 0, K, 1, K, M, K, gemm.pack_b(b), N, c, 0, N, 0, bias.reshape(1, N))
    _check("C = A @ B + bias", c, ref + bias, dt, K)
    c = c0[:1].copy()  # one row: the row arm
    gemm._gemm(a, 0, K, 1, K, 1, K, gemm.pack_b(b), N, c, 0, N, 1, c[:0])
    _check("c += a @ B", c, c0[:1].astype(np.float64) + ref[:1], dt, K)
    c = np.full((1, N), np.nan, dtype=dt)
    gemm._gemm(a, 0, K, 1, K, 1, K, gemm.pack_b(b), N, c, 0, N, 0, bias.reshape(1, N))
    _check("c = a @ B + bias", c, ref[:1] + bias, dt, K)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("N,G,K", [(1, 1, 1), (100, 37, 148), (300, 7, 65),
                                   (gemm.CHUNK_ROWS + 777, 13, 40), (300, 301, 19)])
def test_matmul_tn_serial_parallel(dt, N, G, K):
    """a^T @ b over N rows (float64 across CHUNK_ROWS blocks past one block; G = 301:
    50 row tiles and a tail); the parallel driver splits the rows of the result and is
    bitwise equal to the serial."""
    rng = np.random.default_rng(N + G + K)
    a, b = _rand(rng, (N, G), dt), _rand(rng, (N, K), dt)
    ref = a.astype(np.float64).T @ b
    serial = np.full((G, K), np.nan, dtype=dt)
    gemm.matmul_tn_kernel(a, b, serial)
    _check("a^T b", serial, ref, dt, N)
    for parts in (2, 3):
        par = np.full((G, K), np.nan, dtype=dt)
        gemm.matmul_tn_kernel_parallel(a, b, par, parts)
        assert np.array_equal(par, serial), f"{parts} parts differ from the serial result"


def test_long_reduction_error_stays_small():
    """A 40k-row float32 a^T b: the float64 block sums keep the error near a single
    block's, well under a plain float32 running sum's."""
    rng = np.random.default_rng(3)
    a, b = _rand(rng, (40000, 8), np.float32), _rand(rng, (40000, 8), np.float32)
    ref = a.astype(np.float64).T @ b.astype(np.float64)
    out = np.empty((8, 8), np.float32)
    gemm.matmul_tn_kernel(a, b, out)
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < 2e-6, rel


@pytest.mark.parametrize("provider", ["numba", "torch"])
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (5, 3, 37, 9), (40, 8, 64, 64),
                                     (300, 7, 5, 3),  # torch: 2100 rows, three blocks
                                     (700, 7, 5, 11)])  # numba: 4900 rows, two blocks
def test_project_and_layer_grads(dt, T, B, I, H, provider, monkeypatch):
    """The layer GEMMs against torch float64, forward and reversed (with lengths), by
    either provider of the gradient GEMMs (gemm.layer_gemm_provider), and the parallel
    drivers bitwise equal to the serial ones. Past one float64 block of rows (numba's
    CHUNK_ROWS) torch's provider is compared at the long-sequence tolerance in float32:
    it sums 1024-row blocks in float32 and near-zero sums of ~5000 random products
    miss the per-step tolerance's atol there (numba's blocks sum in float64)."""
    monkeypatch.setenv(gemm.LAYER_GEMM_ENV, provider)
    G = 4 * H
    tdt = TORCH[dt]
    kind = "long" if (T * B > gemm.CHUNK_ROWS and dt == np.float32
                      and provider == "torch") else "kernel"
    g = torch.Generator().manual_seed(T * B + I)
    x = torch.randn(T, B, I, generator=g, dtype=tdt)
    w_ih = torch.randn(G, I, generator=g, dtype=tdt)
    bias = torch.randn(G, generator=g, dtype=tdt)
    dxp = torch.randn(T, B, G, generator=g, dtype=tdt)
    y = torch.randn(T, B, H, generator=g, dtype=tdt)
    h0 = torch.randn(B, H, generator=g, dtype=tdt)
    xd = x.double()
    assert_close("xp", nk.project(x, w_ih, bias), xd @ w_ih.double().t() + bias.double(), tdt)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    pad = torch.arange(T)[:, None] >= lengths[None, :]  # [T, B]: past a row's length
    for reverse, lens in ((False, None), (True, None), (True, lengths)):
        if lens is not None:  # as the kernels leave them: y and dxp are 0 in the padding
            dxp, y = dxp.masked_fill(pad[..., None], 0), y.masked_fill(pad[..., None], 0)
        dx, dw_ih, dw_hh, db, db_hh = nk.layer_grads(dxp, x, y, h0, w_ih, lens, reverse)
        d, yd = dxp.double(), y.double()
        if reverse:
            L = torch.full((B,), T) if lens is None else lens
            prev = torch.cat([yd[1:], torch.zeros_like(yd[:1])])  # h_{t-1} = y[t+1]
            for b in range(B):
                prev[L[b] - 1, b] = h0[b].double()
        else:
            prev = torch.cat([h0.double()[None], yd[:-1]])
        assert_close("dW_hh", dw_hh, torch.einsum("tbg,tbp->gp", d, prev), tdt, kind)
        assert_close("dW_ih", dw_ih, torch.einsum("tbg,tbi->gi", d, xd), tdt, kind)
        assert_close("db", db, d.sum((0, 1)), tdt, kind)
        assert torch.equal(db_hh, db)
        assert_close("dx", dx, d @ w_ih.double(), tdt, kind)
    # rows that name their own h_{t-1} (h_rows: y's row, or -1 - h0's row), in any
    # order and with repeats, as a packed batch's rows do: against a float64 gather
    N = T * B
    M = max(1, N - 2)
    h_rows = torch.randint(-B, N, (M,), generator=g)
    perm = torch.randperm(N, generator=g)[:M]
    dg = torch.randn(M, G, generator=g, dtype=tdt)
    src = torch.cat([y.reshape(N, H), h0]).double()
    prev = src[torch.where(h_rows >= 0, h_rows, N - 1 - h_rows)]
    for need_dx, dgh in ((True, None), (False, dg)):
        dx, dw_ih, dw_hh, db, db_hh = nk.layer_grads(
            dxp.reshape(N, G)[perm], x.reshape(N, I)[perm], y, h0, w_ih, None, False,
            need_dx=need_dx, dgh=dgh, h_rows=h_rows)
        d = dxp.reshape(N, G)[perm].double()
        dgd = d if dgh is None else dgh.double()
        assert_close("dW_hh (h_rows)", dw_hh, dgd.t() @ prev, tdt, kind)
        assert_close("dW_ih (h_rows)", dw_ih, d.t() @ x.reshape(N, I)[perm].double(), tdt, kind)
        assert_close("db_hh (h_rows)", db_hh, dgd.sum(0), tdt, kind)
        if need_dx:
            assert dx.shape == (M, I)
            assert_close("dx (h_rows)", dx, d @ w_ih.double(), tdt, kind)
    # the parallel drivers, forced: identical bits
    dxp_n = dxp.numpy().reshape(N, G)
    outs = [[np.empty((G, I), dt), np.empty((G, H), dt), np.empty(G, dt), np.empty(0, dt),
             np.empty((N, I), dt)] for _ in range(4)]
    # (h_rows: row n's h_{t-1} is y's row n - 1, row 0's is h0's row 0)
    for k, rows in ((0, np.empty(0, np.int64)), (2, np.arange(N, dtype=np.int64) - 1)):
        args = (dxp_n, dxp_n, x.numpy().reshape(N, I), y.numpy().reshape(N, H),
                h0.numpy(), dxp[0].numpy(), rows, w_ih.numpy(), True)
        # the serial kernel packs W_ih into its own array, the parallel one into a
        # NaN-poisoned buffer of the panels' shape (as _host.weight_panels hands it)
        # (and the first step's product into its own array, or into a poisoned [G, H])
        gemm.layer_grads_kernel(*args, *outs[k], np.zeros((0, 0, 0), dt),
                                np.zeros((0, 0), dt))
        numba.set_num_threads(2)
        buf = np.full(gemm.pack_b(w_ih.numpy()).shape, np.nan, dt)
        gemm.layer_grads_kernel_parallel(*args, *outs[k + 1], buf,
                                         np.full((G, H), np.nan, dt), 2)
        for s, p in zip(outs[k], outs[k + 1]):
            assert np.array_equal(s, p)
    xp_s, xp_p = np.empty((N, G), dt), np.empty((N, G), dt)
    w = w_ih.numpy()
    gemm.project_kernel(x.numpy().reshape(N, I), w, bias.numpy(), xp_s,
                        np.zeros((0, 0, 0), dt))
    gemm.project_kernel_parallel(x.numpy().reshape(N, I), w, bias.numpy(), xp_p,
                                 np.full(gemm.pack_bt(w).shape, np.nan, dt), 2)
    assert np.array_equal(xp_s, xp_p)


def test_layer_gemm_provider_choice(monkeypatch):
    """auto: small calls stay in the compiled launch; the first big one times both
    providers once per dtype and keeps the faster; a bad RNNFAST_LAYER_GEMM is refused
    by name."""
    monkeypatch.delenv(gemm.LAYER_GEMM_ENV, raising=False)
    monkeypatch.setattr(gemm, "_CHOICE", {})
    assert gemm.layer_gemm_provider(torch.float32, gemm.TORCH_GEMM_MIN_MACS - 1) == "numba"
    assert gemm.layer_gemm_choice(torch.float32) is None
    got = gemm.layer_gemm_provider(torch.float32, gemm.TORCH_GEMM_MIN_MACS)
    provider, times = gemm.layer_gemm_choice(torch.float32)
    assert got == provider == min(times, key=times.get)
    assert set(times) == {"numba", "torch"} and all(t > 0 for t in times.values())
    assert gemm.layer_gemm_choice(torch.float64) is None
    assert gemm.layer_gemm_choice(torch.float32, gemm.LARGE_GEMM_MACS) is None
    monkeypatch.setenv(gemm.LAYER_GEMM_ENV, "blas")
    with pytest.raises(ValueError, match="RNNFAST_LAYER_GEMM must be one of .*got 'blas'"):
        gemm.layer_gemm_provider(torch.float32, 1)


def test_layer_gemm_provider_calibrates_once_across_threads(monkeypatch):
    """Threads making a process's first big calls together get one calibration and one
    answer: the others wait for the first (without the lock each timed both providers,
    under each other's load, and could pick differently)."""
    import threading
    import time
    monkeypatch.delenv(gemm.LAYER_GEMM_ENV, raising=False)
    monkeypatch.setattr(gemm, "_CHOICE", {})
    calls = []

    def calibrate(dtype, *shape):
        calls.append(dtype)
        time.sleep(0.2)  # a calibration's ~50-100 ms, with room for every thread to ask
        return ("numba" if len(calls) == 1 else "torch", {})

    monkeypatch.setattr(gemm, "_calibrate", calibrate)
    start = threading.Barrier(4)
    got = []

    def ask():
        start.wait()
        got.append(gemm.layer_gemm_provider(torch.float32, gemm.TORCH_GEMM_MIN_MACS))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert calls == [torch.float32]
    assert got == ["numba"] * 4


# ---------------------------------------------------------------- vector math

@njit(cache=False)
def _apply(x, out):
    """out[k * n + j] = f_k(x[j]) for f = exp, sigmoid, tanh, in x's precision."""
    n = x.shape[0]
    L = V.lanes(x)
    for j in range(0, n, L):
        m = min(L, n - j)
        v = V.load(x, j, m)
        V.store(out, j, m, V.exp(v))
        V.store(out, n + j, m, V.sigmoid(v))
        V.store(out, 2 * n + j, m, V.tanh(v))


@pytest.mark.parametrize("dt", DTYPES)
def test_vector_exp_sigmoid_tanh(dt):
    x = np.concatenate([np.linspace(-30, 30, 1001), [0.0, -0.0, 1e-3, -1e-3, 1e-6, -3e-8,
                                                     80.0, -80.0, 750.0, -750.0,
                                                     np.inf, -np.inf, np.nan]])
    x = x.astype(dt)
    n = x.shape[0]
    out = np.full(3 * n + 5, -7.0, dtype=dt)  # 5 sentinels past the end
    _apply(x, out)
    assert (out[3 * n:] == -7.0).all(), "a masked tail store wrote past its lanes"
    xd = x.astype(np.float64)
    with np.errstate(all="ignore"):
        ref = [np.exp(xd), 1 / (1 + np.exp(-xd)), np.tanh(xd)]
    ulp = np.finfo(dt).eps
    lim = 700.0 if dt == np.float64 else 87.0  # exp's argument clamp
    for k, name in enumerate(("exp", "sigmoid", "tanh")):
        got = out[k * n:(k + 1) * n].astype(np.float64)
        assert np.array_equal(np.isnan(got), np.isnan(xd)), f"{name}: NaN must map to NaN only"
        ok = np.isfinite(xd) & (np.abs(xd) <= lim)
        # relative error, a few ulp of the vector's precision (tanh near 0 included)
        rel = np.abs(got[ok] - ref[k][ok]) / np.maximum(np.abs(ref[k][ok]), np.finfo(dt).tiny)
        assert rel.max() <= 8 * ulp, f"{name}: max relative error {rel.max():.3g}"
    # saturation: exactly 1 / -1 far out, finite exp; sigmoid exactly 0 where torch's
    # is (exp(-x) overflows), so a saturated gate's derivative is 0 and 0 * inf is NaN
    i_big, i_neg = int(np.where(xd == 750.0)[0][0]), int(np.where(xd == -750.0)[0][0])
    i_inf, i_ninf = int(np.where(xd == np.inf)[0][0]), int(np.where(xd == -np.inf)[0][0])
    assert out[n + i_big] == 1.0 and out[2 * n + i_big] == 1.0 and out[2 * n + i_neg] == -1.0
    assert out[n + i_inf] == 1.0 and out[2 * n + i_inf] == 1.0 and out[2 * n + i_ninf] == -1.0
    assert out[n + i_neg] == 0.0 and out[n + i_ninf] == 0.0 and np.isfinite(out[i_big])
    far = torch.sigmoid(torch.from_numpy(x[[i_neg, i_ninf, i_big, i_inf]])).numpy()
    assert np.array_equal(out[n + np.array([i_neg, i_ninf, i_big, i_inf])], far)


# ---------------------------------------------------------------- the dropout mask

# Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors):
# counter, key -> output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr, key, want", PHILOX_KAT)
def test_philox4x32_10_known_answers(ctr, key, want):
    from rnnfast.kernels.numba.dropout import philox4x32_10
    got = philox4x32_10(*(np.uint64(c) for c in ctr), *(np.uint64(k) for k in key))
    assert tuple(int(v) for v in got) == want


def _mask_reference(n, p, seed, dt):
    """The mask element by element from :func:`philox4x32_10` (the kernels run the same
    rounds on blocks of counters): word i % 4 of the block for counter i // 4."""
    from rnnfast.kernels.numba.dropout import philox4x32_10
    keep_below = min(round((1.0 - p) * 2.0 ** 32), 2 ** 32)
    scale = dt(1.0) / dt(1.0 - p) if p < 1 else dt(0.0)
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    out = np.empty(n, dtype=dt)
    for g in range((n + 3) // 4):
        words = philox4x32_10(np.uint64(g & 0xFFFFFFFF), np.uint64(g >> 32), np.uint64(0),
                              np.uint64(0), k0, k1)
        for j in range(min(4, n - 4 * g)):
            out[4 * g + j] = scale if int(words[j]) < keep_below else 0
    return out


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 255, 256, 257, 1021, 3 * 256 + 7])
def test_dropout_mask_matches_reference(dt, n):
    """Every element, at lengths around the 4-word group and the 64-group block, in
    both dtypes, against the element-by-element reference; serial and parallel kernels
    bitwise equal."""
    from rnnfast.kernels.numba import _host, dropout
    like = torch.empty(n, dtype=TORCH[dt])
    seed = (0x9E3779B97F4A7C15 * n) % (1 << 64)
    want = _mask_reference(n, 0.3, seed, dt)
    for parts in (1, 2):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_host, "elementwise_threads", lambda n, m, parts=parts: parts)
            got = dropout.dropout_mask(like, 0.3, seed)
        assert got.dtype == like.dtype and got.shape == like.shape
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{parts} threads")
    from rnnfast import reference
    np.testing.assert_array_equal(reference.dropout_mask((n,), TORCH[dt], 0.3, seed).numpy(),
                                  want, err_msg="reference.dropout_mask (torch ops)")
    out = np.full(n, -1, dtype=dt)  # three parts (on the threads there are)
    dropout.dropout_mask_kernel_parallel(out, np.uint64(seed),
                                         np.uint64(round(0.7 * 2.0 ** 32)),
                                         dt(1.0) / dt(1.0 - 0.3), 3)
    np.testing.assert_array_equal(out, want, err_msg="3 parts")


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_dropout_mask_statistics(p):
    """Kept fraction within 5 standard deviations of 1 - p over 2^20 elements; kept
    values exactly torch's scale 1 / (1 - p) in float32; neighbouring elements and
    successive seeds uncorrelated (|r| < 5 / sqrt(n))."""
    n = 1 << 20
    like = torch.empty(n)
    m = nk.dropout_mask(like, p, 12345)
    kept = (m != 0).double()
    sd = max((p * (1 - p) / n) ** 0.5, 1e-12)
    assert abs(kept.mean().item() - (1 - p)) <= 5 * sd + 1e-12
    if p < 1:
        assert torch.equal(m[m != 0].unique(), torch.tensor([1.0]) / torch.tensor(1 - p))
    if 0 < p < 1:
        bound = 5 / n ** 0.5
        for a, b in ((kept[:-1], kept[1:]), (kept[:-4], kept[4:]),
                     (kept, (nk.dropout_mask(like, p, 12346) != 0).double())):
            r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
            assert abs(r) < bound, r


@pytest.mark.parametrize("p", [1e-6, 0.2, 0.999999, 1.0])
@pytest.mark.parametrize("seed", [0, 2 ** 63 - 1, 2 ** 64 - 1])
def test_dropout_mask_kernel_equals_torch_ops(p, seed):
    """The kernel and reference.dropout_mask (torch's int64 ops, the path while the
    kernels compile) bitwise, both dtypes, over ~2^20 elements (counters past one
    64-lane block many times; the int64 products that wrap)."""
    from rnnfast import reference
    for dtype in (torch.float32, torch.float64):
        shape = (257, 4093)
        got = nk.dropout_mask(torch.empty(shape, dtype=dtype), p, seed)
        assert torch.equal(got, reference.dropout_mask(shape, dtype, p, seed))


def test_dropout_mask_errors():
    like = torch.empty(8)
    with pytest.raises(ValueError, match=r"dropout probability has to be between 0 and 1, "
                                         r"but got 1.5"):
        nk.dropout_mask(like, 1.5, 0)
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\^64\), got -1"):
        nk.dropout_mask(like, 0.5, -1)
    with pytest.raises(ValueError, match=r"float32 or float64 CPU tensor, got torch.int64"):
        nk.dropout_mask(torch.empty(8, dtype=torch.int64), 0.5, 0)
    assert nk.dropout_mask(torch.empty(0, 3), 0.5, 0).shape == (0, 3)


def test_layer_gemm_provider_size_classes(monkeypatch):
    """Calls from LARGE_GEMM_MACS up are a class of their own, timed once at the large
    shape; each class keeps its own answer, so a CPU where torch.mm wins only the large
    GEMMs gives them to torch.mm and keeps the rest on the tile."""
    monkeypatch.delenv(gemm.LAYER_GEMM_ENV, raising=False)
    monkeypatch.setattr(gemm, "_CHOICE", {})
    shapes = []

    def calibrate(dtype, *shape):
        shapes.append(shape)
        big = shape == gemm.CALIBRATION_SHAPES["large"]
        return ("torch" if big else "numba", {"numba": 2.0 if big else 1.0, "torch": 1.5})

    monkeypatch.setattr(gemm, "_calibrate", calibrate)
    mid, large = gemm.TORCH_GEMM_MIN_MACS, gemm.LARGE_GEMM_MACS
    assert gemm.layer_gemm_provider(torch.float32, mid) == "numba"
    assert gemm.layer_gemm_provider(torch.float32, large - 1) == "numba"
    assert shapes == [gemm.CALIBRATION_SHAPES["mid"]]
    assert gemm.layer_gemm_provider(torch.float32, large) == "torch"
    assert gemm.layer_gemm_provider(torch.float32, 50 * large) == "torch"
    assert shapes == [gemm.CALIBRATION_SHAPES["mid"], gemm.CALIBRATION_SHAPES["large"]]
    assert gemm.layer_gemm_choice(torch.float32, large)[0] == "torch"
    assert set(gemm.layer_gemm_choices(torch.float32)) == {"mid", "large"}
    assert gemm.layer_gemm_choices(torch.float64) == {}


def test_layer_gemm_calibration_is_not_the_callers_work(monkeypatch):
    """auto's timing of the two providers runs outside the caller's dispatch modes: a
    FlopCounterMode around a layer's first big backward counted the calibration's
    GEMMs (2.4 GFLOP at T = 50, B = 16, H = 64: 93x the layer's own)."""
    from torch.utils.flop_counter import FlopCounterMode
    monkeypatch.delenv(gemm.LAYER_GEMM_ENV, raising=False)
    monkeypatch.setattr(gemm, "_CHOICE", {})
    with FlopCounterMode(display=False) as fc:
        gemm.layer_gemm_provider(torch.float32, gemm.TORCH_GEMM_MIN_MACS)
    assert gemm.layer_gemm_choice(torch.float32) is not None
    assert fc.get_total_flops() == 0


def test_layer_gemm_provider_untimed_when_deterministic(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) auto is the tile without timing:
    a timed choice between two close providers changed the result's last bits from one
    run of a program to the next."""
    monkeypatch.delenv(gemm.LAYER_GEMM_ENV, raising=False)
    monkeypatch.setattr(gemm, "_CHOICE", {})

    def calibrate(*args):
        raise AssertionError("timed under deterministic algorithms")

    monkeypatch.setattr(gemm, "_calibrate", calibrate)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for macs in (gemm.TORCH_GEMM_MIN_MACS, gemm.LARGE_GEMM_MACS):
            assert gemm.layer_gemm_provider(torch.float32, macs) == "numba"
    finally:
        torch.use_deterministic_algorithms(was)
    monkeypatch.setenv(gemm.LAYER_GEMM_ENV, "torch")
    torch.use_deterministic_algorithms(True)
    try:
        assert gemm.layer_gemm_provider(torch.float32, gemm.LARGE_GEMM_MACS) == "torch"
    finally:
        torch.use_deterministic_algorithms(was)


def test_layer_gemm_calibration_outside_function_modes(monkeypatch):
    """The timing's tensors are the CPU's whatever the caller's default device (a
    torch.device context, a TorchFunctionMode: here 'meta', whose tensors have no data),
    and a TorchFunctionMode of the caller's sees none of its ops."""
    from torch.overrides import TorchFunctionMode
    monkeypatch.delenv(gemm.LAYER_GEMM_ENV, raising=False)
    monkeypatch.setattr(gemm, "_CHOICE", {})
    seen = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), Watch():
        assert gemm.layer_gemm_provider(torch.float32, gemm.TORCH_GEMM_MIN_MACS) in (
            "numba", "torch")
    assert seen == []
