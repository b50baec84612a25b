"""Pieces shared by the Triton recurrences: pointwise math, the grid barrier, step order.

Every helper here is a ``@triton.jit`` function inlined into the kernels. The math is
written with ``tl.exp`` only (no libdevice), so the same code runs compiled for the GPU
and in the CPU interpreter (``TRITON_INTERPRET=1``), which has no libdevice.
"""

import triton
import triton.language as tl

# Activation codes (same values as rnnfast.kernels.TANH / RELU / LEAKY_RELU).
TANH = tl.constexpr(0)
RELU = tl.constexpr(1)
LEAKY_RELU = tl.constexpr(2)
# Reduction chunk of the streamed (non-resident) recurrent product.
STREAM_BK = tl.constexpr(64)


# Below this |x|, tanh is an odd polynomial (float32) or rational function (float64) of
# x: Cephes' tanhf / tanh fits for |x| < 0.625 (S. L. Moshier, Cephes Math Library).
TANH_SERIES_BELOW = tl.constexpr(0.625)


@triton.jit
def tanh(x):
    """tanh(x) to a few ulp relative, near 0 too; exactly +-1 when saturated; NaN in,
    NaN out. For |x| >= 0.625: sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= exp(-1.25),
    so 1 - e >= 0.71 has no cancellation, and nothing overflows. Below, that form's
    absolute error (an ulp of 1) was the whole relative error: float32 tanh(1e-5) was 4e-3
    off and tanh(1e-8) exactly 0, where torch's are ~1 ulp; the series has none."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    r = (1.0 - e) / (1.0 + e)
    r = tl.where(x < 0, -r, r)
    z = x * x
    if x.dtype == tl.float64:  # x + x z P(z) / Q(z), Cephes tanh
        p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z \
            - 1.61468768441708447952e3
        q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z \
            + 4.84406305325125486048e3
        s = x + x * z * (p / q)
    else:  # x + x z P(z), Cephes tanhf
        s = (((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
               + 1.33314422036e-1) * z - 3.33332819422e-1) * z) * x + x
    return tl.where(a < TANH_SERIES_BELOW, s, r)


@triton.jit
def sigmoid(x):
    # exp(-x) overflows to inf for very negative x: 1 / inf = 0, never NaN.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def sum_of_squares(b_g):
    """The float64 sum of the squares of a block's elements (any float dtype), each
    square taken in float64: a BPTT step's partial ||dL/dh_t||^2. Squared in float32,
    norms below ~1e-19 read 0 and above ~2e19 inf (the numba kernels' alike, fixed the
    same way: kernels/numba/norms.py), where torch's norm of float32 values sums in
    double."""
    b64 = b_g.to(tl.float64)
    return tl.sum(tl.sum(b64 * b64, axis=1), axis=0)


@triton.jit
def activate(z, activation, slope):
    """act(z) for a runtime activation code. NaN stays NaN (``z <= 0`` is false)."""
    out = tl.where(z <= 0, 0.0, z).to(z.dtype)
    if activation == LEAKY_RELU:
        out = tl.where(z <= 0, z * slope, z).to(z.dtype)
    if activation == TANH:
        out = tanh(z).to(z.dtype)
    return out


@triton.jit
def activate_backward(g, h, activation, slope):
    """dL/dz = g * act'(z) from g = dL/dh and the output h = act(z) (valid because
    slope >= 0), as torch's backward functions compute it: relu, threshold_backward's
    select (0 where h <= 0, else g: an Inf or NaN g at a unit that is off gives 0, a
    NaN unit passes g on); leaky_relu, g where h > 0 else g * slope
    (leaky_relu_backward); tanh, g * (1 - h^2)."""
    d = tl.where(h <= 0, 0.0, g).to(g.dtype)
    if activation == LEAKY_RELU:
        d = tl.where(h > 0, g, g * slope).to(g.dtype)
    if activation == TANH:
        d = (g * (1.0 - h * h)).to(g.dtype)
    return d


@triton.jit
def step_time(s, T, reverse, backward: tl.constexpr):
    """Time index of processing step s. Forward order: t = s (T-1-s when reverse); the
    backward pass walks the forward order backwards."""
    if backward:
        t = T - 1 - s
        if reverse:
            t = s
    else:
        t = s
        if reverse:
            t = T - 1 - s
    return t


@triton.jit
def grid_barrier(counter, target):
    """All programs of the grid meet here. ``counter`` (int32, zeroed before the launch)
    only grows: a program adds 1 and waits until it reads ``target`` = (barriers passed
    so far + 1) * programs. GPU only, and only correct when every program of the grid is
    resident at once (the launcher caps the grid at one program per SM)."""
    # Every thread of this program has issued its stores before thread 0 releases them.
    tl.debug_barrier()
    tl.atomic_add(counter, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def streamed_dot(acc, a_ptr, a_row, o_b, m_b, w_ptr, w_k, o_wn, m_n, K, GA, GW,
                 NG: tl.constexpr, KG: tl.constexpr, BK: tl.constexpr,
                 W_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BB, BN] += A @ W with the reduction streamed in BK-wide chunks, W re-read
    (from L2) every call: the path for weight tiles too large to keep in registers.

    The reduction index is k = g * KG + m (g < NG groups, m < K valid of KG):
    A[b, k] = a_ptr[b * a_row + g * GA + m];  W[k, n] = w_ptr[(g * GW + m) * w_k + o_wn[n]].
    """
    for g in tl.static_range(NG):
        for k0 in range(0, KG, BK):
            o_k = k0 + tl.arange(0, BK)  # [BK]
            m_k = o_k < K
            b_a = tl.load(a_ptr + o_b[:, None] * a_row + g * GA + o_k[None, :],
                          mask=m_b[:, None] & m_k[None, :], other=0.0,
                          cache_modifier=".cg")  # [BB, BK]
            b_w = tl.load(w_ptr + (g * GW + o_k)[:, None] * w_k + o_wn[None, :],
                          mask=m_k[:, None] & m_n[None, :], other=0.0)  # [BK, BN]
            acc += tl.dot(b_a.to(W_DTYPE), b_w, input_precision=PRECISION,
                          out_dtype=acc.dtype)
    return acc


