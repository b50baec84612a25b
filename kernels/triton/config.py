"""Every launch configuration the Triton launchers can choose, and every flag, in one place.

A configuration is a function of (kernel, H, P, dtype, tf32) only, never of B or T: batch
tiles are the grid's second axis and the time loop bounds are runtime arguments, so one
compiled binary serves every batch size and sequence length, and the set of binaries is
finite. :func:`all_configs` enumerates that set for the compile check
(``python -m bench.compile``, ``tests/test_compile.py``).

Flags (environment variables, read at call time):

``RNNFAST_TRITON_TF32=1``   float32 products on tensor cores in TF32 (default: off, IEEE
                            float32); :func:`set_tf32` overrides it from Python.
``RNNFAST_TRITON_PERSISTENT=0``  never run all steps in one launch (always one step per
                            launch); default: persistent whenever the grid fits the GPU.

Each takes 0 or 1 (empty: the default); any other value raises ValueError on the call.
"""

import os
from dataclasses import dataclass

import torch
import triton

from .._env import env_flag

KERNELS = ("rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
BLOCK_B = 16  # batch rows per program: the smallest tensor-core tile
MAX_WIDTH = 1024  # largest hidden_size / proj_size the kernels take
# A program keeps its weight tile on chip for the whole time loop (Triton stages it in
# shared memory once, and loads it into registers every step) when the tile plus the
# staged [BLOCK_B, width] operand fit this many bytes of shared memory (sm_80 allows
# 163 KiB per block, sm_90 227 KiB) and each thread holds at most BYTES_PER_THREAD of
# it when it is loaded for a step; otherwise the tile is streamed from L2 every step.
SMEM_BUDGET = 160 * 1024
BYTES_PER_THREAD = 256
# 16 warps would cap a thread at 128 registers: the step's operands then spill on sm_80.
MAX_WARPS = 8

# Most programs along the batch-tile axis (None: no cap beyond the GPU's SMs). Tests set
# it to make one program loop over several batch tiles in the interpreter.
MAX_BATCH_PROGRAMS = None

_TRITON_DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
                  torch.bfloat16: "bf16"}
_tf32_override = None


def set_tf32(enabled):
    """Allow (True) or forbid (False) TF32 for float32 recurrent products; None: env.

    Raises TypeError for anything else: bool('0') is True, so a setting read from a
    config file as the string '0' turned TF32 on."""
    global _tf32_override
    if enabled is not None and type(enabled) is not bool:
        raise TypeError(f"set_triton_tf32 expects True, False or None, got {enabled!r}")
    _tf32_override = enabled


def tf32_enabled():
    if _tf32_override is not None:
        return _tf32_override
    return env_flag("RNNFAST_TRITON_TF32", False)


def triton_interpreting():
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def persistent_enabled():
    return env_flag("RNNFAST_TRITON_PERSISTENT", True)


def width(n):
    """Padded width of a reduction: the power of two >= n, at least 16."""
    return max(16, triton.next_power_of_2(int(n)))


@dataclass(frozen=True)
class Config:
    kernel: str  # one of KERNELS
    dtype: torch.dtype
    HP: int  # padded P (LSTM) or H (RNN, GRU): width of h
    HH: int  # padded H (LSTM cell width)
    BH: int  # cell units per program
    BP: int  # projected units per program (LSTM)
    PROJ: bool
    RESIDENT: bool  # weight tiles stay in registers across steps
    PRECISION: str  # tl.dot input precision: "ieee" or "tf32"
    num_warps: int
    NK: int = 1  # reduction chunks of a resident product (one batch of a batched dot)
    # Register ceiling handed to ptxas (.maxnreg): without it ptxas stops at 128 and
    # spills; one program per SM can afford 255 (255 x 256 threads < 64K registers).
    maxnreg: int = 255

    def launch_options(self):
        """Compile options of every launch (and of the compile check: the same binary).

        enable_fp_fusion=True: a * b + c contracts to one fused multiply-add, as the
        CPU backend's tile computes it. Triton 3.9 does this by default but warns on
        every first compile that 3.10 turns the default off; named here, the kernels'
        rounding does not change with the Triton version and no warning reaches the
        user."""
        return dict(num_warps=self.num_warps, num_stages=1, maxnreg=self.maxnreg,
                    enable_fp_fusion=True)

    def constexprs(self):
        names = ["HP", "BH", "BB", "PRECISION", "RESIDENT", "NK"]
        if self.kernel.startswith("lstm"):
            names += ["HH", "BP", "PROJ"]
        vals = dict(BB=BLOCK_B, **{k: getattr(self, k) for k in
                                   ("HP", "HH", "BH", "BP", "PROJ", "RESIDENT", "PRECISION", "NK")})
        return {k: vals[k] for k in names}

    def weight_bytes(self):
        size = self.dtype.itemsize
        if self.kernel == "rnn_fwd" or self.kernel == "rnn_bwd":
            n = self.HP * self.BH
        elif self.kernel == "gru_fwd":
            n = self.HP * 4 * self.BH
        elif self.kernel == "gru_bwd":
            n = 3 * self.HP * self.BH
        elif self.kernel == "lstm_fwd":
            n = self.HP * 4 * self.BH + (self.HH * self.BP if self.PROJ else 0)
        else:
            n = 4 * self.HH * self.BP + (self.HP * self.BH if self.PROJ else 0)
        return n * size

    def label(self):
        p = f"-P{self.HP}" if self.PROJ else ""
        w = "res" if self.RESIDENT else "l2"
        return (f"{_TRITON_DTYPES[self.dtype]}{'-tf32' if self.PRECISION == 'tf32' else ''}"
                f"-H{self.HH if self.kernel.startswith('lstm') else self.HP}{p}"
                f"-BH{self.BH}{f'-BP{self.BP}' if self.PROJ else ''}-w{self.num_warps}"
                f"-k{self.NK}-{w}")


