"""Drop-in ``rnnfast.RNN``, ``rnnfast.LSTM`` and ``rnnfast.GRU``.

They subclass ``torch.nn.RNNBase`` (not ``nn.RNN``/``nn.LSTM``/``nn.GRU``, which
TorchDynamo refuses to trace), so parameter names, shapes, ``reset_parameters``,
``state_dict`` and ``.to()`` are exactly torch's (``extra_repr`` is torch's plus what
torch's leaves out: an RNN's activation where it is not tanh, ``negative_slope``, a
``backend`` other than auto), and the forward follows
torch.nn's own step by step (input forms, hidden-state checks with torch's messages,
PackedSequence sorting), with torch.nn's fused call replaced by rnnfast's layers:

    module.forward -> _FusedRNNBase._forward -> _layers -> dispatch.resolve (once per call)
                   -> ops.<cell> per layer and direction -> kernels.<backend>.<cell>_fwd

A call that ``backend='auto'`` hands to torch.nn's operator by a measured rule (a short
call; the LSTM's forward-only regions) goes there first thing, through torch.nn's own
forward (``_torch_forward_if_faster``), without rnnfast's checks and dispatch in front.

Under ``torch.onnx.export`` the module calls torch's own RNN operator instead (what
torch.nn.<Cell> exports to: ONNX's RNN / LSTM / GRU operators); ``torch.jit.script``
scripts a torch.nn twin that shares the parameters (``__prepare_scriptable__``).
"""

import numbers
import operator
import sys
import warnings
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence

from . import dispatch, ops, reference
from .dispatch import RNNArgumentError, check_backend_name
from .kernels import ACTIVATIONS
from .kernels._env import setting

NONLINEARITIES = tuple(ACTIVATIONS)

# torch's autocast policy for its RNN operators ("lower_precision_fp": inputs and
# weights cast to the autocast dtype), read off torch 2.13: on CPU aten::lstm and
# aten::rnn_tanh / rnn_relu are in the list and aten::gru is not; on CUDA the cuDNN RNN
# (every cell) is.
AUTOCAST_CELLS = {"cpu": ("rnn", "lstm"), "cuda": ("rnn", "lstm", "gru")}

# Where torch.nn's own operator beats the numba kernels, backend='auto' runs it (and
# rnnfast.explain says so): forward-only float32 LSTM (no projection, not packed), where
# torch runs oneDNN's fused LSTM (:func:`_lstm_inference_to_torch`). Measured numba time
# against torch.nn's, T = 100, I = H, under no_grad (ratios torch.nn / numba, < 1: numba
# slower):
#
# * A batch of one at hidden >= TORCH_OP_LSTM_INFERENCE_MIN_H, on every ISA, when torch
#   has more than one thread: the kernels' row split ran the recurrence on one core,
#   streaming W_hh (1 MiB at H = 256 in float32, past a core's L2) from L3 every step,
#   while oneDNN splits W_hh's columns over all cores. Zen 2 (AVX2, 2 cores, 2026-12-02):
#   0.74-0.84x at H = 256, 0.82-0.90x at 384 and 512; 1.01x at H = 128. With the
#   kernels' column split (config.COLUMN_SPLIT_MAX_ROWS), Zen 4, 2026-12-06: T = 100
#   0.76-0.91x at H = 256, 0.95-1.51x at 512..1024 (0.95-1.01 where torch.nn's LSTM ran
#   in its fast mode); T = 16 1.11-3.36x at 384..1024: kept.
# * Per ISA, TORCH_OP_LSTM_INFERENCE_REGIONS:
#   - avx2: batch 4..6 at hidden 256..512, when torch has more than one thread. Zen 2,
#     2026-12-02: 0.95-0.96x at B = 4, 0.75-0.84x at B = 5, 0.76-0.90x at B = 6, against
#     0.97-1.17x at B = 2, 3 (three threads' rows split 2 + 1 since b3b32ca), 1.10-1.15x
#     at B = 7, 8 and 1.13-1.43x at B = 2..8 with H = 1024.
#   - avx512: batch x hidden >= 8192. 0.97-0.98x on the Intel Xeon (2026-12-01, (32, 256)
#     and (64, 512)) and 0.80-0.95x on the AMD EPYC Zen 4 (2026-11-25); on the Zen 2 the
#     kernels win there (1.10-1.13x at (32, 256), (32, 512), (64, 512)). Also hidden
#     >= 128 at any batch, when torch has more than one thread: on the Zen 4
#     (2026-12-06, T = 32, 64, 100, B = 1, 4, 16, 64) 0.84-1.08x at H = 128, 0.65-1.00x
#     at 256, 0.60-1.10x at 512 (B = 1: 0.60-0.89x), against 1.04-1.46x at H = 64; at
#     T = 1, 4, 16 and (32, 128), (32, 256), (64, 512): 0.54-0.98x.
#
# And for the RNN and the GRU (float32 and float64, padded input, any ISA), a short
# forward-only call (:func:`_short_inference_to_torch`): the kernels pack each weight
# into column panels on every call (~26 GB/s: 240 us for a GRU's W_hh at H = 512) and
# pay their host path once per layer, where torch.nn's operator multiplies the weights
# as they are; over a few steps that costs more than the steps themselves. Zen 4
# (AVX-512), 2026-12-06, ratios at T = 1, 2, 4, 8 for B = 1..64, H = 32..512 (float32):
# GRU 0.35-0.73, 0.49-0.97, 0.64-1.25, 0.77-1.82; ReLU-RNN 0.36-0.84, 0.47-0.92,
# 0.62-1.32, 0.77-1.38; float64 alike (H = 32 and 256: 0.47-0.83 at T = 1). At a batch
# of one or two and hidden >= 256 they lose further: T = 16 at (1, 512) 0.85x (GRU),
# 1.03x (ReLU-RNN). Not the LSTM: oneDNN's fused LSTM costs ~1 ms a call at H = 512 (its
# weights reordered), and at H = 32 the kernels win short calls too (float32, T = 1:
# 1.00-1.13x); the region above covers H >= 128.
TORCH_OP_LSTM_INFERENCE_MIN_H = 256
TORCH_OP_LSTM_INFERENCE_REGIONS = {
    "avx2": {"batch": (4, 6), "hidden": (256, 512)},
    "avx512": {"min_batch_x_hidden": 8192, "min_hidden": 128},
}
# An RNN's or a GRU's forward-only call runs torch.nn's operator under 'auto' with fewer
# steps than "steps"; with fewer than "steps_at_batch"[0] at a batch under [1] (at
# B >= 32 the kernels win from T = 4: 1.03-1.16x at (32, 128..512), 1.00-1.32x at
# B = 64); and with fewer rows (steps x batch) than "rows_at_hidden"[0] at hidden >= [1].
TORCH_OP_SHORT_INFERENCE = {"steps": 4, "steps_at_batch": (8, 32), "rows_at_hidden": (32, 256)}
# ... and a training call (one that builds a graph) with fewer steps than this: torch.nn's
# RNN and GRU operators keep the first-order semantics rnnfast documents (the outputs
# and h_n may be changed in place before backward, and so may the biases). Zen 4,
# 2026-12-06, fwd+bwd, torch.nn / numba at (1, 32), (16, 128), (32, 256), (64, 512):
# T = 1 0.49-0.77x (torch.nn's operator through the module: 0.80-1.01x), T = 2
# 0.68-1.11x (0.82-0.95x), T = 3 0.81-1.28x, T = 4 0.90-1.55x.
TORCH_OP_SHORT_TRAINING_STEPS = 3
_ONEDNN = torch.backends.mkldnn.is_available()


# torch.compile and a PackedSequence: its batch sizes are data (the batch is
# batch_sizes[0]), which dynamo cannot guard on; the layer's call breaks the graph and
# runs eagerly, and under fullgraph=True dynamo raises with this message (it raised
# "Could not guard on data-dependent expression Eq(u0, u1)" from the hx size check).
_PACKED_UNDER_COMPILE = (
    "rnnfast: a PackedSequence input runs outside the compiled graph (its batch sizes "
    "are data, which torch.compile cannot guard on): compile with fullgraph=False, or "
    "pass the padded batch (torch.nn.utils.rnn.pad_packed_sequence) to a compiled "
    "module")


def _disabled_for_dynamo(fn):
    """torch.compiler.disable(fn) with _PACKED_UNDER_COMPILE as its reason (a torch
    before the ``reason`` argument: without it)."""
    try:
        return torch.compiler.disable(fn, reason=_PACKED_UNDER_COMPILE)
    except TypeError:
        return torch.compiler.disable(fn)


# dynamo traces (torch.compile, strict torch.export); before torch 2.3's name for it,
# is_compiling() meant the same
_DYNAMO_COMPILING = getattr(torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling)


@_disabled_for_dynamo
def _packed_outside_the_graph(module, input, hx):
    """module(input, hx) for a PackedSequence met while dynamo traces (torch.compile,
    strict torch.export): run eagerly (a graph break), or, under fullgraph=True, dynamo's
    error naming the reason. Not for torch.export's non-strict tracing, which runs the
    Python as it is (is_compiling() there, is_dynamo_compiling() not): the call would
    come back here for good."""
    return module._forward(input, hx)


# torch.nn's forward for a PackedSequence whose batch_sizes are floating point, without
# hx: its torch.zeros(num_layers * num_directions, batch_sizes[0], hidden) raises this
# (torch 2.13); with hx, aten's operator raises "expected scalar type Long but found
# Float" (_checked_batch_sizes).
_FLOAT_BATCH_SIZES = ("zeros(): argument 'size' failed to unpack the object at pos 2 "
                      "with error \"type must be tuple of ints,but got Tensor\"")
# What torch.nn's aten::lstm raises for an hx that is one tensor where it needs a tuple
# (its message lists its overloads; this names the argument instead).
_LSTM_TENSOR_HX = ("lstm() received an invalid combination of arguments - got hx as one "
                   "Tensor, but expected a tuple of Tensors hx (h_0, c_0)")