@triton.jit
def _split_index(NK: tl.constexpr, BK: tl.constexpr, KG: tl.constexpr, G_STRIDE):
    """Reduction index kk = c * BK + k of chunk c < NK, as (g * G_STRIDE + m, m), with
    g = kk // KG the group and m = kk % KG the index inside it: [NK, BK] each."""
    kk = tl.arange(0, NK)[:, None] * BK + tl.arange(0, BK)[None, :]
    m = kk % KG
    return (kk // KG) * G_STRIDE + m, m


@triton.jit
def load_weights(w_ptr, w_k, o_wn, m_n, K, GW, NK: tl.constexpr, BK: tl.constexpr,
                 KG: tl.constexpr):
    """A weight tile W [NK*BK, BN] split into NK reduction chunks: [NK, BK, BN], with
    W[kk, n] = w_ptr[(g * GW + m) * w_k + o_wn[n]] (kk = g * KG + m, zero where m >= K)."""
    o_w, m = _split_index(NK, BK, KG, GW)
    return tl.load(w_ptr + o_w[:, :, None] * w_k + o_wn[None, None, :],
                   mask=(m < K)[:, :, None] & m_n[None, None, :], other=0.0)


@triton.jit
def resident_dot(acc, a_ptr, a_row, o_b, m_b, b_w, K, GA, NK: tl.constexpr,
                 BK: tl.constexpr, KG: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BB, BN] += A @ W for a weight tile b_w [NK, BK, BN] from :func:`load_weights`
    (kept on chip by the caller). The NK chunks are one batched product, so warps split
    the reduction instead of each holding all of it; partials are then summed in a fixed
    order. A[b, kk] = a_ptr[b * a_row + g * GA + m]."""
    o_a, m = _split_index(NK, BK, KG, GA)
    b_a = tl.load(a_ptr + o_b[None, :, None] * a_row + o_a[:, None, :],
                  mask=m_b[None, :, None] & (m < K)[:, None, :], other=0.0,
                  cache_modifier=".cg")  # [NK, BB, BK]
    part = tl.dot(b_a.to(b_w.dtype), b_w, input_precision=PRECISION,
                  out_dtype=acc.dtype)  # [NK, BB, BN]
    return acc + tl.sum(part, axis=0)
