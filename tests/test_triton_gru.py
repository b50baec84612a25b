"""The Triton GRU kernels (kernels/triton/gru.py) against torch autograd on the reference
recurrence (rnnfast.reference.gru_recurrence).

Runs in Triton's CPU interpreter only (``TRITON_INTERPRET=1 python -m pytest
tests/test_triton_gru.py``; tests/run.sh's interpreter pass): the one-step-per-launch
path, several hidden-dimension programs (H=5: 2 forward programs; H=17: 5 forward and
2 backward programs), float32 and float64, weights on chip and streamed. Every output
buffer is NaN-poisoned (tests/conftest.py), so an element a kernel never wrote fails.
The persistent all-steps launch is CUDA only; the compile check
(``python -m rnnfast.kernels.triton.compile_check --only gru``) builds it for sm_80 and
sm_90.
"""

import zlib

import pytest
import torch

from rnnfast.kernels.triton.config import triton_interpreting

if not triton_interpreting():
    pytest.skip("the Triton GRU tests run under TRITON_INTERPRET=1", allow_module_level=True)

from rnnfast import reference  # noqa: E402
from rnnfast.kernels import triton as tr  # noqa: E402
from rnnfast.kernels.triton import config  # noqa: E402

from .tolerances import assert_close  # noqa: E402

# (B, T, H): 2 forward programs of 4 units; one unit, one step, one row; 4 forward
# programs and a width that is a tile multiple; 2 backward programs of 16 units.
SHAPES = [(3, 4, 5), (1, 1, 1), (2, 3, 16), (2, 3, 17)]
DIRS = [("fwd", False, False), ("rev", True, False), ("len", False, True),
        ("revlen", True, True)]
DTYPES = [torch.float32, torch.float64]


def _dname(dtype):
    return str(dtype).replace("torch.", "")


def _shape_id(s):
    return "B{}-T{}-H{}".format(*s)


@pytest.fixture(params=["resident", "streamed"])
def weights(request, monkeypatch):
    """Both ways a program gets its weights: kept on chip, or streamed every step."""
    if request.param == "streamed":
        monkeypatch.setattr(config, "SMEM_BUDGET", 0)
    return request.param


def _lengths(B, T, on):
    if not on:
        return None
    g = torch.Generator().manual_seed(B * 100 + T)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0] = T
    return lens


def _problem(B, T, H, dtype, seed, bias=True):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return dict(xp=rand(T, B, 3 * H), w_hh=rand(3 * H, H, scale=0.6 / H**0.5),
                b_hn=rand(H) if bias else None, h0=rand(B, H), dy=rand(T, B, H),
                dh_n=rand(B, H))


def _previous_states(y, h0, lengths, reverse):
    """h_{t-1} of every step [T, B, H]: y at the previous forward step while the row was
    active there, else h0."""
    T = y.shape[0]
    hp = torch.empty_like(y)
    for t in range(T):
        tf = t + 1 if reverse else t - 1
        if not 0 <= tf < T:
            hp[t] = h0
        elif lengths is None:
            hp[t] = y[tf]
        else:
            hp[t] = torch.where((tf < lengths)[:, None], y[tf], h0)
    return hp


