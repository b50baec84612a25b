"""The Triton GRU kernels (kernels/triton/gru.py) against torch autograd on the reference
recurrence (rnnfast.reference.gru_recurrence), and rnnfast.GRU(backend='triton') against
torch.nn.GRU with the same weights.

Runs where Triton can: CUDA tensors on a GPU (compiled kernels; ``python -m bench.gpu``
runs this file), or CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1 python -m
pytest tests/test_triton_gru.py``): the one-step-per-launch path, several
hidden-dimension programs (H=37: 10 forward and 3 backward programs, the last ones
partial; H=80: whole tiles, 20 forward and 5 backward programs), float32 and float64,
weights on chip and streamed. The shapes come from the one case catalogue,
tests/cases.py. On CUDA it also covers
float16 / bfloat16 (against the reference in float32 on the same rounded inputs), the
persistent all-steps launch against one step per launch, and torch.nn.GRU on cuDNN
(TF32 off). Every output buffer is NaN-poisoned (tests/conftest.py), so an element a
kernel never wrote fails. The compile check (``python -m
rnnfast.kernels.triton.compile_check --only gru``) builds the kernels for sm_80 and sm_90.
"""

import zlib

import pytest
import torch

from .cases import triton_interpreting

INTERPRET = triton_interpreting()
CUDA = torch.cuda.is_available() and not INTERPRET
if not (INTERPRET or CUDA):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from rnnfast import reference  # noqa: E402
from rnnfast.kernels import triton as tr  # noqa: E402
from rnnfast.kernels.triton import config  # noqa: E402

from .cases import KERNEL_SHAPES, make_pair, shapes_for  # noqa: E402
from .tolerances import assert_close  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")