def _lstm_inference_to_torch(isa, B, H):
    """Why torch.nn's operator runs a forward-only float32 LSTM of batch B, hidden H on
    this ISA (see TORCH_OP_LSTM_INFERENCE_REGIONS above), or None."""
    what = "forward-only float32 LSTM"
    threads = torch.get_num_threads() > 1  # the small-batch regions: measured with 2
    if B == 1 and H >= TORCH_OP_LSTM_INFERENCE_MIN_H and threads:
        return (f"{what} with a batch of one at hidden {H} >= "
                f"{TORCH_OP_LSTM_INFERENCE_MIN_H}: torch.nn's operator (oneDNN's fused "
                f"LSTM) measured faster than the numba kernels, or as fast where they split "
                f"the hidden units across threads")
    region = TORCH_OP_LSTM_INFERENCE_REGIONS.get(isa, {})
    (b_lo, b_hi), (h_lo, h_hi) = region.get("batch", (0, -1)), region.get("hidden", (0, -1))
    if threads and b_lo <= B <= b_hi and h_lo <= H <= h_hi:
        return (f"{what} with batch {B} in [{b_lo}, {b_hi}] at hidden {H} in "
                f"[{h_lo}, {h_hi}] on {isa}: torch.nn's operator (oneDNN's fused LSTM) "
                f"measured faster than the numba kernels there")
    min_bh = region.get("min_batch_x_hidden")
    if min_bh is not None and B * H >= min_bh:
        return (f"{what} at batch x hidden = {B * H} >= {min_bh} on {isa}: torch.nn's "
                f"operator (oneDNN's fused LSTM) measured faster than the numba kernels "
                f"there")
    min_h = region.get("min_hidden")
    if min_h is not None and H >= min_h and threads:
        return (f"{what} at hidden {H} >= {min_h} on {isa}: torch.nn's operator (oneDNN's "
                f"fused LSTM) measured faster than the numba kernels there")
    return None


def _missing_weight_error(index, packed):
    """The TypeError torch.nn's operator raises for a weight that is None (set so after
    construction): element ``index`` of its weights, its argument 2 (3 for packed
    input)."""
    return TypeError(f"expected Tensor as element {index} in argument "
                     f"{3 if packed else 2}, but got NoneType")


def _short_training_to_torch(cell, T):
    """Why torch.nn's operator runs a short training call (T steps) of ``cell`` ('rnn',
    'gru'; None for 'lstm'), or None (TORCH_OP_SHORT_TRAINING_STEPS, see above)."""
    steps = TORCH_OP_SHORT_TRAINING_STEPS
    if cell == "lstm" or T >= steps:
        return None
    return (f"a training call of {T} step{'s' if T > 1 else ''} (< {steps}): the kernels' "
            f"per-call work (packing the weights, the host path of forward and backward) "
            f"costs more than so few steps; torch.nn's operator measured faster")


def _short_rules_max_steps():
    """No call of a batch of one or more with this many steps or more meets one of the
    two short-call rules above (read at each call: the README names them, a user may
    tune them)."""
    rule = TORCH_OP_SHORT_INFERENCE
    return max(rule["steps"], rule["steps_at_batch"][0], rule["rows_at_hidden"][0],
               TORCH_OP_SHORT_TRAINING_STEPS)


def _short_inference_to_torch(cell, T, B, H):
    """Why torch.nn's operator runs a short forward-only call (T steps, batch B, hidden
    H) of ``cell`` ('rnn', 'gru'; None for 'lstm'), or None (TORCH_OP_SHORT_INFERENCE,
    see above)."""
    if cell == "lstm":
        return None
    rule = TORCH_OP_SHORT_INFERENCE
    work = ("the kernels' per-call work (packing the weights, the host path) costs more "
            "than so few")
    steps = rule["steps"]
    if T < steps:
        return (f"a forward-only call of {T} step{'s' if T > 1 else ''} (< {steps}): "
                f"{work} steps; torch.nn's operator measured faster")
    steps, batch = rule["steps_at_batch"]
    if T < steps and B < batch:
        return (f"a forward-only call of {T} steps (< {steps}) at batch {B} (< {batch}): "
                f"{work} steps; torch.nn's operator measured faster")
    rows, min_h = rule["rows_at_hidden"]
    if T * B < rows and H >= min_h:
        return (f"a forward-only call of {T} steps x batch {B} < {rows} rows at hidden "
                f"{H} >= {min_h}: {work} rows; torch.nn's operator measured faster")
    return None


_ISA_NAME = []  # kernels.numba.config.ISA.name, once read


def _numba_isa():
    """The instruction set the numba kernels target (kernels.numba.config.ISA, fixed
    for the process), read without importing numba's kernels."""
    if not _ISA_NAME:
        from .kernels.numba.config import ISA
        _ISA_NAME.append(ISA.name)
    return _ISA_NAME[0]


def _stack_states(states, fresh):
    """torch.stack(states) (h_n of each layer and direction -> [L * D, B, H]). One state
    that is ``fresh`` (a kernel's output) and no view (its own buffer, which no backward
    reads: the numba launchers') is unsqueezed instead: a view, ~2 against ~8 us on the
    host. Any other is copied, so that an in-place op on h_n cannot corrupt a backward:
    the reference loop's h_n is the last step's activation, which autograd saves; the
    Triton launchers' h_n is a view of their state buffer."""
    h = states[0]
    if fresh and len(states) == 1 and h._base is None:
        return h.unsqueeze(0)
    return torch.stack(states)


_ZEROS = {}  # (shape, dtype, device, inference mode) -> a zero state, never written


