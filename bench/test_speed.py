"""pytest-benchmark versions of ``python -m bench``'s speed and packed-sequence cases.

Run (not part of ``pytest tests/``)::

    pytest bench/test_speed.py --benchmark-save=mine          # saves .benchmarks/...
    pytest bench/test_speed.py --benchmark-compare=0001        # compare with run 0001
    pytest bench/test_speed.py -k "lstm and fwdbwd" --benchmark-group-by=group

Each group is one point (cell, T, B, H, mode); its members are the implementations, so
the comparison table shows rnnfast beside torch.nn (and JAX when installed).
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from bench.report import common, packed
from bench.report.speed import FLOOR_CELLS, FLOOR_POINTS, FLOOR_T

CELLS = FLOOR_CELLS
IMPLS = ("rnnfast-numba", "torch.nn", "jax")


def _callable(impl, cell, T, B, H, mode):
    dtype, device = torch.float32, torch.device("cpu")
    tm = common.make_torch(cell, H, H, dtype, device, seed=0)
    x, g, gh = common.make_inputs(T, B, H, H, dtype, device, seed=1)
    if impl == "jax":
        pytest.importorskip("jax")
        from bench.report import jaxpeer
        fwd, fwdbwd = jaxpeer.make_fns(cell, tm, x, g, gh)
        return fwd if mode == "fwd" else fwdbwd
    m = tm if impl == "torch.nn" else common.make_rnnfast(cell, H, H, dtype, device,
                                                         "numba", like=tm)
    return common.fwd_fn(m, x) if mode == "fwd" else common.fwdbwd_fn(m, x, g, gh)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", common.MODES)
@pytest.mark.parametrize("B,H", FLOOR_POINTS, ids=[f"B{b}-H{h}" for b, h in FLOOR_POINTS])
@pytest.mark.parametrize("cell", CELLS)
def test_speed(benchmark, cell, B, H, mode, impl):
    fn = _callable(impl, cell, FLOOR_T, B, H, mode)
    fn()  # warm-up: numba / XLA compile
    benchmark.group = f"{cell}-T{FLOOR_T}-B{B}-H{H}-float32-{mode}"
    benchmark.extra_info["gemm_flops"] = common.gemm_flops(cell, FLOOR_T, B, H, H, mode)
    benchmark(fn)


@pytest.mark.parametrize("layout", ("padded", "packed"))
@pytest.mark.parametrize("impl", ("rnnfast-numba", "torch.nn"))
@pytest.mark.parametrize("T", (100, 1000))
@pytest.mark.parametrize("cell", CELLS)
def test_packed(benchmark, cell, T, impl, layout):
    B, H = 16, 64
    dtype, device = torch.float32, torch.device("cpu")
    tm = common.make_torch(cell, H, H, dtype, device, seed=0)
    m = tm if impl == "torch.nn" else common.make_rnnfast(cell, H, H, dtype, device,
                                                         "numba", like=tm)
    x, g, gh = common.make_inputs(T, B, H, H, dtype, device, seed=1)
    if layout == "padded":
        fn = common.fwdbwd_fn(m, x, g, gh)
    else:
        pk = pack_padded_sequence(x, packed.spread_lengths(T, B), enforce_sorted=False)
        gp = torch.randn(pk.data.shape, dtype=dtype)
        fn = packed._packed_fn(m, pk, gp, gh)
    fn()
    benchmark.group = f"packed-{cell}-T{T}-B{B}-H{H}-fwdbwd"
    benchmark(fn)