def _programs(kernel, H):
    """Programs along the hidden dimension of a ``kernel`` launch at width H."""
    return -(-H // config.pick(kernel, H, H, torch.float32).BH)


def _whole_tiles(H):
    return all(H % config.pick(k, H, H, torch.float32).BH == 0 for k in ("gru_fwd", "gru_bwd"))


# (B, T, H) from tests/cases.py: the Triton backend's shapes (several forward and
# backward programs with a partial last tile; one unit, one step, one row; a tiny width),
# those of them with several backward programs, and the kernel catalogue's shapes whose
# width is a whole number of forward and backward tiles (no masked unit).
SHAPES = shapes_for("triton")
SEVERAL_PROGRAMS = [s for s in SHAPES if _programs("gru_bwd", s[2]) > 1]
WHOLE_TILES = [s for s in KERNEL_SHAPES if _whole_tiles(s[2])]
DIRS = [("fwd", False, False), ("rev", True, False), ("len", False, True),
        ("revlen", True, True)]
DTYPES = [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if CUDA else [])


@pytest.fixture(autouse=True)
def _no_tf32():
    if CUDA:
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


def _dname(dtype):
    return str(dtype).replace("torch.", "")


def _shape_id(s):
    return "B{}-T{}-H{}".format(*s)


def _ref_dtype(dtype):
    """The reference runs in float32 for the half types (from the same rounded inputs)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _dev(t):
    return None if t is None else t.to(DEVICE)


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
    """The kernels on DEVICE against autograd on the reference (on the CPU, in float32
    for the half types)."""
    H = p["h0"].shape[1]
    e = _expected({k: None if v is None else v.to(_ref_dtype(dtype)) for k, v in p.items()},
                  lengths, reverse)
    d = {k: _dev(v) for k, v in p.items()}
    lens = _dev(lengths)
    y, h_n, gates = tr.gru_fwd(d["xp"], d["w_hh"], d["b_hn"], d["h0"], lens, reverse)
    assert tr.last_launch["kernel"] == "gru_fwd"
    tiles = -(-p["h0"].shape[0] // config.BLOCK_B)
    assert tr.last_launch["grid"] == (-(-H // config.pick("gru_fwd", H, H, dtype).BH),
                                      min(tiles, config.MAX_BATCH_PROGRAMS or tiles))
    for name, out in (("y", y), ("h_n", h_n), ("gates", gates)):
        assert_close(name, out, e[name], dtype=dtype)
    dxp, dgh, dh0, norms = tr.gru_bwd(d["dy"], d["dh_n"], y, gates, d["h0"], d["w_hh"],
                                      lens, reverse)
    assert norms.dtype == torch.float64 and norms.shape == (p["xp"].shape[0],)
    assert_close("dxp", dxp, e["dxp"], dtype=dtype)
    assert_close("dh0", dh0, e["dh0"], dtype=dtype)
    assert_close("norms", norms, e["norms"], dtype=dtype)
    # dgh: dxp in the r and z blocks, dxp_n * r in the n block; and what the layer GEMMs
    # make of it: dW_hh = sum_t dgh_t^T h_{t-1}, db_hn = sum dgh_n.
    assert torch.equal(dgh[..., :2 * H], dxp[..., :2 * H])
    assert_close("dgh_n", dgh[..., 2 * H:],
                 dxp[..., 2 * H:].double() * gates[..., :H].double(), dtype=dtype)
    dw = torch.einsum("tbg,tbh->gh", dgh.double().cpu(), e["hp"].double())
    assert_close("dW_hh", dw, e["dw_hh"].double(), dtype=dtype)
    if e["db_hn"] is not None:
        assert_close("db_hn", dgh[..., 2 * H:].double().sum((0, 1)), e["db_hn"], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dname)
@pytest.mark.parametrize("direction", DIRS, ids=[d[0] for d in DIRS])
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_gru_kernels(shape, direction, dtype):
    """Weights on chip: every output and gradient against autograd."""
    B, T, H = shape
    _, reverse, with_len = direction
    p = _problem(B, T, H, dtype, zlib.crc32(repr(shape).encode()))
    _check(p, _lengths(B, T, with_len), reverse, dtype)
    assert tr.last_launch["config"].RESIDENT
    assert tr.last_launch["kernel"] == "gru_bwd"
    assert tr.last_launch["grid"][0] == _programs("gru_bwd", H)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dname)
@pytest.mark.parametrize("direction", [DIRS[0], DIRS[3]], ids=["fwd", "revlen"])
@pytest.mark.parametrize("shape", SEVERAL_PROGRAMS, ids=_shape_id)
@pytest.mark.parametrize("weights", ["streamed"], indirect=True)
def test_gru_kernels_several_programs(shape, direction, dtype, weights):
    """Several programs along the hidden dimension exchanging h_{t-1} and dgh, with the
    weights streamed from memory every step (test_gru_kernels runs these shapes with
    the weights on chip)."""
    B, T, H = shape
    _, reverse, with_len = direction
    p = _problem(B, T, H, dtype, zlib.crc32(repr(shape).encode()))
    _check(p, _lengths(B, T, with_len), reverse, dtype)
    assert tr.last_launch["config"].RESIDENT == (weights == "resident")
    assert tr.last_launch["kernel"] == "gru_bwd"
    assert tr.last_launch["grid"][0] == _programs("gru_bwd", H) > 1


@pytest.mark.parametrize("shape", WHOLE_TILES, ids=_shape_id)
def test_gru_kernels_whole_tiles(shape, weights):
    """A width of whole forward and backward tiles: every unit of every program is live
    (reverse with lengths in float32 only, as these shapes are the interpreter's
    slowest)."""
    B, T, H = shape
    assert _whole_tiles(H) and _programs("gru_bwd", H) > 1
    p = _problem(B, T, H, torch.float32, zlib.crc32(repr(shape).encode()))
    _check(p, _lengths(B, T, True), True, torch.float32)
    assert tr.last_launch["config"].RESIDENT == (weights == "resident")


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
    p = {k: _dev(v) for k, v in _problem(3, 3, 17, torch.float32, 3).items()}
    y, _, gates = tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"])
    a = tr.gru_bwd(p["dy"], p["dh_n"], y, gates, p["h0"], p["w_hh"])
    b = tr.gru_bwd(p["dy"], p["dh_n"], y, gates, p["h0"], p["w_hh"])
    for x, z in zip(a, b):
        assert torch.equal(x, z)


def test_gru_empty():
    """T = 0 or B = 0: nothing launched; h_n = h0, dh0 = dh_n, no norms."""
    p = {k: _dev(v) for k, v in _problem(2, 1, 3, torch.float32, 1).items()}
    y, h_n, gates = tr.gru_fwd(p["xp"][:0], p["w_hh"], p["b_hn"], p["h0"])
    assert y.shape == (0, 2, 3) and gates.shape == (0, 2, 12) and torch.equal(h_n, p["h0"])
    dxp, dgh, dh0, norms = tr.gru_bwd(p["dy"][:0], p["dh_n"], y, gates, p["h0"], p["w_hh"])
    assert dxp.shape == dgh.shape == (0, 2, 9) and norms.shape == (0,)
    assert torch.equal(dh0, p["dh_n"])


def test_gru_errors():
    p = {k: _dev(v) for k, v in _problem(2, 3, 4, torch.float32, 2).items()}
    with pytest.raises(ValueError, match=r"gru_fwd\[triton\]: w_hh must have shape"):
        tr.gru_fwd(p["xp"], p["w_hh"][:, :3], p["b_hn"], p["h0"])
    with pytest.raises(ValueError, match="b_hn must have shape"):
        tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"][:3], p["h0"])
    with pytest.raises(ValueError, match="3\\*hidden_size"):
        tr.gru_fwd(p["xp"][..., :-1], p["w_hh"], p["b_hn"], p["h0"])
    with pytest.raises(ValueError, match="lengths must lie in"):
        tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"], torch.tensor([4, 1]))
    if INTERPRET:
        with pytest.raises(ValueError, match="interpreter runs float32 and float64"):
            tr.gru_fwd(*(p[k].half() for k in ("xp", "w_hh", "b_hn", "h0")))
    else:
        with pytest.raises(ValueError, match="need CUDA tensors"):
            tr.gru_fwd(*(p[k].cpu() for k in ("xp", "w_hh", "b_hn", "h0")))
    with pytest.raises(ValueError, match="<= 1024"):
        tr.gru_fwd(*(torch.zeros(*s, device=DEVICE) for s in ((1, 1, 3 * 1025),
                                                             (3 * 1025, 1025))),
                   None, torch.zeros(1, 1025, device=DEVICE))
    y, _, gates = tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"])
    with pytest.raises(ValueError, match=r"gru_bwd\[triton\]: gates must be"):
        tr.gru_bwd(p["dy"], p["dh_n"], y, gates[..., :-1], p["h0"], p["w_hh"])
    with pytest.raises(ValueError, match="dy must be torch.float32"):
        tr.gru_bwd(p["dy"].double(), p["dh_n"], y, gates, p["h0"], p["w_hh"])


# ---------------------------------------------------------------- module vs torch.nn.GRU

MODULE_CASES = [dict(), dict(num_layers=2, bidirectional=True, batch_first=True)]


def _opts_id(o):
    return "-".join(f"{k}{v}" for k, v in o.items()) or "default"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64] if INTERPRET else DTYPES,
                         ids=_dname)
@pytest.mark.parametrize("opts", MODULE_CASES, ids=_opts_id)
def test_gru_module_vs_torch(opts, dtype):
    """rnnfast.GRU(backend='triton') against torch.nn.GRU (cuDNN on CUDA) with the same
    state_dict: output, h_n, and the gradients of the input and every weight (for the
    half types torch.nn.GRU runs in float32 on the same, exactly upcast, weights)."""
    B, T, I, H = 3, 4, 5, 19
    ours, twin = make_pair("gru", I, H, dtype, "triton", **opts)
    ref_dtype = _ref_dtype(dtype)
    ours, twin = ours.to(DEVICE), twin.to(DEVICE).to(ref_dtype)
    g = torch.Generator().manual_seed(7)
    shape = (B, T, I) if opts.get("batch_first") else (T, B, I)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    xa, xb = x.clone().requires_grad_(), x.to(ref_dtype).requires_grad_()
    out_a, h_a = ours(xa)
    out_b, h_b = twin(xb)
    assert tr.last_launch["kernel"] == "gru_fwd"
    assert_close("output", out_a.to(ref_dtype), out_b, dtype=dtype)
    assert_close("h_n", h_a.to(ref_dtype), h_b, dtype=dtype)
    gy = torch.randn(out_a.shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    gh = torch.randn(h_a.shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
    ((out_a * gy).sum() + (h_a * gh).sum()).backward()
    ((out_b * gy.to(ref_dtype)).sum() + (h_b * gh.to(ref_dtype)).sum()).backward()
    assert tr.last_launch["kernel"] == "gru_bwd"
    assert_close("dx", xa.grad.to(ref_dtype), xb.grad, dtype=dtype)
    pb = dict(twin.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(f"d{name}", p.grad.to(ref_dtype), pb[name].grad, dtype=dtype)


# ---------------------------------------------------------------- CUDA only

cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@cuda_only
@pytest.mark.parametrize("H", [64, 768])
def test_gru_persistent_equals_per_step(H, monkeypatch):
    """The all-steps launch (grid barrier) gives the same bits as one step per launch,
    forward and backward."""
    p = {k: v.cuda() for k, v in _problem(8, 50, H, torch.float32, H).items()}

    def run():
        y, h_n, gates = tr.gru_fwd(p["xp"], p["w_hh"], p["b_hn"], p["h0"])
        persistent = tr.last_launch["persistent"]
        back = tr.gru_bwd(p["dy"], p["dh_n"], y, gates, p["h0"], p["w_hh"])
        assert tr.last_launch["persistent"] == persistent
        return persistent, (y, h_n, gates) + back

    persistent, a = run()
    assert persistent
    monkeypatch.setenv("RNNFAST_TRITON_PERSISTENT", "0")
    persistent, b = run()
    assert not persistent
    for x, z in zip(a, b):
        assert torch.equal(x, z)