def _philox_dropout_ok(x):
    """Whether the dropout between layers draws rnnfast's own mask for x: a float32 /
    float64 CPU tensor in plain eager mode (not under torch.compile, export or tracing,
    no tensor subclass), outside torch.func transforms (whose vmap has its own rules
    for randomness)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and ops._plain(x) and not dispatch.in_functorch_transform())


def _numba_ready(cell, dtype):
    """Whether this process may call the numba kernels of (cell, dtype) without a
    compile (rnnfast.warmup's record; False before any numba call was resolved)."""
    w = dispatch._WARMUP
    return w is not None and w.is_ready(cell, dtype)


def _inter_layer_dropout(x, p, kernel, index=None, batch_first=False):
    """The dropout between stacked layers, in training: x * mask.

    On the CPU in plain eager mode (:func:`_philox_dropout_ok`) the mask is rnnfast's own
    Philox4x32-10 draw, on every path a layer stack may take there (numba's kernels,
    torch.nn's operator while they compile or where auto picks it, the reference loop),
    so one seed gives the same masks whichever runs: drawn over the layer's output in
    time-major order ([T, B, K]) or, for a PackedSequence, over its rows [M, K]. Its key
    is one int64 from torch's default CPU generator (``torch.manual_seed`` fixes the
    masks; they are not torch.nn's masks for that seed, nor are cuDNN's). With
    ``kernel`` the numba kernel draws it (``kernels/numba/dropout.py``: 0.09 ms for the
    word-LM example's [35, 20, 200] on a Zen 4, where torch's CPU ``F.dropout`` takes
    1.05 ms: it draws one element at a time off Intel CPUs), else torch's ops
    (``reference.dropout_mask``, the same bits). Elsewhere ``F.dropout``. Values and
    gradients as ``F.dropout``'s: kept elements times 1 / (1 - p) in x's dtype, the
    gradient dy * mask.

    x: [T, B, K] (time-major), [B, T, K] with ``batch_first``, packed rows [M, K], or
    a padded [T, B, K] made from packed rows, ``index`` (int64 [M]) their positions
    among its T * B rows."""
    if not _philox_dropout_ok(x):
        return F.dropout(x, p, training=True)
    seed = int(torch.empty((), dtype=torch.int64, device="cpu").random_())
    if index is not None:
        shape = (index.shape[0], x.shape[-1])
    elif batch_first:
        shape = (x.shape[1], x.shape[0], *x.shape[2:])
    else:
        shape = tuple(x.shape)
    if kernel:
        mask = dispatch.kernel_module("numba").dropout_mask(
            torch.empty((), dtype=x.dtype, device="cpu").expand(shape), p, seed)
    else:
        mask = reference.dropout_mask(shape, x.dtype, p, seed)
    if index is not None:
        T, B, K = x.shape
        mask = mask.new_zeros((T * B, K)).index_copy_(0, index, mask).view(T, B, K)
    elif batch_first:
        mask = mask.transpose(0, 1)
    return x * mask


class _LstmHxIndexError(RNNArgumentError, IndexError):
    """An LSTM's hx of fewer than two tensors, or not 3-D with a PackedSequence input:
    torch.nn.LSTM indexes hx[1] or a third dimension and raises IndexError, so this is
    one too (and an RNNArgumentError, as rnnfast's other checks)."""


class _HxTypeError(RNNArgumentError, TypeError):
    """An LSTM's hx that cannot be indexed (a float, an int): torch.nn.LSTM reads hx[0]
    and raises TypeError ("'float' object is not subscriptable"), so this is one too."""


class _HxAttributeError(RNNArgumentError, AttributeError):
    """An hx that is no Tensor where torch.nn asks it for ``dim()`` (the RNN's and GRU's
    hx; an LSTM's hx[0] of a numpy array or a string) and raises AttributeError ("'tuple'
    object has no attribute 'dim'"), so this is one too."""


def _torch_op_name(module):
    """The name of torch.nn's operator for this module (its TypeErrors name it)."""
    return module._cell if module._cell != "rnn" else module.mode.lower()


def _dropout_checked(module):
    """``module.dropout`` as torch.nn's operator takes it, at a call: a real number (a
    Python or numpy number, or a 0-dim tensor; set after construction it is not checked
    until then). Raises torch.nn's TypeError for anything else ("lstm() received an
    invalid combination of arguments"). Returns it as a float."""
    p = module.dropout
    if type(p) is float:
        return p
    if isinstance(p, numbers.Real) or (isinstance(p, torch.Tensor) and p.dim() == 0
                                       and not p.is_complex()):
        return float(p)
    raise TypeError(f"{_torch_op_name(module)}() received an invalid combination of "
                    f"arguments - got dropout of type {_type_name(p)}, but expected a "
                    f"float")


def _scalar_type_name(dtype):
    """torch's C++ name of a dtype as its messages print it: Float, Double, Int, Long..."""
    return torch.empty(0, dtype=dtype).type().rsplit(".", 1)[-1].removesuffix("Tensor")


def _checked_batch_sizes(data, batch_sizes):
    """A PackedSequence's (data, batch_sizes) checked before any kernel reads them:
    batch_sizes int64 (torch.nn's error otherwise), non-increasing, positive except for
    trailing zeros, their sum at most data's rows. Returns (data's first
    sum(batch_sizes) rows, the batch_sizes the layers run). Rows past that sum (which
    torch's pack functions never make) are ignored in both directions; torch.nn's
    forward direction ignores them too, while its reverse direction starts at the end
    of ``data`` and so reads them in place of the last real rows. Steps with no row
    (trailing zeros, which torch.nn runs as no-ops) are dropped: the layers run
    batch_sizes without them (one step of batch 0 if all are zero). Raises
    RNNArgumentError."""
    if batch_sizes.dtype != torch.int64:
        raise RNNArgumentError(f"expected scalar type Long but found "
                               f"{_scalar_type_name(batch_sizes.dtype)}")
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return data, batch_sizes
    b = batch_sizes.numpy()
    steps = max(1, int(np.count_nonzero(b)))  # non-increasing and >= 0: a prefix of b
    if b.size and (b.min() < 0 or (b.size > 1 and (np.diff(b) > 0).any())):
        raise RNNArgumentError(
            f"PackedSequence batch_sizes must be non-increasing and positive before any "
            f"trailing zeros (as pack_padded_sequence and pack_sequence make them), got "
            f"{b.tolist()}")
    total = int(b.sum())
    if data.shape[0] < total:
        raise RNNArgumentError(
            f"PackedSequence data has {data.shape[0]} rows, but its batch_sizes sum to "
            f"{total}")
    return (data if data.shape[0] == total else data[:total],
            batch_sizes if steps == b.size else batch_sizes[:steps])


def _norms_unrecordable(tensors=()):
    """Why the per-step gradient norms cannot reach ``last_grad_norms`` here, or None.
    They arrive as the gradient of a probe tensor that the forward creates, during an
    eager backward; a torch.func transform differentiates functionally (no ``.grad``
    is accumulated; vmap would batch the norms) and its autograd.Function rules do not
    cover the reference loop's tap, forward-mode AD (a dual tensor among ``tensors``,
    the call's input, hx and weights) runs no backward, and a trace keeps
    the probes of its tracing run as constants (after a traced module's backward,
    nothing would hold the norms)."""
    if torch.jit.is_tracing():
        return ("torch.jit.trace (the trace would keep its tracing run's probes as "
                "constants, and no later backward would fill last_grad_norms)")
    if dispatch.in_functorch_transform():
        return ("a torch.func transform (grad, vjp, jacrev, jacfwd, vmap: they "
                "differentiate functionally and fill no .grad, where the norms arrive)")
    if dispatch.in_forward_ad() and any(
            t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None
            for t in tensors):
        return "forward-mode AD (torch.autograd.forward_ad): the norms come from backward"
    return None


def _checkpoint_recompute():
    """Whether this forward, run inside a backward pass, is a non-reentrant
    ``torch.utils.checkpoint`` recomputing an earlier call: torch runs that under its
    ``_recomputation_hook`` saved-tensor hooks (private names: False where they are not
    found)."""
    try:
        top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    except (AttributeError, TypeError, RuntimeError):
        return False
    return top is not None and \
        getattr(top[0], "__qualname__", "").startswith("_recomputation_hook.")


class _LastGradOnly:
    """A gradient norms probe's hook: clears the probe's ``.grad`` as each backward's
    gradient arrives, so that after several backwards through one forward (retain_graph)
    ``last_grad_norms`` holds the last one's, not their sum. Holds the probe weakly (no
    reference cycle through the probe's own hook)."""

    def __init__(self, probe):
        self.probe = weakref.ref(probe)

    def __call__(self, grad):
        p = self.probe()
        if p is not None:
            p.grad = None


def _zeros(like, shape):
    """A zero initial state of ``shape`` in like's dtype and device. In plain eager mode
    one tensor per shape is kept and reused (torch.zeros costs ~5 us on the host, twice
    per LSTM call): the layers only read h0 / c0, and nothing hands it to the caller.
    Kept apart per inference mode (an inference tensor cannot be saved for backward);
    under torch.compile, tracing, a torch.func transform (a zero made inside jacfwd is
    wrapped for that transform's level, and reused by a later transform it fails
    functorch's level check), or for a tensor subclass (fake tensors) a fresh one."""
    if type(like) is not torch.Tensor or torch.compiler.is_compiling() \
            or torch.jit.is_tracing() or dispatch.in_functorch_transform():
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    key = (shape, like.dtype, like.device, torch.is_inference_mode_enabled())
    z = _ZEROS.get(key)
    if z is None:
        if len(_ZEROS) > 64:
            _ZEROS.clear()
        z = _ZEROS[key] = torch.zeros(shape, dtype=like.dtype, device=like.device)
    return z


def _packed_index(batch_sizes, device, rows=True):
    """Rows of a [T * B] time-major padded batch (sorted batch order) that a
    PackedSequence's data holds, in its order (None when not ``rows``), and the sorted
    lengths [B] (CPU int64)."""
    # numpy: ~4 us against ~15 us for the same five torch ops (T = 100, B = 32)
    bs = batch_sizes.to(torch.int64).numpy()  # a PackedSequence's: CPU, non-increasing
    B = int(bs[0])
    # lengths[b] = the steps with more than b rows: a suffix sum of the counts of bs
    suffix = np.cumsum(np.bincount(bs, minlength=B + 1)[::-1])[::-1]
    lengths = torch.from_numpy(suffix[1:B + 1].copy())
    if not rows:
        return None, lengths
    mask = np.arange(B)[None, :] < bs[:, None]  # [T, B]
    return torch.from_numpy(np.flatnonzero(mask)).to(device), lengths


def _integer(value):
    """Whether ``value`` is an integer other than a bool (a numpy integer: torch's
    operators take it through ``__index__``, as torch.nn's constructor does)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _type_name(value):
    """``int``, ``numpy.int64``: a value's type, named with its module where that is not
    Python's own (numpy's bool is named ``bool`` too)."""
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


_MISSING = object()  # a name absent from __dict__ / _parameters
_TORCH_FORWARD = {"rnn": nn.RNN.forward, "lstm": nn.LSTM.forward, "gru": nn.GRU.forward}
_TORCH_OP_DTYPES = (torch.float32, torch.float64)
_KERNELS_WIN = object()  # _torch_forward_if_faster: the rule keeps the kernels


def _equal_batch_sizes(sizes):
    """Whether a PackedSequence's batch_sizes (as given: trailing zeros kept) are all
    equal and not empty: torch.nn's CPU LSTM then runs it as a padded batch, on oneDNN
    where oneDNN takes the data (see _FusedRNNBase._autocast_dtype)."""
    return len(sizes) > 0 and bool((sizes == sizes[0]).all())


def _onednn_takes(x):
    """Whether torch.nn's CPU LSTM operator hands input ``x`` to oneDNN (aten's
    use_mkldnn, torch 2.13): oneDNN built in and enabled, data not empty, and float32,
    bfloat16 where the CPU has oneDNN's bfloat16 support, or float16 outside grad mode
    where it has its float16 support."""
    if not (_ONEDNN and torch.backends.mkldnn.enabled) or x.numel() == 0:
        return False
    if x.dtype == torch.float32:
        return True
    if x.dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return x.dtype == torch.float16 and not torch.is_grad_enabled() \
        and torch.ops.mkldnn._is_mkldnn_fp16_supported()


def _states(hx):
    """hx as a tuple of its tensors: () for None, (h_0, c_0) for an LSTM's, (h_0,)."""
    return () if hx is None else (hx if isinstance(hx, tuple) else (hx,))


def _bias_copies(module):
    """The module's flat weights with each bias copied (``clone``: gradients flow to the
    bias), for torch.nn's operator where it would keep the biases themselves for
    backward (:meth:`_FusedRNNBase._torch_op_copies`)."""
    return [w.clone() if w is not None and name.startswith("bias") else w
            for name, w in zip(module._flat_weights_names, module._flat_weights)]


def _require_rnnfast_module(module, who):
    """Raise TypeError unless ``module`` is rnnfast's RNN, LSTM or GRU (``who`` names the
    caller in the message): torch.nn's own modules run only torch's kernels."""
    if not isinstance(module, _FusedRNNBase):
        raise TypeError(f"{who} expects an rnnfast RNN, LSTM or GRU module, "
                        f"got {type(module).__module__}.{type(module).__qualname__}")


