"""Every Triton configuration the launchers can choose compiles for sm_80 and sm_90, and
each fits a real GPU: no local memory (spills), shared memory within one block's limit,
registers within one SM (the persistent kernel runs one program per SM).

Needs no GPU: ``triton.compile`` with a ``GPUTarget``, ``cuobjdump`` from the triton
wheel for the resource use. ``python -m bench.compile`` prints the same data as a table.
The first run compiles ~840 binaries (minutes on 2 cores); Triton's cache makes later
runs fast.
"""

import os
import warnings

import pytest

from rnnfast.kernels.triton import compile_check as bc

if bc.cuobjdump_path() is None:
    pytest.skip("cuobjdump not shipped with this triton wheel", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("compile checks need the compiler, not the interpreter",
                allow_module_level=True)

import torch  # noqa: E402

from rnnfast.kernels.triton import config  # noqa: E402

# The configurations pick() chooses at these widths, in every dtype: every kernel, the
# resident and streamed weight paths, projection or not. The whole set (about 980
# binaries, an hour on 2 cold cores) is `python -m bench.compile`'s job.
SAMPLE_WIDTHS = (37, 1024)


def _sample():
    cfgs = {config.pick(k, H, P, dt, False)
            for k in config.KERNELS for dt in config.DTYPES for H in SAMPLE_WIDTHS
            for P in ([H, max(1, H // 3)] if k.startswith("lstm") else [H])}
    return sorted(cfgs, key=lambda c: (c.kernel, c.label()))


@pytest.fixture(scope="module")
def rows():
    return bc.run(bc.ARCHS, configs=_sample())


def test_sampled_configs_compile_without_spills(rows):
    bad = bc.problems(rows)
    assert not bad, "\n".join(bad)
    assert len(rows) == len(_sample()) * len(bc.ARCHS)
    assert {r["kernel"] for r in rows} == set(config.KERNELS)


def test_launch_options_name_fp_fusion():
    """The kernels' options name FP fusion: Triton 3.9 then warns nothing (unnamed, it
    warns on a first compile that 3.10 turns fusion off by default), and a later Triton
    compiles the same fused multiply-adds."""
    cfg = _sample()[0]
    assert cfg.launch_options()["enable_fp_fusion"] is True
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        row = bc.compile_one(cfg, bc.ARCHS[0])
    assert row["ok"], row
    assert not [w for w in got if "fp fusion" in str(w.message).lower()], \
        [str(w.message) for w in got]


@pytest.mark.parametrize("kernel", config.KERNELS)
def test_dispatch_only_chooses_enumerated_configs(kernel):
    """pick() over every width the launchers accept lands in all_configs(), so the
    compile check covers whatever the dispatcher can choose."""
    known = set(config.all_configs())
    lstm = kernel.startswith("lstm")
    for dtype in config.DTYPES:
        for tf32 in (False, True):
            for H in list(range(1, 80)) + list(range(80, config.MAX_WIDTH + 1, 13)) + [1024]:
                Ps = [H] + ([max(1, H // 3), H - 1] if lstm and H > 1 else [])
                for P in Ps:
                    assert config.pick(kernel, H, P, dtype, tf32) in known, (kernel, H, P, dtype)


def test_headline_configs_keep_weights_on_chip():
    """The configurations the GPU benchmark leans on keep W_hh on chip."""
    assert config.pick("lstm_fwd", 768, 768, torch.bfloat16).RESIDENT
    assert config.pick("rnn_fwd", 768, 768, torch.float32).RESIDENT
    assert config.pick("rnn_bwd", 512, 512, torch.bfloat16).RESIDENT