def _expected(p, lengths, reverse):
    """Autograd on the reference: y, h_n, gates (r, z, n, hn; 0 where inactive), and
    dxp, dh0, norms, dW_hh, db_hn for loss = <y, dy> + <h_n, dh_n>."""
    leaves = {k: (None if p[k] is None else p[k].clone().requires_grad_())
              for k in ("xp", "w_hh", "b_hn", "h0")}
    T, B, G = p["xp"].shape
    H = G // 3
    probe = torch.zeros(T, dtype=torch.float64, requires_grad=True)
    y, h_n = reference.gru_recurrence(leaves["xp"], leaves["w_hh"], leaves["b_hn"],
                                      leaves["h0"], lengths, reverse, probe)
    ((y * p["dy"]).sum() + (h_n * p["dh_n"]).sum()).backward()
    with torch.no_grad():
        hp = _previous_states(y, p["h0"], lengths, reverse)
        gh = hp @ p["w_hh"].t()
        if p["b_hn"] is not None:
            gh[..., 2 * H:] += p["b_hn"]
        xr, xz, xn = p["xp"].chunk(3, dim=2)
        hr, hz, hn = gh.chunk(3, dim=2)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        gates = torch.cat([r, z, torch.tanh(xn + r * hn), hn], dim=2)
        if lengths is not None:
            active = torch.arange(T)[:, None] < lengths[None, :]  # [T, B]
            gates = gates * active[..., None]
    db_hn = leaves["b_hn"].grad if p["b_hn"] is not None else None
    return dict(y=y.detach(), h_n=h_n.detach(), gates=gates, hp=hp,
                dxp=leaves["xp"].grad, dh0=leaves["h0"].grad, norms=probe.grad,
                dw_hh=leaves["w_hh"].grad, db_hn=db_hn)


def _check(p, lengths, reverse, dtype):
    H = p["h0"].shape[1]
    e = _expected(p, lengths, reverse)
    y, h_n, gates = tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"], lengths, reverse)
    assert tr.last_launch["kernel"] == "gru_fwd"
    tiles = -(-p["h0"].shape[0] // config.BLOCK_B)
    assert tr.last_launch["grid"] == (-(-H // config.pick("gru_fwd", H, H, dtype).BH),
                                      min(tiles, config.MAX_BATCH_PROGRAMS or tiles))
    for name, out in (("y", y), ("h_n", h_n), ("gates", gates)):
        assert_close(name, out, e[name], dtype=dtype)
    dxp, dgh, dh0, norms = tr.gru_bwd(p["dy"], p["dh_n"], y, gates, p["h0"], p["w_hh"],
                                      lengths, reverse)
    assert norms.dtype == torch.float64 and norms.shape == (p["xp"].shape[0],)
    assert_close("dxp", dxp, e["dxp"], dtype=dtype)
    assert_close("dh0", dh0, e["dh0"], dtype=dtype)
    assert_close("norms", norms, e["norms"], dtype=dtype)
    # dgh: dxp in the r and z blocks, dxp_n * r in the n block; and what the layer GEMMs
    # make of it: dW_hh = sum_t dgh_t^T h_{t-1}, db_hn = sum dgh_n.
    assert torch.equal(dgh[..., :2 * H], dxp[..., :2 * H])
    assert_close("dgh_n", dgh[..., 2 * H:], dxp[..., 2 * H:] * gates[..., :H], dtype=dtype)
    dw = torch.einsum("tbg,tbh->gh", dgh.double(), e["hp"].double())
    assert_close("dW_hh", dw, e["dw_hh"].double(), dtype=dtype)
    if e["db_hn"] is not None:
        assert_close("db_hn", dgh[..., 2 * H:].sum((0, 1)), e["db_hn"], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dname)
@pytest.mark.parametrize("direction", DIRS, ids=[d[0] for d in DIRS])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=_shape_id)
def test_gru_kernels(shape, direction, dtype):
    """Weights on chip: every output and gradient against autograd."""
    B, T, H = shape
    _, reverse, with_len = direction
    p = _problem(B, T, H, dtype, zlib.crc32(repr(shape).encode()))
    _check(p, _lengths(B, T, with_len), reverse, dtype)
    assert tr.last_launch["config"].RESIDENT


@pytest.mark.parametrize("dtype", DTYPES, ids=_dname)
@pytest.mark.parametrize("direction", [DIRS[0], DIRS[3]], ids=["fwd", "revlen"])
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 17)], ids=_shape_id)
def test_gru_kernels_several_programs(shape, direction, dtype, weights):
    """Several programs along the hidden dimension exchanging h_{t-1} and dgh, with the
    weights on chip or streamed from memory every step."""
    B, T, H = shape
    _, reverse, with_len = direction
    p = _problem(B, T, H, dtype, zlib.crc32(repr(shape).encode()))
    _check(p, _lengths(B, T, with_len), reverse, dtype)
    assert tr.last_launch["config"].RESIDENT == (weights == "resident")
    if H == 17:
        assert tr.last_launch["grid"][0] == 2  # backward: 2 programs of 16 units