class _FusedRNNBase(nn.RNNBase):
    """Shared forward: torch.nn's input handling and checks, then the layer stack."""

    _cell = None  # 'rnn' | 'lstm' | 'gru'

    def _init_extras(self, backend):
        check_backend_name(backend)
        self.backend = backend
        self.record_grad_norms = False
        self._grad_norm_probes = None

    # ------------------------------------------------------------ telemetry
    @property
    def last_grad_norms(self):
        """[num_layers * num_directions, T] float64 ||dL/dh_t|| of the last backward,
        when ``record_grad_norms`` was on for its forward (else None). Row
        ``layer * num_directions + direction``, column t = input position."""
        probes = self._grad_norm_probes
        if probes is None:
            return None
        # each layer backward keeps its norms on its probe, with its backward pass
        # (eager); under torch.compile they arrive as the probe's gradient, through
        # backward() only. Rows of two different passes (a later backward that reached
        # some layers only) are no answer: None.
        kept = [getattr(p, reference.NORMS_ATTR, None) for p in probes]
        if all(k is None for k in kept):
            if any(p.grad is None for p in probes):
                return None
            return torch.stack([p.grad for p in probes])
        if any(k is None for k in kept) or len({k[0] for k in kept}) != 1:
            return None
        return torch.stack([k[1] for k in kept])

    def _new_probes(self, T, device, tensors=()):
        """One float64 [T] probe per layer and direction, whose gradient each backward
        sets to that layer's ||dL/dh_t|| (rnnfast.diagnostics). Raises RNNArgumentError
        where no backward can hand them over (:func:`_norms_unrecordable`).

        A call's probes become the module's (``last_grad_norms`` reads them). A forward
        run inside a backward pass is ``torch.utils.checkpoint`` recomputing a call:

        * non-reentrant: it only rebuilds saved tensors for the graph of the original
          call, whose backward keeps its norms on that call's own probes: the module's
          stay;
        * reentrant: the original call ran under no_grad and built no graph; the
          recompute's graph is the one its backward runs through (every backward
          again). Its probes take the module's place where those came from a no_grad
          call (this one's original, when it was the module's last call) or from a
          recompute in an earlier backward pass (a second backward through the same
          call, or the next call's own backward); in the same pass the first
          recompute, that of the latest call (autograd runs later nodes first), keeps
          them."""
        why = _norms_unrecordable(tensors)
        if why is not None:
            raise RNNArgumentError(
                f"record_grad_norms=True cannot record the per-step gradient norms under "
                f"{why}; set module.record_grad_norms = False for this call")
        n = self.num_layers * (2 if self.bidirectional else 1)
        probes = [torch.zeros(T, dtype=torch.float64, device=device, requires_grad=True)
                  for _ in range(n)]
        for p in probes:
            p.register_hook(_LastGradOnly(p))
        task = torch._C._current_graph_task_id()
        if task == -1:  # the user's call
            state = (not torch.is_grad_enabled(), -1)
        elif _checkpoint_recompute():
            return probes
        else:
            pending, made_in = getattr(self, "_probe_state", (False, -1))
            if self._grad_norm_probes is None or not (pending or made_in not in (-1, task)):
                return probes
            state = (False, task)
        # (object.__setattr__: nn.Module's costs ~10 us a call)
        object.__setattr__(self, "_grad_norm_probes", probes)
        object.__setattr__(self, "_probe_state", state)  # (no_grad call, recompute's pass)
        return probes

    # ------------------------------------------------------------ torch.nn's surface
    def _state_size(self):
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _zeros_state(self, input, B):
        """hx=None's zero state. A size that is not an int (hidden_size or proj_size set
        to 7.0 after construction) goes to torch.zeros as torch.nn's forward hands it
        over, which raises torch.nn's TypeError ("zeros(): argument 'size' failed to
        unpack the object at pos 3 ...") where torch does (the cached zeros would take
        7.0 for 7)."""
        n = self.num_layers * (2 if self.bidirectional else 1)
        sizes = (self._state_size(), self.hidden_size)
        if not (type(n) is int and type(sizes[0]) is int and type(sizes[1]) is int):
            like = {"dtype": input.dtype, "device": input.device}
            h = torch.zeros(n, B, sizes[0], **like)
            return (h, torch.zeros(n, B, sizes[1], **like)) if self._cell == "lstm" else h
        h = _zeros(input, (n, B, sizes[0]))
        if self._cell != "lstm":
            return h
        return h, _zeros(input, (n, B, sizes[1]))

    def _check_hx_dims(self, hx, is_batched, packed=None):
        """torch.nn's type and dimension checks of a user's hx; returns hx with a batch
        axis. An LSTM's hx of more than two tensors passes as torch.nn's does: its first
        two are checked, the unbatched form keeps only them, and the batched one keeps
        them all (forward then raises torch's "lstm expects two hidden states").

        ``packed``: (data, batch_sizes) of a PackedSequence input, for which torch.nn
        has no dimension check: an hx that is not 3-D fails its size check instead
        ("Expected hidden size (1, 3, 6), got [3, 3]"; torch.nn's LSTM skips even that
        and fails inside aten::lstm with an IndexError, so its message is the one of
        its padded path's size check, raised as an IndexError too)."""
        want, form = (3, "batched 3-D") if is_batched else (2, "unbatched 2-D")
        if self._cell == "lstm":
            stacked = isinstance(hx, torch.Tensor)  # torch.stack([h_0, c_0]): see below
            if not stacked and not isinstance(hx, (tuple, list)):
                # torch.nn reads hx[0].dim(): a TypeError where hx has no [0], else an
                # AttributeError
                error = _HxAttributeError if hasattr(hx, "__getitem__") else _HxTypeError
                raise error(f"LSTM: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            # torch.nn reads hx[0].dim(), then hx[1].dim(): an AttributeError for an
            # element that is not a tensor, an IndexError where there is no hx[1]
            for i in range(2) if not stacked else ():
                if i == len(hx):
                    raise _LstmHxIndexError(
                        f"LSTM: hx must be a tuple (h_0, c_0), got a {type(hx).__name__} "
                        f"of {len(hx)} tensor{'s' if len(hx) != 1 else ''}")
                if not isinstance(hx[i], torch.Tensor):
                    raise _HxAttributeError(f"LSTM: hx[{i}] must be a Tensor, got "
                                            f"{type(hx[i]).__name__}")
            if hx[0].dim() != want or hx[1].dim() != want:
                self._raise_packed_size_check(packed, tuple(hx))
                raise RNNArgumentError(
                    f"For {form} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            # One stacked tensor torch.stack([h_0, c_0]): torch.nn.LSTM only indexes
            # hx[0] and hx[1], so it works where torch.nn makes a tuple of them (an
            # unbatched input; a PackedSequence with a permutation) and fails in
            # aten::lstm elsewhere (_checked_args raises that TypeError).
            if is_batched:
                return (hx[0], hx[1]) if stacked else tuple(hx)
            return hx[0].unsqueeze(1), hx[1].unsqueeze(1)
        if not isinstance(hx, torch.Tensor):  # torch.nn: hx.dim(), an AttributeError
            raise _HxAttributeError(f"hx must be a Tensor, got {type(hx).__name__}")
        if hx.dim() != want:
            self._raise_packed_size_check(packed, hx)
            raise RNNArgumentError(
                f"For {form} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
        return hx if is_batched else hx.unsqueeze(1)

    def _raise_packed_size_check(self, packed, hx):
        """For packed input (``packed``: its data and batch_sizes; else nothing), raise
        torch.nn's size check of hx (see :meth:`_check_hx_dims`)."""
        if packed is None:
            return
        # torch.nn's LSTM fails inside aten::lstm there with an IndexError: so is this
        error = _LstmHxIndexError if self._cell == "lstm" else RNNArgumentError
        try:
            self.check_forward_args(packed[0], hx, packed[1])
        except (ValueError, RuntimeError) as e:
            raise error(str(e)) from None
        raise AssertionError("an hx that is not 3-D passed torch.nn's size check")

    def _check_packed_lstm_input(self, data):
        """torch.nn's LSTM runs no check of a PackedSequence's data (its RNN and GRU do):
        aten::lstm's first product of ``data`` [N, I'] with weight_ih_l0^T raises
        instead, with the matmul's message (dtype first: "mat1 and mat2 must have the same
        dtype, but got Double and Float"; then the size: "mat1 and mat2 shapes cannot be
        multiplied (10x4 and 3x20)"). So does rnnfast, as a RuntimeError too (torch
        2.13). Under autocast the dtype is not compared (autocast casts; a float64 one
        is :meth:`_check_autocast_operands`' concern)."""
        w = self._flat_weights[0]
        if w is None:
            return  # the missing weight's own error, in _check_devices_and_state_dtypes
        if data.dtype != w.dtype and not torch._C._is_any_autocast_enabled():
            raise RNNArgumentError(
                f"mat1 and mat2 must have the same dtype, but got "
                f"{_scalar_type_name(data.dtype)} and {_scalar_type_name(w.dtype)}")
        if data.dim() == 2 and w.dim() == 2 and data.shape[1] != w.shape[1]:
            raise RNNArgumentError(
                f"mat1 and mat2 shapes cannot be multiplied "
                f"({data.shape[0]}x{data.shape[1]} and {w.shape[1]}x{w.shape[0]})")

    def _check_devices_and_state_dtypes(self, input, hx, packed=False, sizes=None):
        """Devices of input, every parameter and hx; dtypes of hx and of every
        parameter. torch.nn compares the input with the first weight only, and a
        parameter of another dtype (a float64 weight_hh_l0 in a float32 module) then
        fails inside its operator ("self and mat2 must have the same dtype, but got
        Float and Double"): here that message is raised up front, naming the
        parameter, where the kernels would otherwise run each weight in its own dtype.
        A weight set to None after construction (``m.bias_hh_l0 = None``) raises the
        TypeError torch.nn's operator raises for it (its weights are that operator's
        argument 2, or 3 for packed input), where the kernels would otherwise run the
        layer without that weight."""
        shapes = self._weight_shapes()
        w0 = self._flat_weights[0]
        autocast = torch._C._is_any_autocast_enabled()
        for i, (name, w, shape) in enumerate(zip(self._flat_weights_names,
                                                 self._flat_weights, shapes)):
            if w is None:
                raise _missing_weight_error(i, packed)
            if w.shape != shape:
                raise RNNArgumentError(
                    f"{self._mode_name()}: parameter {name} has shape {tuple(w.shape)}, "
                    f"but {self._options()} need {shape}")
            if input.device != w.device:
                raise RNNArgumentError(
                    f"Input and parameter tensors are not at the same device, found "
                    f"input tensor at {input.device} and parameter tensor at {w.device}")
            if w.dtype != w0.dtype and not autocast:
                raise RNNArgumentError(
                    f"{self._mode_name()}: parameter {name} has dtype {w.dtype}, but "
                    f"{self._flat_weights_names[0]} has {w0.dtype}: self and mat2 must "
                    f"have the same dtype, but got {_scalar_type_name(w0.dtype)} and "
                    f"{_scalar_type_name(w.dtype)}")
        pair = isinstance(hx, tuple)
        for i, h in enumerate(hx if pair else (hx,)):
            if h.device != input.device:
                raise RNNArgumentError(
                    f"Input and hidden tensors are not at the same device, found input "
                    f"tensor at {input.device} and hidden tensor at {h.device}")
            if h.dtype != input.dtype and not autocast:
                raise RNNArgumentError(
                    f"{self._mode_name()} hidden dtype ({h.dtype}) does not match input "
                    f"dtype ({input.dtype}) for hx{f'[{i}]' if pair else ''}")
        if autocast:
            self._check_autocast_operands(input, hx, sizes)

    def _check_autocast_operands(self, input, hx, sizes):
        """Under autocast, torch.nn's products cast float32, float16 and bfloat16
        tensors to the autocast dtype and nothing else: a float64 tensor among others,
        and any input or state that is not floating point (integer, bool, complex), then
        meets the autocast dtype in a product, and torch.nn raises. So does rnnfast,
        with torch.nn's message for the same operand, where it would otherwise cast them
        (``sizes``: a PackedSequence's batch_sizes as given, None for a padded input).
        Measured on CPU, torch 2.13, over the input, h_0 and c_0 in float32, float64,
        int64, complex64 and bfloat16, padded and packed:

        * the input first (the input projection): "mat1 and mat2 must have the same
          dtype, but got Long and BFloat16" (Double for a float64 input among float32
          weights; where every weight is float64, hx is the odd one out);
        * an LSTM that oneDNN runs (:meth:`_onednn_lstm`): any state of another dtype,
          "get_mkldnn_dtype: unsupported data type", as a float64 weight;
        * else h_0 (the recurrent product): "mat1 and mat2 must have the same dtype, but
          got Long and BFloat16"; the same for a float64 h_0 (or c_0, whose product
          with o reaches the next step's); a projected LSTM's float64 c_0 meets W_hr
          first ("expected m1 and m2 to have the same dtype, but got: double !=
          c10::BFloat16"); a float64 weight: "self and mat2 must have the same dtype,
          but got BFloat16 and Double".

        An LSTM's c_0 enters only elementwise products outside oneDNN: torch.nn runs an
        integer one (promoted), and so does rnnfast. All float64: nothing is cast (see
        :meth:`_autocast_dtype`)."""
        device_type = input.device.type
        if not torch.is_autocast_enabled(device_type):
            return
        f64 = torch.float64
        states = hx if isinstance(hx, tuple) else (hx,)
        weights = [w for w in self._flat_weights if w is not None]
        ac = _scalar_type_name(torch.get_autocast_dtype(device_type))
        w_f64 = all(w.dtype == f64 for w in weights)

        def mm_error(dtype, other):
            return RNNArgumentError(f"mat1 and mat2 must have the same dtype, but got "
                                    f"{_scalar_type_name(dtype)} and {other}")

        if not input.dtype.is_floating_point:
            raise mm_error(input.dtype, "Double" if w_f64 else ac)
        if input.dtype == f64 and not w_f64:
            raise mm_error(f64, ac)
        onednn = self._onednn_lstm(device_type, input, sizes)
        if onednn and any(not h.dtype.is_floating_point for h in states):
            raise RNNArgumentError("get_mkldnn_dtype: unsupported data type")
        if not onednn and not states[0].dtype.is_floating_point:
            raise mm_error(states[0].dtype, "Double" if w_f64 else ac)
        kinds = {t.dtype == f64 for t in (input, *states, *weights)}
        if len(kinds) < 2:
            return
        if input.dtype == f64:  # every weight is float64: hx is the odd one out
            raise mm_error(torch.get_autocast_dtype(device_type), "Double")
        if onednn:
            raise RNNArgumentError("get_mkldnn_dtype: unsupported data type")
        if states[0].dtype == f64 or (len(states) > 1 and states[1].dtype == f64
                                      and self.proj_size <= 0):
            raise mm_error(f64, ac)
        if len(states) > 1 and states[1].dtype == f64:  # the projection r @ W_hr^T
            raise RNNArgumentError(f"expected m1 and m2 to have the same dtype, but got: "
                                   f"double != c10::{ac}")
        raise RNNArgumentError(f"self and mat2 must have the same dtype, but got {ac} and "
                               f"Double")

    def _onednn_lstm(self, device_type, input, sizes):
        """Whether torch.nn's CPU LSTM operator would run this call (input not float64,
        as :meth:`_check_autocast_operands` has it) on oneDNN under autocast: no
        projection, and a padded input or a PackedSequence whose batch_sizes (as given)
        are all equal (see :meth:`_autocast_dtype`)."""
        return self._cell == "lstm" and device_type == "cpu" and self.proj_size <= 0 \
            and input.dtype != torch.float64 and (
                sizes is None or _equal_batch_sizes(sizes))

    def _options(self):
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}"
                + (f", proj_size={self.proj_size}" if self.proj_size else ""))

    def _weight_shapes(self):
        """The shape of each of ``_flat_weights`` that the module's options (num_layers,
        bidirectional, bias, proj_size, input_size, hidden_size) need. torch.nn fixes
        its weights at construction and reads these options again at every call, so an
        option changed afterwards (``m.bias = False``, ``m.num_layers = 1``) makes aten
        raise; here the same messages ("got an incorrect number of RNN parameters",
        "Odd number of params or hiddens given to a bidirectional RNN", "Expected more
        weights in stacked_rnn") are raised before any kernel, where the layer stack
        would otherwise run the weights the options name and drop the rest. Cached on
        the options. Raises RNNArgumentError."""
        key = (self.num_layers, self.bidirectional, self.bias, self.proj_size,
               self.input_size, self.hidden_size, len(self._flat_weights_names))
        plan = self.__dict__.get("_weight_shapes_plan")
        if plan is not None and plan[0] == key:
            return plan[1]
        D = 2 if self.bidirectional else 1
        per = (4 if self.bias else 2) + (self.proj_size > 0)
        n = len(self._flat_weights_names)
        if n % per:
            raise RNNArgumentError("got an incorrect number of RNN parameters")
        if (n // per) % D:
            raise RNNArgumentError(
                "Odd number of params or hiddens given to a bidirectional RNN")
        if n // per // D != self.num_layers:
            raise RNNArgumentError("Expected more weights in stacked_rnn")
        G = {"rnn": 1, "lstm": 4, "gru": 3}[self._cell] * self.hidden_size
        out = self._state_size()
        names, shapes = [], []
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else D * out
            for suffix in ("", "_reverse")[:D]:
                kinds = [("weight_ih", (G, width)), ("weight_hh", (G, out))]
                if self.bias:
                    kinds += [("bias_ih", (G,)), ("bias_hh", (G,))]
                if self.proj_size > 0:
                    kinds.append(("weight_hr", (self.proj_size, self.hidden_size)))
                for kind, shape in kinds:
                    names.append(f"{kind}_l{layer}{suffix}")
                    shapes.append(shape)
        if names != list(self._flat_weights_names):
            raise RNNArgumentError(
                f"{self._mode_name()}: num_layers={self.num_layers}, bidirectional="
                f"{self.bidirectional}, bias={self.bias}, proj_size={self.proj_size} "
                f"name the weights {names}, but the module holds "
                f"{list(self._flat_weights_names)} (an option changed after construction)")
        self.__dict__["_weight_shapes_plan"] = (key, shapes)
        return shapes

    def _mode_name(self):
        return {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[self._cell]

    def _update_flat_weights(self):
        """torch.nn's RNNBase._update_flat_weights (re-read the weights when one was
        replaced, e.g. by torch.func.functional_call, weight_norm or pruning) without its
        getattr / hasattr per weight (~50 us per forward here): a weight that is an
        instance attribute or a registered parameter is compared directly; any other
        kind (a parametrization's property, a buffer) takes torch.nn's own check."""
        d, params = self.__dict__, self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            w = d.get(name, _MISSING)
            if w is _MISSING:
                w = params.get(name, _MISSING)
                if w is _MISSING:
                    return super()._update_flat_weights()
            if ref is not None and w is not None and ref() is not w:
                self._init_flat_weights()
                return

    def _forward(self, input, hx=None):
        """torch.nn.<Cell>.forward's contract: input [T, B, I] ([B, T, I] with
        batch_first), unbatched [T, I], or a PackedSequence; hx as torch.nn's (a tuple
        (h_0, c_0) for the LSTM). Returns (output, h_n) or (output, (h_n, c_n)).

        Raises torch.nn's errors, with its messages, for a wrong input dimension, size,
        dtype, hidden-state shape, or an empty sequence.

        Each cell's class has a ``forward`` of its own that calls this one, as torch.nn's
        classes each have theirs: torch.compile's recompile limit (8) counts per code
        object, and one ``forward`` shared by the three classes had modules of one class
        compiled directly use up the others' (an LSTM and a GRU ran eagerly after a
        ReLU-RNN at a limit of 1)."""
        if _DYNAMO_COMPILING() and isinstance(input, PackedSequence):
            return _packed_outside_the_graph(self, input, hx)
        if self._grad_norm_probes is not None and not self.record_grad_norms:
            # last_grad_norms: None after a call without them, whichever path runs it
            self._grad_norm_probes = None  # nn.Module.__setattr__: ~10 us, so on change
        early = self._torch_forward_if_faster(input, hx) if self.backend == "auto" else None
        if early is _KERNELS_WIN:
            ruled = True  # the weights read, and no rule hands this call to torch.nn
        elif early is not None:
            return early  # torch.nn's operator wins this call: no detour through ours
        else:
            ruled = False
            self._update_flat_weights()
        packed = isinstance(input, PackedSequence)
        packed_batch_sizes = input.batch_sizes if packed else None  # trailing zeros kept
        input, batch_sizes, sorted_indices, unsorted_indices, is_batched, hx = \
            self._checked_args(input, hx)
        dropout = _dropout_checked(self)
        if self.training and self.num_layers > 1 and not 0 <= dropout <= 1:
            # set after construction (torch.nn's check; aten prints a double as %g)
            raise RNNArgumentError(f"dropout probability has to be between 0 and 1, but got "
                                   f"{dropout:g}")

        if (torch.jit.is_tracing() or torch.compiler.is_compiling()) \
                and torch.onnx.is_in_onnx_export():  # both ONNX exporters trace
            output, state = self._torch_rnn_op(input, batch_sizes, hx)
        elif packed and input.shape[0] == 0 and not (torch.jit.is_tracing() or
                                                   torch.compiler.is_compiling()):
            # batch_sizes all zeros: no row at all (torch.nn runs it)
            width = input.shape[-1]
            x = input.view((0, 1, width) if self.batch_first else (1, 0, width))
            output, state = self._layers(x, None, hx, sizes=packed_batch_sizes)
            output = output.reshape(0, output.shape[-1])
        else:
            output, state = self._layers(input, batch_sizes, hx, rule=not ruled,
                                         sizes=packed_batch_sizes)

        if packed:
            return (PackedSequence(output, packed_batch_sizes, sorted_indices,
                                   unsorted_indices),
                    self.permute_hidden(state, unsorted_indices))
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            state = (tuple(s.squeeze(1) for s in state) if isinstance(state, tuple)
                     else state.squeeze(1))
        return output, state

    def _checked_args(self, input, hx):
        """forward's input handling and checks, before any kernel runs: (input as a
        batched Tensor [T, B, I] ([B, T, I] with batch_first) or packed data [N, I],
        batch_sizes, sorted_indices, unsorted_indices, is_batched, hx in the sorted
        batch order, zeros when None). Raises torch.nn's errors (see forward)."""
        if type(self.bidirectional) is not bool:  # torch.nn: aten's TypeError at the call
            raise TypeError(f"bidirectional should be of type bool, got: "
                            f"{_type_name(self.bidirectional)}")
        if type(self.num_layers) is not int and not _integer(self.num_layers):
            raise TypeError(f"num_layers should be of type int, got: "
                            f"{_type_name(self.num_layers)}")
        if type(self.bias) is not bool or type(self.batch_first) is not bool:
            # set after construction (torch.nn's constructor checks them, its operator
            # raises aten's TypeError at the call; the kernels would take 1 as True)
            name = "bias" if type(self.bias) is not bool else "batch_first"
            raise TypeError(f"{name} should be of type bool, got: "
                            f"{_type_name(getattr(self, name))}")
        packed = isinstance(input, PackedSequence)
        # An LSTM's hx as one stacked tensor: see _check_hx_dims. torch.nn hands it to
        # aten::lstm as it is (a TypeError) for a padded batch and a sorted PackedSequence.
        stacked = self._cell == "lstm" and isinstance(hx, torch.Tensor)
        given_sizes = input.batch_sizes if packed else None
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None and batch_sizes.is_floating_point():
                # torch.nn makes the zero state from batch_sizes[0] first: a TypeError
                raise TypeError(_FLOAT_BATCH_SIZES)
            input, batch_sizes = _checked_batch_sizes(input, batch_sizes)
            is_batched, B = True, int(batch_sizes[0])
            if hx is not None:
                if stacked and sorted_indices is None:
                    raise TypeError(_LSTM_TENSOR_HX)
                hx = self.permute_hidden(
                    self._check_hx_dims(hx, True, (input, batch_sizes)), sorted_indices)
        else:
            if input.dim() not in (2, 3):
                noun = " tensor" if self._cell == "rnn" else ""  # torch.nn's wording
                raise RNNArgumentError(f"{self._mode_name()}: Expected input to be 2D or "
                                       f"3D, got {input.dim()}D{noun} instead")
            batch_sizes = sorted_indices = unsorted_indices = None
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            B = input.size(0) if self.batch_first else input.size(1)
            if hx is not None:
                hx = self._check_hx_dims(hx, is_batched)
        if hx is None:
            if packed and self._cell == "lstm" and self._flat_weights[0] is None:
                # torch.nn's LSTM checks a packed input only against a given hx: its
                # operator meets the missing weight first (see below)
                raise _missing_weight_error(0, packed)
            hx = self._zeros_state(input, B)
        if packed and self._cell == "lstm":
            self._check_packed_lstm_input(input)
        try:  # torch.nn's own checks and messages, raised as both ValueError and RuntimeError
            self.check_forward_args(input, hx, batch_sizes)
        except (ValueError, RuntimeError) as e:
            raise RNNArgumentError(str(e)) from None
        if stacked and is_batched and not packed:  # after torch.nn's own checks, as there
            raise TypeError(_LSTM_TENSOR_HX)
        if self._cell == "lstm" and len(hx) != 2:  # aten::lstm's own check
            raise RNNArgumentError("lstm expects two hidden states")
        if self._cell == "rnn" and self.mode not in ("RNN_TANH", "RNN_RELU"):
            raise AssertionError(f"mode must be RNN_TANH or RNN_RELU, got {self.mode}")
        if torch.jit.is_tracing():
            # comparing each weight's traced shape with the options' warns once per
            # weight ("might cause the trace to be incorrect"); a trace holds the weights
            # as they are, so the check's answer cannot go stale in it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                self._check_devices_and_state_dtypes(input, hx, packed, given_sizes)
        else:
            self._check_devices_and_state_dtypes(input, hx, packed, given_sizes)
        if self._cell == "rnn" and self._activation() == "leaky_relu":
            self._check_negative_slope()
        T = len(batch_sizes) if packed else input.shape[1 if self.batch_first else 0]
        if not torch.jit.is_tracing() and T == 0:
            raise RNNArgumentError("Expected sequence length to be larger than 0 in RNN")
        return input, batch_sizes, sorted_indices, unsorted_indices, is_batched, hx


    # ------------------------------------------------------------ the layer stack
    def _width(self):
        return max(self.hidden_size, self.proj_size)

    def _autocast_dtype(self, device_type, sizes, x, hx):
        """The dtype autocast runs this call in, or None (the input's dtype; a float64
        input ``x`` is not cast, as autocast casts no float64 tensor). ``sizes``: a
        PackedSequence's batch_sizes as given (trailing zeros kept; None for a padded
        input), which on CPU reaches torch.nn's LSTM as aten::lstm's data overload, not
        in autocast's list. There (torch 2.13, without a projection) a batch whose
        batch_sizes are all equal (no trailing zero) and whose data oneDNN takes
        (:func:`_onednn_takes`) runs as a padded one, on oneDNN: its outputs come in the
        autocast dtype (oneDNN refuses float16 on CPUs without its float16 LSTM, and
        bfloat16 without its bfloat16 one, where rnnfast runs the call and returns that
        dtype); any other runs the cell step by step, its
        products in the autocast dtype and its state in c_0's: the output, h_n and c_n
        come in c_0's dtype promoted with the autocast dtype (float32 without hx),
        while a projected LSTM's final product hands back output and h_n in the
        autocast dtype, as padded. torch.nn's CPU GRU is not in autocast's list but its
        products are: its outputs come in h0's dtype (``hx``'s) promoted with the
        autocast dtype (torch 2.13). A padded float16 input to the LSTM (no projection)
        whose h_0 is not in the autocast dtype comes back in float32, as torch.nn's
        (torch 2.13, measured over float32 / bfloat16 / float16 h_0 and both autocast
        dtypes); so does a bfloat16 one where oneDNN has no bfloat16 LSTM."""
        if x.dtype == torch.float64 or device_type not in AUTOCAST_CELLS \
                or not torch.is_autocast_enabled(device_type):
            return None
        cast = torch.get_autocast_dtype(device_type)
        if device_type == "cpu" and self._cell == "gru":
            return torch.promote_types(hx.dtype, cast)
        if device_type == "cpu" and self._cell == "lstm" and sizes is not None \
                and self.proj_size <= 0:
            if _onednn_takes(x) and _equal_batch_sizes(sizes):
                return cast
            return torch.promote_types(hx[1].dtype, cast)
        if device_type == "cpu" and self._cell == "lstm" and sizes is None \
                and self.proj_size <= 0 and hx[0].dtype != cast and (
                    x.dtype == torch.float16
                    or (x.dtype == torch.bfloat16 and not _onednn_takes(x))):
            # torch 2.13: a padded (or unbatched) float16 input whose h_0 is not in the
            # autocast dtype (zeros in the input's without hx) returns float32; so does
            # a bfloat16 one on a CPU without oneDNN's bfloat16 support (measured on an
            # AMD EPYC Zen 3, AVX2, 2026-12-08: every bfloat16-input case of
            # tests/test_dropin.py::test_autocast_lstm_output_dtype)
            return torch.float32
        if self._cell in AUTOCAST_CELLS[device_type]:
            return cast
        return None

    def plan(self, input, hx=None):
        """The implementation a call ``module(input, hx)`` runs (input: a Tensor or
        PackedSequence; hx as forward's): a :class:`rnnfast.dispatch.Backend`. hx counts
        only through whether it requires grad (whether the call builds a graph: see
        :meth:`_torch_op_wins`).

        Raises what the call would raise for the same input and hx (forward's checks
        run first), so a bad input never gets a plan."""
        self._update_flat_weights()
        x, batch_sizes, _, _, _, hx = self._checked_args(input, hx)
        sizes = input.batch_sizes if isinstance(input, PackedSequence) else None
        dtype = self._autocast_dtype(x.device.type, sizes, x, hx) or x.dtype
        be = self._resolve(x, batch_sizes, hx, dtype, start=False)
        if be.name == "numba" and self.record_grad_norms \
                and self._can_run_torch_op(x, dtype, norms=False):
            # say why a call that 'auto' would hand to torch.nn's operator stays
            why = self._torch_op_wins(x, batch_sizes, hx, True)
            if why is not None:
                be = be._replace(reason=f"{be.reason}; torch.nn's operator would run it "
                                        f"({why}), but it has no per-step gradient norms "
                                        f"(record_grad_norms=True)")
        return be

    def _resolve(self, x, batch_sizes, hx, run_dtype, start=True, rule=True):
        """dispatch.resolve for this call: the kernels, or torch.nn's operator where it
        is faster (``rule``: ask :meth:`_torch_op_wins`) or the kernels are still
        compiling (``start``: may start that compile). Under torch.compile and the JIT
        neither is considered: a traced graph holds rnnfast's ops, never a stand-in
        chosen at trace time."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return dispatch.resolve(self.backend, x.device, run_dtype, self._width())
        torch_op = self._can_run_torch_op(x, run_dtype)
        wins = self._torch_op_wins(x, batch_sizes, hx, torch_op) if rule else None
        return dispatch.resolve(self.backend, x.device, run_dtype, self._width(),
                                cell=self._cell, torch_op=torch_op, start=start,
                                torch_op_wins=wins)

    def _torch_op_wins(self, x, batch_sizes, hx, torch_op):
        """Why torch.nn's operator is faster than the numba kernels for this call, or
        None: a call of padded input, forward-only (:func:`_lstm_inference_to_torch`,
        :func:`_short_inference_to_torch`) or training (:func:`_short_training_to_torch`;
        torch_op: CPU tensors, float32 or float64, no per-step gradient norms)."""
        if not torch_op or self.backend != "auto" or batch_sizes is not None \
                or x.dim() != 3 or (self._cell == "lstm" and self.proj_size > 0):
            return None
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        return self._torch_op_rule(T, B, x.dtype,
                                   ops.is_inference((x, *self._flat_weights, *_states(hx))))

    def _torch_op_rule(self, T, B, dtype, inference):
        """The measured rules behind :meth:`_torch_op_wins` for a padded call of T steps
        at batch B in ``dtype`` (``inference``: it builds no graph): why torch.nn's
        operator is faster there, or None."""
        if not inference:
            return _short_training_to_torch(self._cell, T)
        if self._cell == "lstm" and dtype == torch.float32 and _ONEDNN \
                and torch.backends.mkldnn.enabled:
            why = _lstm_inference_to_torch(_numba_isa(), B, self.hidden_size)
            if why is not None:
                return why
        return _short_inference_to_torch(self._cell, T, B, self.hidden_size)

    def _torch_forward_if_faster(self, input, hx):
        """torch.nn's own forward of this module (``torch.nn.<Cell>.forward``: its
        checks, then its operator), run before rnnfast's own checks, for a call that
        ``backend='auto'`` would hand to torch.nn's operator after them
        (:meth:`_torch_op_wins`: a short call, the LSTM's forward-only regions); None for
        every other call, and for one that torch.nn's forward raises on, so that the
        call goes the usual way and raises rnnfast's error for it; ``_KERNELS_WIN`` where
        it has read the weights (``_update_flat_weights``) and the rule found no reason
        to hand the call over (the usual path then needs neither again).

        Why: the result is the same operator on the same tensors, while rnnfast's checks
        and dispatch cost ~15-20 us more than torch.nn's, which at T = 1, (1, 32) is half
        of torch.nn's whole call. The tests are a subset of what the usual path asks
        before it hands a call over (:meth:`_can_run_torch_op`, dispatch's
        ``_auto_may_step_aside``): a plain CPU float32 / float64 tensor and hx, no
        autocast, torch.compile, tracing, torch.func transform or forward AD, no
        RNNFAST_BACKEND, no per-step gradient norms, no dropout drawn (rnnfast draws its
        own masks), not leaky-ReLU, not a projected LSTM, no PackedSequence, no
        parametrized weight, every weight of the shape the options need (torch.nn's
        operator does not check that)."""
        try:  # anything odd (an option of the wrong type, ...): the usual path says what
            routed = self._torch_op_call(input, hx)
        except Exception:
            return None
        if routed is not True:
            return routed
        try:
            return _TORCH_FORWARD[self._cell](self, input, hx)
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError,
                AssertionError):
            return None

    def _torch_op_call(self, input, hx):
        """:meth:`_torch_forward_if_faster`'s tests: True where the call goes to
        torch.nn's forward, else None or ``_KERNELS_WIN`` (as there)."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing() \
                or type(input) is not torch.Tensor or "parametrizations" in self._modules:
            # (a parametrized weight is computed on every read of it: torch.nn's forward
            # reads each twice, and here the usual path does too, not four times)
            return None
        dim = input.dim()
        if dim == 3:
            T, B = (input.shape[1], input.shape[0]) if self.batch_first else input.shape[:2]
        elif dim == 2:
            T, B = input.shape[0], 1
        else:
            return None
        cell = self._cell
        if cell != "lstm" and B > 0 and T >= _short_rules_max_steps():
            self._update_flat_weights()  # the common long call: no rule of the RNN's
            return _KERNELS_WIN          # or the GRU's hands it over
        if not self._can_run_torch_op(input, input.dtype) \
                or (self.training and self.dropout > 0 and self.num_layers > 1) \
                or (cell == "lstm" and self.proj_size > 0):
            return None
        if hx is None:
            state = ()
        elif type(hx) is torch.Tensor and cell != "lstm":
            state = (hx,)
        elif type(hx) is tuple and cell == "lstm" and len(hx) == 2 \
                and type(hx[0]) is torch.Tensor and type(hx[1]) is torch.Tensor:
            state = hx
        else:
            return None
        self._update_flat_weights()
        if self._torch_op_rule(T, B, input.dtype, ops.is_inference(
                (input, *self._flat_weights, *state))) is None:
            return _KERNELS_WIN  # most calls stop here
        if torch._C._is_any_autocast_enabled() or dispatch.in_functorch_transform() \
                or dispatch.in_forward_ad() \
                or setting(dispatch.ENV_VAR, "auto") != "auto":
            return None
        # torch.nn's operator does not check the weights' shapes against the options
        # (oneDNN's LSTM reads past a weight that is too small) and broadcasts a bias of
        # the wrong shape: where they differ, the usual path raises rnnfast's error (a
        # weight of another dtype or device, or None, torch.nn's operator refuses)
        for w, shape in zip(self._flat_weights, self._weight_shapes()):
            if w is None or w.shape != shape:
                return None
        return True

    def _can_run_torch_op(self, x, run_dtype, norms=None):
        """Whether torch.nn's own operator computes this call as rnnfast would (what
        backend='auto' runs while the numba kernels compile; CPU tensors only): not for
        leaky-ReLU (torch.nn has none), per-step gradient norms (``norms``: whether they
        are recorded, the module's ``record_grad_norms`` by default), CPU autocast (even
        for a cell it does not cast: torch's GRU would then run its products in
        bfloat16, the kernels in float32) or half inputs."""
        norms = self.record_grad_norms if norms is None else norms
        return (x.is_cpu and run_dtype == x.dtype
                and x.dtype in _TORCH_OP_DTYPES
                and not torch.is_autocast_enabled("cpu")
                and not norms
                and not (self._cell == "rnn" and self._activation() == "leaky_relu"))

    def _layers(self, input, batch_sizes, hx, rule=True, sizes=None):
        """input: [T, B, I] ([B, T, I] with batch_first) or packed data [N, I] with
        batch_sizes; hx in the (sorted) batch order of input -> (output like input's
        layout, state). ``rule``: False where :meth:`_torch_forward_if_faster` has
        already found no reason for torch.nn's operator (:meth:`_torch_op_wins`).
        ``sizes``: a PackedSequence's own batch_sizes, trailing zeros kept (what torch.nn's
        operator gets; :meth:`_autocast_dtype`)."""
        device_type = input.device.type
        sizes = batch_sizes if sizes is None else sizes
        autocast = self._autocast_dtype(device_type, sizes, input, hx)
        run_dtype = autocast or input.dtype
        be = self._resolve(input, batch_sizes, hx, run_dtype, rule=rule)
        if be.name == "torch.nn":  # faster here, or the numba kernels are compiling
            return self._torch_rnn_op(input, batch_sizes, hx)
        cdt = be.compute_dtype
        if cdt == input.dtype and not torch._C._is_any_autocast_enabled():
            cast = None  # the module's checks: every weight and hx has that dtype too
        else:
            def cast(t):
                return t if t is None or t.dtype == cdt else t.to(cdt)

        h0, c0 = (hx if isinstance(hx, tuple) else (hx, None))
        # A PackedSequence's data goes to the layers as it is (packed rows: each layer
        # pads only what its recurrence kernel reads), except where the layer ops must
        # see padded tensors (torch.compile, export, tracing; the reference loop).
        rows = batch_sizes is not None and be.kernels is not None and \
            ops.packed_rows_ok(input, h0, c0)
        T = len(batch_sizes) if batch_sizes is not None else None
        if rows:
            idx, lengths = _packed_index(batch_sizes, input.device, rows=False)
            x = input
        elif batch_sizes is not None:
            idx, lengths = _packed_index(batch_sizes, input.device)
            B = int(batch_sizes[0])
            x = input.new_zeros((T * B, input.shape[1])).index_copy_(0, idx, input)
            x = x.view(T, B, -1)
        else:
            lengths = None
            x = input.transpose(0, 1) if self.batch_first else input
            T = x.shape[0]
        if cast is not None:
            x, h0, c0 = cast(x), cast(h0), cast(c0)
        # The last layer's y is what its backward reads: where it becomes the output as
        # it is, the caller gets a copy (ops.rnn's copy_y), so that an in-place op on the
        # output cannot corrupt the gradient.
        args = (x, T, h0, c0, lengths, be, cast,
                idx if batch_sizes is not None and not rows else None, batch_sizes is None or rows)
        if device_type in AUTOCAST_CELLS and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                y, h_n, c_n = self._stack(*args)
        else:
            y, h_n, c_n = self._stack(*args)
        if y.dtype != run_dtype:
            y, h_n = y.to(run_dtype), h_n.to(run_dtype)
            c_n = c_n.to(run_dtype) if c_n is not None else None
        if c_n is not None and self.proj_size > 0 and autocast is not None \
                and device_type == "cpu":
            # torch.nn under CPU autocast returns a projected LSTM's c_n in c_0's dtype
            # promoted with the autocast dtype (torch 2.13: every combination of
            # float32 / bfloat16 / float16 input and hx, padded and packed)
            c_n = c_n.to(torch.promote_types(hx[1].dtype, autocast))
        elif c_n is not None and self.proj_size > 0 and run_dtype != input.dtype:
            c_n = c_n.to(hx[1].dtype)  # CUDA autocast: as before (no GPU measured it)
        if rows:
            output = y
        elif batch_sizes is not None:
            T, B, P = y.shape
            output = y.reshape(T * B, P).index_select(0, idx)
        else:
            output = y.transpose(0, 1) if self.batch_first else y
        return output, ((h_n, c_n) if c_n is not None else h_n)

    def _stack(self, x, T, h0, c0, lengths, be, cast=None, index=None, copy_y=False):
        """x [T, B, I], or packed rows [M, I] with lengths [B] -> (y like x, h_n, c_n).
        ``cast``: what each weight goes through (None: nothing, the weights have x's
        dtype). ``index``: where x is padded from a PackedSequence, its rows' positions
        among the T * B (the inter-layer dropout's mask is drawn over the rows).
        ``copy_y``: the last layer's y becomes the output as it is (ops.rnn's copy_y,
        when unidirectional)."""
        D = 2 if self.bidirectional else 1
        probes = self._new_probes(T, x.device, (x, h0, c0, *self._flat_weights)) \
            if self.record_grad_norms else None
        h_n, c_n = [], []
        cell, bias, proj = self._cell, self.bias, self.proj_size > 0
        if cell == "rnn":
            activation, slope = ACTIVATIONS[self._activation()], self.negative_slope
        flat = self._flat_weights
        per = len(flat) // (self.num_layers * D)
        last = self.num_layers - 1 if copy_y and D == 1 else -1
        for layer in range(self.num_layers):
            outs = []
            for d in range(D):
                i = layer * D + d
                w = flat[i * per:(i + 1) * per]
                if cast is not None:
                    w = [cast(t) for t in w]
                w_ih, w_hh = w[0], w[1]
                b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
                probe = probes[i] if probes is not None else None
                if cell == "lstm":
                    y, h, c = ops.lstm(x, w_ih, w_hh, b_ih, b_hh, w[-1] if proj else None,
                                       h0[i], c0[i], lengths=lengths, reverse=d == 1,
                                       backend=be, probe=probe, copy_y=layer == last)
                    c_n.append(c)
                elif cell == "gru":
                    y, h = ops.gru(x, w_ih, w_hh, b_ih, b_hh, h0[i], lengths=lengths,
                                   reverse=d == 1, backend=be, probe=probe,
                                   copy_y=layer == last)
                else:
                    y, h = ops.rnn(x, w_ih, w_hh, b_ih, b_hh, h0[i], lengths=lengths,
                                   reverse=d == 1, activation=activation,
                                   negative_slope=slope, backend=be, probe=probe,
                                   copy_y=layer == last)
                outs.append(y)
                h_n.append(h)
            x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = _inter_layer_dropout(
                    x, float(self.dropout),
                    be.name == "numba" or _numba_ready(self._cell, x.dtype), index)
        fresh = be.kernels is not None
        return x, _stack_states(h_n, fresh), (_stack_states(c_n, fresh) if c_n else None)

    # ------------------------------------------------------------ export, scripting
    def _torch_rnn_op(self, input, batch_sizes, hx):
        """torch.nn's own operator (aten::lstm, ...), which the ONNX exporters translate
        to ONNX's RNN / LSTM / GRU operators."""
        if self._cell == "rnn" and self._activation() == "leaky_relu":
            raise RNNArgumentError(
                "rnnfast.RNN(nonlinearity='leaky_relu') cannot be exported to ONNX: torch's "
                "ONNX exporters translate only tanh and relu RNNs")
        op = {"lstm": _VF.lstm, "gru": _VF.gru}.get(self._cell) or (
            _VF.rnn_tanh if self._activation() == "tanh" else _VF.rnn_relu)
        copies = self._torch_op_copies(input, hx)
        weights = _bias_copies(self) if copies else self._flat_weights
        if self.dropout > 0 and self.training and self.num_layers > 1 \
                and _philox_dropout_ok(input):
            output, state = self._torch_rnn_op_by_layer(op, input, batch_sizes, hx, weights)
            return (output.clone() if copies else output), state
        args = (weights, self.bias, self.num_layers, self.dropout, self.training,
                self.bidirectional)
        if batch_sizes is None:
            result = op(input, hx, *args, self.batch_first)
        else:
            result = op(input, batch_sizes, hx, *args)
        return (result[0].clone() if copies else result[0]), \
            (tuple(result[1:]) if self._cell == "lstm" else result[1])

    def _torch_op_copies(self, input, hx):
        """Whether :meth:`_torch_rnn_op` gives torch.nn's operator copies of the biases
        and returns a copy of its output: an LSTM's call that builds a graph, in eager
        mode. oneDNN's fused LSTM (torch.nn's float32 operator on the CPU) keeps both for
        its backward, so an in-place change of either before backward raises autograd's
        error on torch.nn.LSTM; the kernels keep neither (their backward never reads a
        bias; the module's output is a copy of the y they keep), and rnnfast allows both
        whichever path runs the call (the operator runs while the kernels compile)."""
        if self._cell != "lstm" or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        return not ops.is_inference((input, *self._flat_weights, *_states(hx)))

    def _torch_rnn_op_by_layer(self, op, input, batch_sizes, hx, weights):
        """torch.nn's operator one layer at a time, with rnnfast's inter-layer dropout
        (:func:`_inter_layer_dropout`) between them: where ``backend='auto'`` hands a
        training call to torch.nn's operator (while the numba kernels compile, or where
        it measured faster), the masks are those the kernels' path draws for the seed.
        ``weights``: the module's flat weights, or :meth:`_torch_rnn_op`'s list of them
        with copied biases."""
        D = 2 if self.bidirectional else 1
        per = len(weights) // (self.num_layers * D)
        lstm = self._cell == "lstm"
        h0, c0 = hx if lstm else (hx, None)
        x, h_n, c_n = input, [], []
        for layer in range(self.num_layers):
            w = weights[layer * D * per:(layer + 1) * D * per]
            s = slice(layer * D, (layer + 1) * D)
            hx_l = (h0[s], c0[s]) if lstm else h0[s]
            args = (w, self.bias, 1, 0.0, self.training, self.bidirectional)
            if batch_sizes is None:
                result = op(x, hx_l, *args, self.batch_first)
            else:
                result = op(x, batch_sizes, hx_l, *args)
            x = result[0]
            h_n.append(result[1])
            if lstm:
                c_n.append(result[2])
            if layer < self.num_layers - 1:
                x = _inter_layer_dropout(x, float(self.dropout), _numba_ready(self._cell, x.dtype),
                                         batch_first=batch_sizes is None and self.batch_first)
        h_n = torch.cat(h_n)
        return x, ((h_n, torch.cat(c_n)) if lstm else h_n)

    def __prepare_scriptable__(self):
        """torch.jit.script scripts torch.nn's module of the same configuration, sharing
        this module's parameters (TorchScript cannot compile rnnfast's Python layers):
        the scripted model computes the same function with torch's kernels."""
        if self._cell == "rnn" and self._activation() == "leaky_relu":
            raise RNNArgumentError(
                "torch.jit.script of rnnfast.RNN(nonlinearity='leaky_relu') is not "
                "supported: TorchScript scripts torch.nn.RNN, which has no leaky_relu")
        if self.record_grad_norms:
            raise RNNArgumentError(
                "torch.jit.script of a module with record_grad_norms=True is not "
                "supported: TorchScript scripts torch.nn's module, which records no "
                "per-step gradient norms; set module.record_grad_norms = False first")
        kwargs = dict(num_layers=self.num_layers, bias=self.bias,
                      batch_first=self.batch_first, dropout=self.dropout,
                      bidirectional=self.bidirectional)
        if self._cell == "lstm":
            twin = nn.LSTM(self.input_size, self.hidden_size, proj_size=self.proj_size,
                           **kwargs)
        elif self._cell == "gru":
            twin = nn.GRU(self.input_size, self.hidden_size, **kwargs)
        else:
            twin = nn.RNN(self.input_size, self.hidden_size,
                          nonlinearity=self._activation(), **kwargs)
        for name in self._flat_weights_names:
            setattr(twin, name, getattr(self, name))
        twin._init_flat_weights()
        twin.train(self.training)
        if _prepared_as_submodule():
            warnings.warn(
                f"torch.jit.script puts a torch.nn.{type(twin).__name__} (sharing this "
                f"module's parameters) in place of this rnnfast.{type(self).__name__} in "
                f"the module being scripted, and leaves it there: that eager module runs "
                f"torch's kernels from now on. To keep it on rnnfast, script a copy: "
                f"torch.jit.script(copy.deepcopy(model)).", stacklevel=3)
        return twin


def _prepared_as_submodule():
    """Whether torch.jit.script is preparing the calling __prepare_scriptable__'s module
    as a submodule of the one it scripts: torch's call_prepare_scriptable_func_impl then
    writes the returned module into the parent's _modules for good (torch 2.13), unlike
    a top-level module, which it leaves as it is. False where the frames are not torch's
    (another torch version: no warning rather than a wrong one)."""
    try:
        frame = sys._getframe(2)  # here <- __prepare_scriptable__ <- torch's caller
    except ValueError:
        return False
    memo = frame.f_locals.get("memo") \
        if frame.f_code.co_name == "call_prepare_scriptable_func_impl" else None
    return isinstance(memo, dict) and len(memo) > 0  # the parents prepared before it


class RNN(_FusedRNNBase):
    r"""Drop-in for :class:`torch.nn.RNN`: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

    Same arguments, defaults, parameters and return values as torch.nn.RNN, plus:

    * ``nonlinearity='leaky_relu'`` with keyword ``negative_slope`` (default 0.01, >= 0);
    * ``backend='auto' | 'numba' | 'triton' | 'torch'`` (see :mod:`rnnfast.dispatch`).

    Input: [T, B, I] (or [B, T, I] with batch_first), unbatched [T, I], or a
    PackedSequence. Returns (output, h_n) as torch.nn.RNN does.

    Attribute ``record_grad_norms`` (default False): when True, each backward leaves the
    per-step gradient norms ||dL/dh_t|| in ``last_grad_norms`` (float64 [num_layers *
    num_directions, T]; see that property and :mod:`rnnfast.diagnostics`).
    """

    _cell = "rnn"

    def forward(self, input, hx=None):
        """torch.nn.RNN.forward: input [T, B, I] ([B, T, I] with batch_first),
        unbatched [T, I], or a PackedSequence; hx [num_layers * D, B, H] or None.
        Returns (output, h_n). Raises torch.nn's errors, with its messages, for the
        same bad inputs (see _FusedRNNBase._forward)."""
        return self._forward(input, hx)

    def __init__(self, *args, negative_slope=0.01, backend="auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. "
                             f"Select from 'tanh', 'relu' or 'leaky_relu'.")
        if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
            raise TypeError(f"negative_slope should be of type float, got: "
                            f"{type(negative_slope).__name__}")
        if nonlinearity == "leaky_relu" and not negative_slope >= 0:
            raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
        mode = "RNN_RELU" if nonlinearity == "relu" else "RNN_TANH"
        super().__init__(mode, *args, **kwargs)
        self.nonlinearity = nonlinearity
        self.negative_slope = float(negative_slope)
        self._leaky = nonlinearity == "leaky_relu"
        self._init_extras(backend)

    def _check_negative_slope(self):
        """``negative_slope`` as the constructor checks it, at each call of a leaky-ReLU
        RNN (it may be set after construction; the kernels' derivative needs >= 0)."""
        slope = self.negative_slope
        if not isinstance(slope, (int, float)) or isinstance(slope, bool):
            raise TypeError(f"negative_slope should be of type float, got: "
                            f"{type(slope).__name__}")
        if not slope >= 0:
            raise RNNArgumentError(f"negative_slope must be >= 0, got {slope}")

    def _activation(self):
        """The activation a call runs, by torch.nn.RNN.forward's rule: ``mode`` (set
        from ``nonlinearity`` at construction) picks tanh (RNN_TANH) or ReLU (any other);
        torch.nn never reads ``nonlinearity`` again, so assigning it later changes
        nothing, and assigning ``mode`` does. leaky-ReLU, which torch.nn has no mode for,
        is fixed at construction too (its ``mode`` reads RNN_TANH, as torch's RNNBase
        accepts no other)."""
        if getattr(self, "_leaky", self.nonlinearity == "leaky_relu"):  # older pickles
            return "leaky_relu"
        return "tanh" if self.mode == "RNN_TANH" else "relu"

    def extra_repr(self):
        s = super().extra_repr()
        act = self._activation()  # what runs (torch.nn's repr leaves it out)
        if act != "tanh":
            s += f", nonlinearity={act}"
        if act == "leaky_relu":
            s += f", negative_slope={self.negative_slope}"
        return s + (f", backend={self.backend}" if self.backend != "auto" else "")


class LSTM(_FusedRNNBase):
    r"""Drop-in for :class:`torch.nn.LSTM` (gate order i, f, g, o; optional ``proj_size``).

    Same arguments, defaults, parameters and return values as torch.nn.LSTM, plus
    ``backend='auto' | 'numba' | 'triton' | 'torch'``. Returns (output, (h_n, c_n)).

    Attribute ``record_grad_norms`` (default False): when True, each backward leaves the
    per-step gradient norms ||dL/dh_t|| in ``last_grad_norms`` (float64 [num_layers *
    num_directions, T]; see that property and :mod:`rnnfast.diagnostics`).
    """

    _cell = "lstm"

    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def forward(self, input, hx=None):
        """torch.nn.LSTM.forward: input [T, B, I] ([B, T, I] with batch_first),
        unbatched [T, I], or a PackedSequence; hx a tuple (h_0, c_0) or None.
        Returns (output, (h_n, c_n)). Raises torch.nn's errors, with its messages, for the
        same bad inputs (see _FusedRNNBase._forward)."""
        return self._forward(input, hx)

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._init_extras(backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", backend={self.backend}" if self.backend != "auto" else "")


class GRU(_FusedRNNBase):
    r"""Drop-in for :class:`torch.nn.GRU` (gate order r, z, n)::

        r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
        z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
        h' = (1 - z) * n + z * h

    (torch.nn.GRU's documented cell; Cho et al. 2014 with the reset gate applied after
    the product, as cuDNN does). Same arguments, defaults, parameters and return values
    as torch.nn.GRU, plus ``backend='auto' | 'numba' | 'triton' | 'torch'``. Returns
    (output, h_n).

    Attribute ``record_grad_norms`` (default False): when True, each backward leaves the
    per-step gradient norms ||dL/dh_t|| in ``last_grad_norms`` (float64 [num_layers *
    num_directions, T]; see that property and :mod:`rnnfast.diagnostics`).
    """

    _cell = "gru"

    def forward(self, input, hx=None):
        """torch.nn.GRU.forward: input [T, B, I] ([B, T, I] with batch_first),
        unbatched [T, I], or a PackedSequence; hx [num_layers * D, B, H] or None.
        Returns (output, h_n). Raises torch.nn's errors, with its messages, for the
        same bad inputs (see _FusedRNNBase._forward)."""
        return self._forward(input, hx)

    def __init__(self, *args, backend="auto", **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)
        self._init_extras(backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", backend={self.backend}" if self.backend != "auto" else "")
