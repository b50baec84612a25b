"""Two launcher behaviours of issue 13, checked bitwise against the paths they shortcut.

* Packed batches (numba): with lengths non-increasing (a PackedSequence's order) each
  step's products run on the active prefix of a thread's rows only. The same problem
  with its rows reversed (lengths increasing: every step runs every row, the path that
  test_kernels checks against autograd) must give bitwise the same outputs and
  gradients, row for row; the per-step norms are sums in another row order, so close.
* ``train=False`` (every kernel backend): the forward saves nothing for backward (empty
  gates / cs) and returns bitwise the same y, h_n (, c_n) as ``train=True``.
"""

import numpy as np
import pytest
import torch

from rnnfast import dispatch
from rnnfast.kernels.numba.packed import chunk_bounds

from .cases import CELLS, LEAKY_SLOPE, activation_code, kernel_backends, kernel_problem, shapes_for
from .tolerances import assert_close

# (B, T, H): one thread's rows (serial kernels), and batches large enough for the
# batch-parallel kernels (B * H * G past config.PARALLEL_MIN_MACS), uneven chunks too.
PREFIX_SHAPES = [(7, 9, 37), (1, 4, 5), (16, 12, 80), (13, 30, 64)]
PREFIX_CASES = [(cell, B, T, H, dt, rev)
                for cell in CELLS for (B, T, H) in PREFIX_SHAPES
                for dt in (torch.float32, torch.float64) for rev in (False, True)]


def _pid(c):
    cell, B, T, H, dt, rev = c
    return f"{cell}-B{B}-T{T}-H{H}-{str(dt)[6:]}-numba{'-rev' if rev else ''}"