def _resident_shape(kernel, HP, HH, BH, BP, proj):
    """(weight elements kept on chip, reduction widths of the products) of a program."""
    if kernel.startswith("rnn"):
        return HP * BH, (HP,)
    # GRU forward: the three gate rows of a unit padded to four (one [HP, 4BH] product);
    # backward: one product per gate block of dgh, each over HP.
    if kernel == "gru_fwd":
        return HP * 4 * BH, (HP,)
    if kernel == "gru_bwd":
        return 3 * HP * BH, (HP, HP, HP)
    if kernel == "lstm_fwd":
        return HP * 4 * BH + (HH * BP if proj else 0), ((HP, HH) if proj else (HP,))
    return 4 * HH * BP + (HP * BH if proj else 0), ((4 * HH, HP) if proj else (4 * HH,))


def pick(kernel, H, P, dtype, tf32=None, proj=None):
    """The configuration for a layer of H cell units, P = proj_size or H (RNN, GRU: P = H).
    ``proj``: the LSTM has a projection W_hr (default: P != H; the kernel contract also
    allows a projection with P == H, which torch.nn never builds).

    Tiles: an RNN program owns 16 units (the smallest tensor-core tile); an LSTM program
    4 cell units (16 gate rows) up to H = 256, then 8, so H = 768 uses 96 programs per
    batch tile; the LSTM backward owns 16 projected units. A GRU forward program owns 4
    (then 8) units, their three gate rows padded to four; the GRU backward owns 16 units
    (columns of W_hh in all three gate blocks). The weight tile stays on chip
    when its shared-memory copy plus the staged operand fit SMEM_BUDGET and each thread
    holds at most BYTES_PER_THREAD of it; warps split its reduction into NK chunks."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    tf32 = tf32_enabled() if tf32 is None else tf32
    precision = "tf32" if (tf32 and dtype == torch.float32) else "ieee"
    HP = width(P)
    HH = width(H)
    proj = kernel.startswith("lstm") and (P != H if proj is None else bool(proj))
    if kernel.startswith("rnn") or kernel == "gru_bwd":
        BH = BP = 16
        HH = HP
    elif kernel == "gru_fwd":
        BH = BP = 4 if HP <= 256 else 8
        HH = HP
    elif kernel == "lstm_fwd":
        BH = 4 if HH <= 256 else 8
        BP = 16
    else:
        BH = BP = 16
    elems, widths = _resident_shape(kernel, HP, HH, BH, BP, proj)
    state_bytes = 8 if dtype == torch.float64 else 4
    smem = elems * dtype.itemsize + sum(BLOCK_B * k * state_bytes for k in widths)
    warps = 4
    per_warp = BYTES_PER_THREAD * 32
    if kernel in ("lstm_fwd", "gru_fwd") and dtype.itemsize >= 4:
        # The gate split and cell update keep more values live than the other kernels:
        # at 64 float32 weights per thread ptxas spills.
        per_warp //= 2
    while elems * dtype.itemsize > per_warp * warps and warps < MAX_WARPS:
        warps *= 2
    resident = smem <= SMEM_BUDGET and elems * dtype.itemsize <= per_warp * warps
    if not resident:
        warps = 4
    # Measured (python -m bench.compile): these spill at 4 warps and not at 8.
    if kernel == "lstm_bwd" and resident and elems * dtype.itemsize > 16 * 1024:
        warps = max(warps, 8)
    if kernel == "lstm_fwd" and proj and not resident:
        warps = 8
    nk = max(1, min(warps, min(widths) // 16))
    return Config(kernel, dtype, HP, HH, BH, BP, proj, resident, precision, warps, nk)


def all_configs():
    """Every configuration :func:`pick` can return, for the compile check."""
    seen = {}
    widths = [2 ** k for k in range(4, 11)]  # 16 .. MAX_WIDTH
    for kernel in KERNELS:
        for dtype in DTYPES:
            for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
                for H in widths:
                    # (H, P) pairs; P=H-1 stands for "projected, same padded width"
                    pairs = [(H, H)]
                    if kernel.startswith("lstm"):
                        pairs += [(H, P) for P in widths if P < H] + [(H, H - 1)]
                    for h, p in pairs:
                        seen.setdefault(pick(kernel, h, p, dtype, tf32), None)
    return list(seen)


def grid_size(cfg, H, P, B):
    """(unit tiles, batch tiles) of a layer: programs along the unit axis, and the
    batch tiles the programs of one unit tile share."""
    if not cfg.kernel.startswith("lstm"):
        n = triton.cdiv(H, cfg.BH)
    else:
        n = max(triton.cdiv(H, cfg.BH), triton.cdiv(P, cfg.BP) if cfg.PROJ else 0)
    return n, triton.cdiv(B, BLOCK_B)