def test_gru_without_bias():
    """b_hn=None is b_hn = 0."""
    p = _problem(2, 3, 5, torch.float64, 5, bias=False)
    _check(p, _lengths(2, 3, True), False, torch.float64)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gru_programs_loop_over_batch_tiles(reverse, monkeypatch):
    """A grid capped along the batch axis (as the persistent launch caps it to the SMs)
    runs every batch tile: B=18 is 2 tiles of 16 rows over 1 program per unit tile."""
    monkeypatch.setattr(config, "MAX_BATCH_PROGRAMS", 1)
    p = _problem(18, 2, 5, torch.float64, 9)
    _check(p, _lengths(18, 2, True), reverse, torch.float64)
    assert tr.last_launch["grid"][1] == 1


def test_gru_deterministic():
    """Same inputs, same bits (the norms' partial sums are added in a fixed order)."""
    p = _problem(3, 3, 17, torch.float32, 3)
    y, _, gates = tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"])
    a = tr.gru_bwd(p["dy"], p["dh_n"], y, gates, p["h0"], p["w_hh"])
    b = tr.gru_bwd(p["dy"], p["dh_n"], y, gates, p["h0"], p["w_hh"])
    for x, z in zip(a, b):
        assert torch.equal(x, z)


def test_gru_empty():
    """T = 0 or B = 0: nothing launched; h_n = h0, dh0 = dh_n, no norms."""
    p = _problem(2, 1, 3, torch.float32, 1)
    y, h_n, gates = tr.gru_fwd(p["xp"][:0], p["w_hh"], p["b_hn"], p["h0"])
    assert y.shape == (0, 2, 3) and gates.shape == (0, 2, 12) and torch.equal(h_n, p["h0"])
    dxp, dgh, dh0, norms = tr.gru_bwd(p["dy"][:0], p["dh_n"], y, gates, p["h0"], p["w_hh"])
    assert dxp.shape == dgh.shape == (0, 2, 9) and norms.shape == (0,)
    assert torch.equal(dh0, p["dh_n"])


def test_gru_errors():
    p = _problem(2, 3, 4, torch.float32, 2)
    with pytest.raises(ValueError, match=r"gru_fwd\[triton\]: w_hh must have shape"):
        tr.gru_fwd(p["xp"], p["w_hh"][:, :3], p["b_hn"], p["h0"])
    with pytest.raises(ValueError, match="b_hn must have shape"):
        tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"][:3], p["h0"])
    with pytest.raises(ValueError, match="3\\*hidden_size"):
        tr.gru_fwd(p["xp"][..., :-1], p["w_hh"], p["b_hn"], p["h0"])
    with pytest.raises(ValueError, match="lengths must lie in"):
        tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"], torch.tensor([4, 1]))
    with pytest.raises(ValueError, match="interpreter runs float32 and float64"):
        tr.gru_fwd(*(p[k].half() for k in ("xp", "w_hh", "b_hn", "h0")))
    with pytest.raises(ValueError, match="<= 1024"):
        tr.gru_fwd(torch.zeros(1, 1, 3 * 1025), torch.zeros(3 * 1025, 1025), None,
                   torch.zeros(1, 1025))
    y, _, gates = tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"])
    with pytest.raises(ValueError, match=r"gru_bwd\[triton\]: gates must be"):
        tr.gru_bwd(p["dy"], p["dh_n"], y, gates[..., :-1], p["h0"], p["w_hh"])
    with pytest.raises(ValueError, match="dy must be torch.float32"):
        tr.gru_bwd(p["dy"].double(), p["dh_n"], y, gates, p["h0"], p["w_hh"])