def _sorted_lengths(B, T, seed):
    """Non-increasing lengths in [1, T] with the longest = T, a length-1 row and, from
    B = 4 on, a tie; mostly distinct, so the reversed order is unsorted in every chunk."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if B > 1:
        lengths[-1] = 1
    if B >= 4:
        lengths[2] = lengths[1]
    return lengths.sort(descending=True).values


def _permuted(p, perm):
    """The problem with its batch rows in the order ``perm``."""
    out = {}
    for k, v in p.items():
        if v is None or k in ("w_hh", "w_hr", "b_hn"):
            out[k] = v
        elif k == "xp":
            out[k] = v[:, perm].contiguous()
        else:
            out[k] = v[perm].contiguous()
    return out


def _run(k, cell, p, reverse, dy, dstates):
    """Forward and backward of one recurrence -> {name: tensor} with the batch axis
    named (for permuting back): name -> (tensor, batch axis or None)."""
    if cell.startswith("lstm"):
        y, h_n, c_n, gates, cs = k.lstm_fwd(p["xp"], p["w_hh"], p["w_hr"], p["h0"],
                                            p["c0"], p["lengths"], reverse)
        dxp, dh0, dc0, dhs, norms = k.lstm_bwd(dy, dstates[0], dstates[1], gates, cs,
                                               p["c0"], p["w_hh"], p["w_hr"], p["lengths"],
                                               reverse)
        res = dict(y=(y, 1), h_n=(h_n, 0), c_n=(c_n, 0), gates=(gates, 1), cs=(cs, 1),
                   dxp=(dxp, 1), dh0=(dh0, 0), dc0=(dc0, 0))
        if p["w_hr"] is not None:
            res["dhs"] = (dhs, 1)
    elif cell == "gru":
        y, h_n, gates = k.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"], p["lengths"],
                                  reverse)
        dxp, dgh, dh0, norms = k.gru_bwd(dy, dstates[0], y, gates, p["h0"], p["w_hh"],
                                         p["lengths"], reverse)
        res = dict(y=(y, 1), h_n=(h_n, 0), gates=(gates, 1), dxp=(dxp, 1), dgh=(dgh, 1),
                   dh0=(dh0, 0))
    else:
        act = activation_code(cell)
        y, h_n = k.rnn_fwd(p["xp"], p["w_hh"], p["h0"], p["lengths"], reverse, act,
                           LEAKY_SLOPE)
        dxp, dh0, norms = k.rnn_bwd(dy, dstates[0], y, p["w_hh"], p["lengths"], reverse,
                                    act, LEAKY_SLOPE)
        res = dict(y=(y, 1), h_n=(h_n, 0), dxp=(dxp, 1), dh0=(dh0, 0))
    res["norms"] = (norms, None)
    return res


def _assert_bitwise(name, got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, name
    diff = (got != want) & ~(torch.isnan(got) & torch.isnan(want))
    if diff.any():
        idx = diff.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(diff.sum())} of {got.numel()} elements differ "
                             f"bitwise (first at {idx}), max |diff| "
                             f"{float((got - want).abs().nan_to_num().max()):.3g}")


@pytest.mark.skipif("numba" not in kernel_backends(), reason="numba kernels not tested here")
@pytest.mark.parametrize("cell,B,T,H,dtype,reverse", PREFIX_CASES,
                         ids=[_pid(c) for c in PREFIX_CASES])
def test_sorted_prefix_matches_unsorted(cell, B, T, H, dtype, reverse):
    k = dispatch.kernel_module("numba")
    p = kernel_problem(cell, B, T, H, dtype, "full", seed=B * 5 + T * 3 + H)
    p["lengths"] = _sorted_lengths(B, T, seed=B + T + H)
    g = torch.Generator().manual_seed(7)
    P = p["h0"].shape[1]
    dy = torch.randn(T, B, P, generator=g, dtype=dtype)
    dstates = [torch.randn(B, P, generator=g, dtype=dtype)]
    if cell.startswith("lstm"):
        dstates.append(torch.randn(p["c0"].shape, generator=g, dtype=dtype))
    perm = torch.arange(B - 1, -1, -1)  # lengths increasing: no chunk is sorted
    if B > 1:
        assert bool((p["lengths"][perm].diff() > 0).any())
    got = _run(k, cell, p, reverse, dy, dstates)
    q = _permuted(p, perm)
    want = _run(k, cell, q, reverse, dy[:, perm].contiguous(),
                [d[perm].contiguous() for d in dstates])
    for name, (a, axis) in got.items():
        b = want[name][0]
        if axis is None:
            assert_close(name, a, b, dtype)
        else:
            _assert_bitwise(name, a.index_select(axis, perm), b)


@pytest.mark.skipif("numba" not in kernel_backends(), reason="numba kernels not tested here")
@pytest.mark.parametrize("nchunks", [2, 3, 8])
def test_chunk_bounds(nchunks):
    g = np.random.default_rng(nchunks)
    for B in (nchunks, nchunks + 1, 32, 57):
        lengths = np.sort(g.integers(1, 101, B))[::-1].copy()
        bounds = chunk_bounds(lengths, nchunks)
        assert bounds[0] == 0 and bounds[-1] == B
        assert (np.diff(bounds) >= 1).all(), bounds
        tokens = np.add.reduceat(lengths, bounds[:-1])
        assert tokens.sum() == lengths.sum()
        if B >= 8 * nchunks:  # enough rows for the split to be near even
            assert tokens.max() <= lengths.sum() / nchunks + lengths.max(), (bounds, tokens)
        unsorted = lengths[::-1].copy()
        rows = chunk_bounds(unsorted, nchunks)
        assert rows.tolist() == [c * B // nchunks for c in range(nchunks + 1)]
    one = np.array([100, 1, 1, 1, 1], dtype=np.int64)  # one row holds most tokens
    bounds = chunk_bounds(one, 2)
    assert bounds.tolist() == [0, 1, 5]


INFER_CASES = [(be, cell, B, T, H, dt, rev, lk)
               for be in kernel_backends() for cell in CELLS
               for (B, T, H) in shapes_for(be)[:3]
               for dt in (torch.float32, torch.float64) for rev in (False, True)
               for lk in ("full", "ragged")]


def _iid(c):
    be, cell, B, T, H, dt, rev, lk = c
    return f"{cell}-B{B}-T{T}-H{H}-{str(dt)[6:]}-{be}{'-rev' if rev else ''}-{lk}"


@pytest.mark.parametrize("backend,cell,B,T,H,dtype,reverse,lengths_kind", INFER_CASES,
                         ids=[_iid(c) for c in INFER_CASES])
def test_train_false_saves_nothing(backend, cell, B, T, H, dtype, reverse, lengths_kind):
    k = dispatch.kernel_module(backend)
    p = kernel_problem(cell, B, T, H, dtype, lengths_kind, seed=B * 3 + T + H)

    def fwd(train):
        if cell.startswith("lstm"):
            return k.lstm_fwd(p["xp"], p["w_hh"], p["w_hr"], p["h0"], p["c0"],
                              p["lengths"], reverse, train=train)
        if cell == "gru":
            return k.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"], p["lengths"], reverse,
                             train=train)
        return k.rnn_fwd(p["xp"], p["w_hh"], p["h0"], p["lengths"], reverse,
                         activation_code(cell), LEAKY_SLOPE, train=train)

    trained, inferred = fwd(True), fwd(False)
    n_out = 3 if cell.startswith("lstm") else 2  # y, h_n (, c_n); then what is saved
    assert len(trained) == len(inferred)
    for name, a, b in zip(("y", "h_n", "c_n"), trained[:n_out], inferred[:n_out]):
        _assert_bitwise(name, b, a)
    for saved, empty in zip(trained[n_out:], inferred[n_out:]):
        assert saved.numel() > 0
        assert empty.shape == (0,) and empty.dtype == dtype and empty.device == saved.device
