"""Autograd glue: one recurrent layer direction as a torch.library custom op per cell.

Each op runs the backend's input projection GEMM and recurrence kernel; its backward op
runs the BPTT kernel and the weight-gradient and input-gradient GEMMs, all over every
time step at once::

    forward:   xp = x @ W_ih^T + b_ih + b_hh;  y, h_n(, c_n) = <cell>_fwd(xp, ...)
    backward:  dxp, dh0(, dc0) = <cell>_bwd(...)
               dW_hh = dgh^T h_prev;  dW_ih = dxp^T x;  db = sum dxp;  dx = dxp W_ih
               (LSTM with proj_size: dW_hr = dh^T (o * tanh c))

The op takes the *requested* backend name and resolves the kernels from its tensors
when it runs (``dispatch.resolve``), so a traced or exported program runs on whatever
device it is given. ``probe`` (float64 [T] or None) is the gradient-norm telemetry
input: it does not affect the outputs, and its gradient is the kernel's per-step
||dL/dh_t||.

Backward is exact to any order: the first-order backward runs the fused BPTT kernel;
when autograd must differentiate the backward itself (``create_graph=True``, or batched
gradients from ``is_grads_batched`` / torch.func), it recomputes the layer with the
reference loop (:mod:`rnnfast.reference`) and returns autograd's gradients of that,
which are themselves differentiable.

A PackedSequence reaches the layers as its rows (x [M, I], its sorted lengths; y [M, H])
in plain eager mode (:func:`packed_rows_ok`): the projection and layer-gradient GEMMs run
over those M rows, and a backend whose launchers take packed rows (``PACKED_ROWS``:
numba) runs its recurrence on them as they are; for the others the layer scatters to
[T, B, *] what the kernels read and gathers back what they write (:class:`_ActiveRows`).
Under torch.compile / export / tracing the ops see a padded batch with lengths.

In plain eager mode the entry points (:func:`rnn`, :func:`lstm`, :func:`gru`) run the
forward alone when no graph will be built (no grad mode, or nothing requires grad: it
then keeps nothing for backward), else apply an ``autograd.Function`` twin of each op
(same implementation, setup and backward, without the op's Python dispatch cost); both
get the module's resolved :class:`rnnfast.dispatch.Backend` instead of its name, so
neither resolves it again (:func:`_backend_arg`); under torch.compile, torch.export,
jit.trace or with tensor subclasses they call the op, so the graph records
``rnnfast::<cell>_layer``.
"""

import functools
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import dispatch, reference
from .kernels import ACTIVATIONS
from .kernels._check import packed_offsets

_EMPTY = (0,)
_ACTIVATION_NAMES = {code: name for name, code in ACTIVATIONS.items()}


def _kernels(backend, x, width):
    """The kernel module for this call's tensors: run-time resolution inside the op
    (``backend`` the requested name), or the module's own resolution in plain eager
    mode (``backend`` a resolved :class:`rnnfast.dispatch.Backend`, with kernels)."""
    if type(backend) is dispatch.Backend:
        return backend.kernels
    be = dispatch.resolve(backend, x.device, x.dtype, width, warn=False)
    if be.kernels is None:
        raise dispatch.RNNArgumentError(
            f"rnnfast: no fused kernels for {x.dtype} tensors on {x.device} "
            f"(backend={backend!r}): {be.reason}")
    return be.kernels


def _zeros_if_none(g, like):
    return torch.zeros_like(like) if g is None else g.contiguous()


def _needs_differentiable_backward(grads):
    """True when autograd will differentiate this backward (create_graph=True) or the
    incoming gradients are batched / wrapped by torch.func."""
    fx = torch._C._functorch
    return torch.is_grad_enabled() or any(
        g is not None and (fx.is_functorch_wrapped_tensor(g) or fx.is_legacy_batchedtensor(g))
        for g in grads)


def _reference_backward(layer_fn, inputs, outputs_grads):
    """Gradients of every tensor input by autograd through ``layer_fn(*inputs)`` (the
    reference loop), differentiable when grad mode is on (create_graph)."""
    wrt = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    flag = reference.RECOMPUTE
    was, flag.on = getattr(flag, "on", False), True
    try:
        with torch.enable_grad():
            outs = layer_fn(*inputs)
    finally:
        flag.on = was
    pairs = [(o, g) for o, g in zip(outs, outputs_grads) if g is not None]
    got = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wrt],
                              [g for _, g in pairs], create_graph=torch.is_grad_enabled(),
                              allow_unused=True)
    grads = [None] * len(inputs)
    for i, g in zip(wrt, got):
        grads[i] = g
    probe = inputs[-1]  # every layer op's last input
    if isinstance(probe, Tensor) and grads[-1] is not None:
        _norms_out(probe, grads[-1])
    return tuple(grads)


def is_inference(args):
    """True when no graph will be built: grad mode is off, inference mode is on, or no
    tensor requires grad (the forward then keeps nothing for backward)."""
    return not torch.is_grad_enabled() or torch.is_inference_mode_enabled() or not any(
        isinstance(t, Tensor) and t.requires_grad for t in args)


def _plain(*tensors):
    """True in plain eager execution: not under torch.compile / export / jit.trace, and
    no tensor subclass (FakeTensor, FunctionalTensor, ...) among the arguments."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and all(
        t is None or type(t) is torch.Tensor for t in tensors)


def _backend_arg(backend, plain):
    """What a layer op gets as its backend: the resolved Backend in plain eager mode (no
    second resolution), else the requested name (the op's schema: a string, resolved
    again from its tensors when it runs, so traced programs follow their inputs)."""
    return backend if plain or type(backend) is not dispatch.Backend else backend.requested


# Where every layer op takes its input x, W_ih and its biases (b_ih, b_hh) among its
# inputs.
_X, _W_IH, _BIASES = 0, 1, (3, 4)


def _setup_context(ctx, inputs, output, saved_outputs):
    """Save every tensor input (a differentiable backward recomputes from them) and the
    outputs backward reads; the non-tensor inputs travel as plain values.

    In plain eager mode (the ops' autograd.Function twins, ``ctx.eager``) the biases
    travel as plain values too, with their versions: the first-order backward never
    reads them, and torch.nn's RNN and GRU do not save them, so an in-place change of a
    bias between forward and backward (an optimizer step, an edit under no_grad) is no
    error there. Saved, autograd raised "modified by an inplace operation" on it. A
    backward that recomputes the layer (second order) still needs their forward values:
    it raises that error where they changed (:func:`_saved`).

    So does W_ih where x needs no gradient (a first layer fed plain data): the
    first-order backward reads W_ih only for dx = dxp @ W_ih, and torch.nn's autograd
    then keeps no W_ih either, so a weight changed in place before backward (an
    optimizer step on W_ih between forward and backward, a weight average) is no error
    with torch.nn's RNN, GRU and float64 LSTM. Saved, it raised autograd's in-place
    error.

    The gradient-norms probe (every op's last input) travels as a plain value in eager
    mode too: backward then keeps the norms on the probe the forward was given. Saved,
    a non-reentrant ``torch.utils.checkpoint`` handed backward the probe of its
    recomputing forward instead, which no module holds (``last_grad_norms`` read
    None)."""
    loose = ()
    if getattr(ctx, "eager", False):
        loose = (*_BIASES, len(inputs) - 1)
        if not ctx.needs_input_grad[_X]:
            loose += (_W_IH,)
    ctx.inputs_config = [t if i in loose or not isinstance(t, Tensor) else None
                         for i, t in enumerate(inputs)]
    ctx.loose_versions = [(i, inputs[i]._version) for i in loose
                          if isinstance(inputs[i], Tensor)]
    ctx.save_for_backward(*[t if c is None and isinstance(t, Tensor) else None
                            for c, t in zip(ctx.inputs_config, inputs)],
                          *[output[i] for i in saved_outputs])
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None


def _saved(ctx, differentiable=False):
    """-> (the op's inputs, the saved outputs). ``differentiable``: for a backward that
    recomputes the layer from its inputs, which raises autograd's error where an input
    kept as a plain value (a bias, see :func:`_setup_context`) changed in place since
    the forward."""
    saved = ctx.saved_tensors
    n = len(ctx.inputs_config)
    inputs = tuple(t if c is None else c for c, t in zip(ctx.inputs_config, saved[:n]))
    for i, version in (ctx.loose_versions if differentiable else ()):
        t = inputs[i]
        if t._version != version:
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified "
                f"by an inplace operation: [{t.type()} {list(t.shape)}] is at version "
                f"{t._version}; expected version {version} instead. Hint: enable anomaly "
                f"detection to find the operation that failed to compute its gradient, "
                f"with torch.autograd.set_detect_anomaly(True).")
    return inputs, saved[n:]


def _bias_grads(has_bias, db_ih, db_hh):
    return (db_ih, db_hh) if has_bias else (None, None)


def _norms_out(probe, norms):
    """A layer backward's gradient for its ``probe`` input: the per-step norms. In eager
    mode they are also kept on the probe (reference.NORMS_ATTR), where
    ``last_grad_norms`` reads them: so they arrive from any backward, also one that asks
    autograd for other tensors only (``torch.autograd.grad(loss, params)``,
    ``backward(inputs=...)``), which never delivers the probe's gradient to its
    ``.grad``."""
    if probe is None:
        return None
    reference.keep_norms(probe, norms)
    return norms


# ---------------------------------------------------------------- packed batches' rows

# A padded batch with lengths (what a PackedSequence becomes under torch.compile, export
# and tracing; in eager mode the layers get its rows as they are) runs its layer GEMMs
# over the active rows only when they are at most this fraction of the padded T * B
# rows: each gathered row costs copies of its x, xp /
# dxp and h_{t-1}, against the GEMM work on the padding rows it saves. Packed / padded
# fwd+bwd time, gathered vs padded GEMMs, B = 32, H = 128, T = 100, float32 (AMD EPYC
# Zen 2, 2 threads, 2026-12-01): tokens ~0.5: LSTM 0.90 -> 0.71, GRU 0.95 -> 0.78,
# ReLU-RNN 0.95 -> 0.94; tokens ~0.7-0.8: LSTM 1.00 -> 0.94, GRU 0.95 -> 0.97,
# ReLU-RNN 1.04 -> 1.08 (the ReLU layer's GEMMs are a quarter of the LSTM's per row).
PACKED_ROWS_MAX_FRACTION = 0.6
# What the inactive rows of a padded buffer that the kernels only read at active rows
# hold (None: copies of row 0, the cheapest scatter). The tests set NaN to prove the
# numba kernels never read them.
UNREAD_ROWS_FILL = None


class _ActiveRows:
    """The rows of a [T, B] time-major padded batch that a packed batch holds (t <
    lengths[b]), for running the layer GEMMs over them alone (issue 13: a packed batch
    costs its tokens). The recurrence kernels read and write only these rows (an
    inactive row's y and dxp are written as 0, its xp is never read), so the projection
    can scatter into an uninitialised buffer on the numba backend.

    idx [M]: the active flat rows in time-major order. prev [M]: the flat row of y that
    holds each row's h_{t-1} in processing order (t - 1 forward, t + 1 reversed); at a
    row's first processing step (t = 0, or t = lengths[b] - 1 reversed) h_{t-1} is h0[b]
    instead: ``first_pos`` [B] are those positions in idx and ``first_b`` [B] their
    batch rows."""

    def __init__(self, lengths, T, B, reverse, device):
        # numpy: these are small index arrays, where each torch op's fixed cost
        # dominated (~200 us for T = 100, B = 32 in torch against ~60 us here). What
        # only a padded layout uses (idx, prev, src) is built on first use (_flat).
        L = lengths.to("cpu", torch.int64).numpy()
        self.M, self.T, self.B = int(L.sum()), T, B
        self._L, self._reverse, self._device = L, bool(reverse), device
        if B > 1 and not (L[1:] <= L[:-1]).all():  # unsorted (a padded batch only)
            f = self._flat
            self._np = {k: f[k] for k in ("prev_packed", "first_pos", "first_b")}
            self.offsets = f["offsets"]
            return
        # Sorted: bs[t] rows active at step t, the first bs[t] of the batch.
        bs, off = packed_offsets(L, T)
        m = np.arange(self.M)
        if reverse:  # h_{t-1} is row b of step t + 1 (row m + bs[t]) while b < bs[t + 1]
            b_of = m - np.repeat(off, bs)
            first = b_of >= np.repeat(np.append(bs[1:], 0), bs)
            prev = np.where(first, m, m + np.repeat(bs, bs))
            first_pos = np.flatnonzero(first)
            first_b = b_of[first_pos]
        else:  # row b of step t - 1 (row m - bs[t - 1]); h0 at t = 0 (the first B rows)
            prev = m - np.repeat(np.append(0, bs[:-1]), bs)
            first_pos = first_b = np.arange(B)
        # numpy (int64), made tensors on first use (see the properties below)
        self._np = {"prev_packed": prev, "first_pos": first_pos, "first_b": first_b}
        # offsets [T] (CPU): the active rows before step t (a PackedSequence's layout,
        # which a PACKED_ROWS backend's launchers take as ``offsets=``)
        self.offsets = torch.from_numpy(off)

    def _dev(self, a):
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        return t if self._device.type == "cpu" else t.to(self._device)

    @functools.cached_property
    def _flat(self):
        """The padded layout's indices, for any lengths (sorted or not), and the packed
        ones in its order."""
        T, B, L = self.T, self.B, self._L
        mask = np.arange(T)[:, None] < L[None, :]  # [T, B]
        idx = np.flatnonzero(mask)
        tt, bb = np.divmod(idx, B)
        first = tt == (L[bb] - 1 if self._reverse else 0)
        prev = np.where(first, idx, idx + B if self._reverse else idx - B)
        first_pos = np.flatnonzero(first)
        # src [T * B]: the active row each padded row is copied from by scatter (an
        # inactive row: row 0, never read); prev_packed: h_{t-1} rows as active rows.
        inv = np.zeros(T * B, dtype=np.int64)
        inv[idx] = np.arange(idx.shape[0])
        bs = mask.sum(1)
        return dict(idx=self._dev(idx), prev=self._dev(prev), src=self._dev(inv),
                    prev_np=prev, prev_packed=inv[prev], first_pos=first_pos,
                    first_b=bb[first_pos], offsets=torch.from_numpy(np.cumsum(bs) - bs))

    idx = property(lambda self: self._flat["idx"])  # [M] active flat rows
    prev = property(lambda self: self._flat["prev"])  # [M] flat row of h_{t-1}
    src = property(lambda self: self._flat["src"])  # [T * B] scatter's source rows

    def _tensor(self, name):
        """One of the index arrays in ``_np`` as an int64 tensor on the device (built
        once)."""
        key = "_t_" + name
        t = self.__dict__.get(key)
        if t is None:
            t = self.__dict__[key] = self._dev(self._np[name])
        return t

    # [M] the packed row of y holding each row's h_{t-1} (the row itself at a row's
    # first step); [B] those first steps' positions and their batch rows
    prev_packed = property(lambda self: self._tensor("prev_packed"))
    first_pos = property(lambda self: self._tensor("first_pos"))
    first_b = property(lambda self: self._tensor("first_b"))

    @staticmethod
    def of(lengths, T, B, reverse, device, always=False):
        """The active rows, or None when the batch is not packed or too full to pay
        (``always``: whatever the fraction, for a layer given packed rows). Built once
        per lengths tensor, direction and device (every layer of a stack and its
        backward share them)."""
        if lengths is None or T * B == 0:
            return None
        if not always and int(lengths.sum()) > PACKED_ROWS_MAX_FRACTION * T * B:
            return None
        cache = lengths.__dict__.setdefault("_rnnfast_active_rows", {})
        key = (T, B, bool(reverse), device)
        if key not in cache:
            cache[key] = _ActiveRows(lengths, T, B, reverse, device)
        return cache[key]

    @staticmethod
    def of_packed(x, lengths, reverse):
        """The rows of a layer given packed rows x [M, *] (a PackedSequence's data, in
        its order, with its sorted lengths [B]): T = lengths[0]."""
        return _ActiveRows.of(lengths, int(lengths[0]), lengths.shape[0], reverse,
                              x.device, always=True)

    def gather(self, t):
        """[T, B, *] -> its active rows [M, *] (a copy); packed rows [M, *] as they are."""
        if t.dim() == 2:
            return t
        return t.reshape(self.T * self.B, -1).index_select(0, self.idx)

    def scatter(self, rows, zero):
        """[M, K] -> [T, B, K]: the rows in place, the inactive rows 0 (or, when not
        ``zero``, any values: copies of row 0, which a gather writes 4x faster than
        index_copy_ scatters, or UNREAD_ROWS_FILL)."""
        K = rows.shape[1]
        if not zero and UNREAD_ROWS_FILL is None and rows.shape[0] > 0:
            out = rows.new_empty((self.T * self.B, K))
            return torch.index_select(rows, 0, self.src, out=out).view(self.T, self.B, K)
        if zero:
            out = rows.new_zeros((self.T * self.B, K))
        else:
            out = rows.new_empty((self.T * self.B, K)).fill_(UNREAD_ROWS_FILL)
        return out.index_copy_(0, self.idx, rows).view(self.T, self.B, K)

    def h_rows(self, padded):
        """int64 [M] (on the device): the row of y (padded [T * B] rows when ``padded``,
        else packed [M] rows) holding each active row's h_{t-1}, or -1 - b where it is
        h0[b] (a PACKED_ROWS backend's layer_grads ``h_rows=``)."""
        key = "h_rows_padded" if padded else "h_rows_packed"
        out = self.__dict__.get(key)
        if out is None:
            prev = (self._flat["prev_np"] if padded else self._np["prev_packed"]).copy()
            prev[self._np["first_pos"]] = -1 - self._np["first_b"]
            out = self.__dict__[key] = self._dev(prev)
        return out

    def h_prev(self, y, h0):
        """[M + 1, P]: row m is h_{t-1} of active row m (from y, padded [T, B, P] or
        packed [M, P], or from h0 [B, P]); the last row is 0 and never summed (see
        :func:`_layer_grads`)."""
        P = y.shape[-1]
        out = y.new_empty((self.M + 1, P))
        torch.index_select(y.reshape(-1, P), 0, self.prev if y.dim() == 3
                           else self.prev_packed, out=out[:self.M])
        out[:self.M].index_copy_(0, self.first_pos, h0.index_select(0, self.first_b))
        out[self.M].zero_()
        return out


def _rows(x, lengths, reverse):
    """The active rows of this layer's batch: always for packed rows x [M, I], for a
    padded x [T, B, I] with lengths when gathering them pays, else None."""
    if x.dim() == 2:
        return _ActiveRows.of_packed(x, lengths, reverse)
    return _ActiveRows.of(lengths, x.shape[0], x.shape[1], reverse, x.device)


def _padded(kern, rows, t):
    """Packed rows t [M, K] -> [T, B, K] for a recurrence kernel, which reads only the
    active rows: the rest hold any values on the numba backend (its kernels never read
    them; see _ActiveRows.scatter) and are 0 elsewhere (the Triton kernels' reads were
    not audited)."""
    return rows.scatter(t, zero=kern.NAME != "numba")


def _kernel_rows(kern, x, lengths, reverse, *ts):
    """What a recurrence launcher gets for this layer's row tensors ``ts`` (xp, dy, y:
    laid out like x), and its extra keyword arguments: as they are for a padded x (no
    extra); for packed rows x [M, I] as they are with ``offsets=`` on a PACKED_ROWS
    backend, else padded to [T, B, *] (:func:`_padded`)."""
    if x.dim() == 3:
        return ts, {}
    rows = _rows(x, lengths, reverse)
    if kern.PACKED_ROWS:
        return ts, {"offsets": rows.offsets}
    return tuple(_padded(kern, rows, t) for t in ts), {}


def _from_kernel_rows(x, lengths, reverse, y):
    """A forward launcher's y as the layer returns it: packed rows [M, P] for packed
    rows x (gathered from [T, B, P], or as they are), else y itself."""
    return _rows(x, lengths, reverse).gather(y) if x.dim() == 2 else y


def _launcher(kern, name, backend):
    """The backend's launcher ``name``, or None where it has none. In plain eager mode
    (``backend`` a module's resolved Backend: the module checked every operand) its
    unchecked twin where it has one (kernels/__init__)."""
    fn = getattr(kern, name, None)
    if fn is not None and type(backend) is dispatch.Backend:
        return getattr(kern, name + "_unchecked", fn)
    return fn


def _one_call(kern, name, x, rows, backend):
    """(the backend's one-call layer forward ``name`` (the projection and the recurrence
    together; :func:`_launcher`), the extra keyword arguments for this layer's input),
    or None where the layer runs the projection apart: the backend has no such
    launcher, or the input is a padded batch whose active rows alone are projected
    (``rows``). Padded input: {}; packed rows on a PACKED_ROWS backend: their offsets."""
    fn = _launcher(kern, name, backend)
    if fn is None:
        return None
    if rows is None:
        return fn, {}
    if x.dim() == 2 and kern.PACKED_ROWS:
        return fn, {"offsets": rows.offsets}
    return None


def _one_call_bwd(kern, name, x, lengths, backend):
    """The backend's one-call layer backward ``name`` (the BPTT and the layer GEMMs
    together; kernels/__init__; :func:`_launcher`) where it may take this layer (the
    input is a padded batch without lengths), else None. The launcher may still decline
    (None: its GEMMs go to torch.mm), and the layer then runs the recurrence launcher
    and layer_grads."""
    if lengths is not None or x.dim() != 3:
        return None
    return _launcher(kern, name, backend)


def _project(kern, x, w_ih, bias, rows):
    """The input projection x @ w_ih^T + bias -> xp: one GEMM over x's rows. x padded
    [T, B, I] -> [T, B, G]; packed rows [M, I] -> [M, G] for a PACKED_ROWS backend,
    else scattered to [T, B, G]; or the active rows gathered from a padded x (``rows``
    from :func:`_rows`) and scattered back."""
    if rows is None:
        return kern.project(x, w_ih, bias)
    xp = kern.project(rows.gather(x).unsqueeze(1), w_ih, bias).squeeze(1)  # [M, G]
    return xp if x.dim() == 2 and kern.PACKED_ROWS else _padded(kern, rows, xp)


def _layer_grads(kern, dxp, x, y, h0, w_ih, lengths, reverse, has_bias, need_dx, dgh=None):
    """kern.layer_grads, over a packed batch's active rows only when that pays.

    The gathered rows go through the backend's own layer_grads as a batch of one row
    (T = M, B = 1, forward): its dW_hh pairs dgh row m with y row m - 1 and dgh row 0
    with h0, so y = h_prev[1:] and h0 = h_prev[:1] make that sum dgh^T h_prev exactly,
    in the backend's own GEMM (and summation order over the rows)."""
    packed = x.dim() == 2  # packed rows x [M, I], y [M, P]: dx [M, I]
    rows = _rows(x, lengths, reverse)
    if rows is None:
        return kern.layer_grads(dxp, x, y, h0, w_ih, lengths, reverse, has_bias, need_dx,
                                dgh=dgh)
    if kern.PACKED_ROWS:  # the backend gathers each row's h_{t-1} itself
        dx, dw_ih, dw_hh, db_ih, db_hh = kern.layer_grads(
            rows.gather(dxp), rows.gather(x), y, h0, w_ih, None, False, has_bias,
            need_dx, dgh=rows.gather(dgh) if dgh is not None else None,
            h_rows=rows.h_rows(y.dim() == 3))
        if need_dx and not packed:
            dx = rows.scatter(dx, zero=True)
        return dx, dw_ih, dw_hh, db_ih, db_hh
    hp = rows.h_prev(y, h0)
    dx, dw_ih, dw_hh, db_ih, db_hh = kern.layer_grads(
        rows.gather(dxp).unsqueeze(1), rows.gather(x).unsqueeze(1),
        hp[1:].unsqueeze(1), hp[:1], w_ih, None, False, has_bias, need_dx,
        dgh=rows.gather(dgh).unsqueeze(1) if dgh is not None else None)
    if need_dx:
        dx = dx.squeeze(1) if packed else rows.scatter(dx.squeeze(1), zero=True)
    return dx, dw_ih, dw_hh, db_ih, db_hh


# ---------------------------------------------------------------- Elman RNN

def _rnn_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation, negative_slope,
             backend, probe, train):
    """The forward of one Elman RNN layer direction (``train=False``: nothing kept)."""
    kern = _kernels(backend, x, w_hh.shape[1])
    rows = _rows(x, lengths, reverse)
    one = _one_call(kern, "rnn_layer_fwd", x, rows, backend)
    if one is not None:
        fn, kw = one
        return fn(x, w_ih, b_ih, b_hh, w_hh, h0, lengths, reverse,
                  activation, negative_slope, train=train, **kw)
    xp = _project(kern, x, w_ih, b_ih + b_hh if b_ih is not None else None, rows)
    _, packed = _kernel_rows(kern, x, lengths, reverse)
    y, h_n = kern.rnn_fwd(xp, w_hh, h0, lengths, reverse, activation, negative_slope,
                          reuse_xp=True, train=train, **packed)
    return _from_kernel_rows(x, lengths, reverse, y), h_n


def _rnn_impl(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], h0: Tensor, lengths: Optional[Tensor],
              reverse: bool, activation: int, negative_slope: float, backend: str,
              probe: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """x [T, B, I] -> y [T, B, H], h_n [B, H]. ``activation``: rnnfast.kernels.TANH/...

    Packed rows (eager only, see :func:`rnn`): x [M, I] in a PackedSequence's data
    order with its sorted lengths [B] -> y [M, H] in the same order."""
    return _rnn_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation,
                    negative_slope, backend, probe, True)


def _rnn_bwd_impl(dy: Tensor, dh_n: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor,
                  h0: Tensor, y: Tensor, lengths: Optional[Tensor], reverse: bool,
                  activation: int, negative_slope: float, backend: str, has_bias: bool,
                  need_dx: bool, need_dh0: bool
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> dx [T, B, I] (or [0]), dW_ih, dW_hh, db_ih, db_hh [H] (or [0]), dh0 [B, H]
    (or [0, H] when not need_dh0: :func:`_no_dh0`), norms [T] float64."""
    kern = _kernels(backend, x, w_hh.shape[1])
    one = _one_call_bwd(kern, "rnn_layer_bwd", x, lengths, backend)
    if one is not None:
        out = one(dy, dh_n, x, w_ih, w_hh, h0, y, reverse, activation, negative_slope,
                  has_bias, need_dx, need_dh0)
        if out is not None:
            return (*out[:5], _no_dh0(out[5], need_dh0), out[6])
    (dy_k, y_k), packed = _kernel_rows(kern, x, lengths, reverse, dy, y)
    dxp, dh0, norms = kern.rnn_bwd(dy_k, dh_n, y_k, w_hh, lengths, reverse, activation,
                                   negative_slope, need_dh0=need_dh0, **packed)
    dx, dw_ih, dw_hh, db_ih, db_hh = _layer_grads(kern, dxp, x, y, h0, w_ih, lengths,
                                                  reverse, has_bias, need_dx)
    return dx, dw_ih, dw_hh, db_ih, db_hh, _no_dh0(dh0, need_dh0), norms


rnn_layer = torch.library.custom_op("rnnfast::rnn_layer", _rnn_impl, mutates_args=())
rnn_layer_bwd = torch.library.custom_op("rnnfast::rnn_layer_bwd", _rnn_bwd_impl,
                                        mutates_args=())


@rnn_layer.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation, negative_slope,
      backend, probe):
    return x.new_empty((x.shape[0], x.shape[1], w_hh.shape[1])), _fresh(h0)


def _no_dh0(dh0, need_dh0):
    """A layer backward's dh0 as its op returns it: itself, or, where h_0 needs no
    gradient (``need_dh0`` False: the numba kernels then skip the last step's product
    dz @ W_hh, a whole step's worth of BPTT), the [0, P] stand-in the launchers return
    (a backend that computes dh0 anyway has it dropped here)."""
    if need_dh0 or dh0.shape[0] == 0:
        return dh0
    return dh0.new_empty((0, dh0.shape[-1]))


def _fake_dh0(h0, need_dh0):
    return _fresh(h0) if need_dh0 else h0.new_empty((0, h0.shape[-1]))


def _fresh(t):
    """A contiguous tensor of t's shape and dtype: what every backward launcher returns
    for a gradient of t, whatever t's strides (empty_like would copy a transposed x's
    strides: batch_first input, and torch.compile's check of the real result against
    the fake one failed)."""
    return t.new_empty(t.shape)


def _fake_layer_grads(x, w_ih, w_hh, has_bias, need_dx):
    db = (w_hh.shape[0],) if has_bias else _EMPTY
    return (_fresh(x) if need_dx else x.new_empty(_EMPTY),
            _fresh(w_ih), _fresh(w_hh), x.new_empty(db), x.new_empty(db))


@rnn_layer_bwd.register_fake
def _(dy, dh_n, x, w_ih, w_hh, h0, y, lengths, reverse, activation, negative_slope,
      backend, has_bias, need_dx, need_dh0):
    return (*_fake_layer_grads(x, w_ih, w_hh, has_bias, need_dx), _fake_dh0(h0, need_dh0),
            x.new_empty((x.shape[0],), dtype=torch.float64))


def _reference_layer(layer_fn, x, lengths, reverse, *args):
    """``layer_fn(x, ...)`` (a reference layer) for x padded [T, B, I], or for packed
    rows x [M, I]: padded (differentiably) for the reference loop, y back to rows."""
    if x.dim() == 3:
        return layer_fn(x, *args)
    rows = _rows(x, lengths, reverse)
    xpad = x.new_zeros((rows.T * rows.B, x.shape[1])).index_copy(0, rows.idx, x)
    y, *rest = layer_fn(xpad.view(rows.T, rows.B, -1), *args)
    return (y.reshape(rows.T * rows.B, -1).index_select(0, rows.idx), *rest)


def _rnn_reference(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation,
                   negative_slope, backend, probe):
    return _reference_layer(reference.rnn_layer, x, lengths, reverse, w_ih, w_hh, b_ih,
                            b_hh, h0, lengths, reverse, _ACTIVATION_NAMES[activation],
                            negative_slope, probe)


def _rnn_setup_context(ctx, inputs, output):
    _setup_context(ctx, inputs, output, (0,))


def _rnn_backward(ctx, dy, dh_n):
    differentiable = _needs_differentiable_backward((dy, dh_n))
    inputs, (y,) = _saved(ctx, differentiable)
    if differentiable:
        return _reference_backward(_rnn_reference, inputs, (dy, dh_n))
    (x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation, negative_slope,
     backend, probe) = inputs
    dy, dh_n = _zeros_if_none(dy, y), _zeros_if_none(dh_n, h0)
    need_dx, need_dh0 = ctx.needs_input_grad[0], ctx.needs_input_grad[5]
    plain = _plain(dy, x)
    dx, dw_ih, dw_hh, db_ih, db_hh, dh0, norms = (_rnn_bwd_impl if plain else rnn_layer_bwd)(
        dy, dh_n, x, w_ih, w_hh, h0, y, lengths, reverse, activation, negative_slope,
        _backend_arg(backend, plain), b_ih is not None, need_dx, need_dh0)
    return (dx if need_dx else None, dw_ih, dw_hh,
            *_bias_grads(b_ih is not None, db_ih, db_hh), dh0 if need_dh0 else None, None,
            None, None, None, None, _norms_out(probe, norms))


rnn_layer.register_autograd(_rnn_backward, setup_context=_rnn_setup_context)


# ---------------------------------------------------------------- LSTM

def _lstm_run(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend, probe,
              train):
    """The forward of one LSTM layer direction (``train=False``: gates, cs empty)."""
    kern = _kernels(backend, x, max(w_hh.shape[1], c0.shape[1]))
    rows = _rows(x, lengths, reverse)
    one = _one_call(kern, "lstm_layer_fwd", x, rows, backend)
    if one is not None:
        fn, kw = one
        return fn(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths,
                  reverse, train=train, **kw)
    xp = _project(kern, x, w_ih, b_ih + b_hh if b_ih is not None else None, rows)
    _, packed = _kernel_rows(kern, x, lengths, reverse)
    y, h_n, c_n, gates, cs = kern.lstm_fwd(xp, w_hh, w_hr, h0, c0, lengths, reverse,
                                           reuse_xp=True, train=train, **packed)
    return _from_kernel_rows(x, lengths, reverse, y), h_n, c_n, gates, cs


def _lstm_impl(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
               b_hh: Optional[Tensor], w_hr: Optional[Tensor], h0: Tensor, c0: Tensor,
               lengths: Optional[Tensor], reverse: bool, backend: str,
               probe: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x [T, B, I] -> y [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H], cs [T, B, H]
    (the last two are saved for backward)."""
    return _lstm_run(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend,
                     probe, True)


def _lstm_bwd_impl(dy: Tensor, dh_n: Tensor, dc_n: Tensor, x: Tensor, w_ih: Tensor,
                   w_hh: Tensor, w_hr: Optional[Tensor], h0: Tensor, c0: Tensor, y: Tensor,
                   gates: Tensor, cs: Tensor, lengths: Optional[Tensor], reverse: bool,
                   backend: str, has_bias: bool, need_dx: bool, need_dh0: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                              Tensor, Tensor]:
    """-> dx, dW_ih, dW_hh, db_ih, db_hh, dW_hr ([0] without projection), dh0 (or
    [0, P] when not need_dh0: :func:`_no_dh0`), dc0, norms [T] float64."""
    kern = _kernels(backend, x, max(w_hh.shape[1], c0.shape[1]))
    one = _one_call_bwd(kern, "lstm_layer_bwd", x, lengths, backend) if w_hr is None \
        else None
    if one is not None:
        out = one(dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs, reverse, has_bias,
                  need_dx, need_dh0)
        if out is not None:
            return (*out[:5], x.new_empty(_EMPTY), _no_dh0(out[5], need_dh0), *out[6:])
    (dy_k,), packed = _kernel_rows(kern, x, lengths, reverse, dy)
    dxp, dh0, dc0, dhs, norms = kern.lstm_bwd(dy_k, dh_n, dc_n, gates, cs, c0, w_hh, w_hr,
                                              lengths, reverse, need_dh0=need_dh0, **packed)
    dh0 = _no_dh0(dh0, need_dh0)
    dx, dw_ih, dw_hh, db_ih, db_hh = _layer_grads(kern, dxp, x, y, h0, w_ih, lengths,
                                                  reverse, has_bias, need_dx)
    if w_hr is not None:
        H = cs.shape[-1]
        rows = _rows(x, lengths, reverse)
        if rows is None:
            T, B = cs.shape[0], cs.shape[1]
            r = gates[..., 3 * H:] * torch.tanh(cs)  # o * tanh(c), [T, B, H]
            dw_hr = kern.matmul_tn(dhs.reshape(T * B, dhs.shape[-1]), r.reshape(T * B, H))
        else:  # the active rows alone (an inactive row adds nothing; gather: a copy
            # of padded [T, B, *], packed rows [M, *] as they are)
            r = rows.gather(gates[..., 3 * H:]) * torch.tanh(rows.gather(cs))
            dw_hr = kern.matmul_tn(rows.gather(dhs), r)
    else:
        dw_hr = x.new_empty(_EMPTY)
    return dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0, norms


lstm_layer = torch.library.custom_op("rnnfast::lstm_layer", _lstm_impl, mutates_args=())
lstm_layer_bwd = torch.library.custom_op("rnnfast::lstm_layer_bwd", _lstm_bwd_impl,
                                         mutates_args=())


@lstm_layer.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend, probe):
    T, B, _ = x.shape
    G, P = w_hh.shape
    return (x.new_empty((T, B, P)), _fresh(h0), _fresh(c0),
            x.new_empty((T, B, G)), x.new_empty((T, B, G // 4)))


@lstm_layer_bwd.register_fake
def _(dy, dh_n, dc_n, x, w_ih, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse,
      backend, has_bias, need_dx, need_dh0):
    return (*_fake_layer_grads(x, w_ih, w_hh, has_bias, need_dx),
            _fresh(w_hr) if w_hr is not None else x.new_empty(_EMPTY),
            _fake_dh0(h0, need_dh0), _fresh(c0),
            x.new_empty((x.shape[0],), dtype=torch.float64))


def _lstm_reference(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend,
                    probe):
    return _reference_layer(reference.lstm_layer, x, lengths, reverse, w_ih, w_hh, b_ih,
                            b_hh, w_hr, h0, c0, lengths, reverse, probe)


def _lstm_setup_context(ctx, inputs, output):
    # gates and cs are outputs only to be saved: their gradients arrive as None (no
    # [T, B, 4H] zero fill on every backward).
    _setup_context(ctx, inputs, output, (0, 3, 4))


def _lstm_backward(ctx, dy, dh_n, dc_n, _dgates, _dcs):
    differentiable = _needs_differentiable_backward((dy, dh_n, dc_n))
    inputs, (y, gates, cs) = _saved(ctx, differentiable)
    if differentiable:
        return _reference_backward(_lstm_reference, inputs, (dy, dh_n, dc_n))
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend, probe = inputs
    # One time step and only c_n used: no output reads W_hr (h_1 = W_hr (o * tanh(c_1))
    # feeds nothing), so, as in torch.nn's graph, it gets no gradient (None), not zeros.
    hr_unused = w_hr is not None and dy is None and dh_n is None and (
        x.shape[0] == 1 if x.dim() == 3 else int(lengths.max()) == 1)
    dy, dh_n, dc_n = _zeros_if_none(dy, y), _zeros_if_none(dh_n, h0), _zeros_if_none(dc_n, c0)
    need_dx, need_dh0 = ctx.needs_input_grad[0], ctx.needs_input_grad[6]
    plain = _plain(dy, x)
    dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0, norms = (
        _lstm_bwd_impl if plain else lstm_layer_bwd)(
        dy, dh_n, dc_n, x, w_ih, w_hh, w_hr, h0, c0, y, gates, cs, lengths, reverse,
        _backend_arg(backend, plain), b_ih is not None, need_dx, need_dh0)
    return (dx if need_dx else None, dw_ih, dw_hh,
            *_bias_grads(b_ih is not None, db_ih, db_hh),
            dw_hr if w_hr is not None and not hr_unused else None,
            dh0 if need_dh0 else None, dc0, None, None, None, _norms_out(probe, norms))


lstm_layer.register_autograd(_lstm_backward, setup_context=_lstm_setup_context)


# ---------------------------------------------------------------- GRU

def _gru_bias(b_ih, b_hh):
    """(the projection's bias b_ih + [b_hr, b_hz, 0], b_hn), or (None, None)."""
    if b_ih is None:
        return None, None
    H = b_hh.shape[0] // 3
    return torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]]), b_hh[2 * H:]


def _gru_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, backend, probe, train):
    """The forward of one GRU layer direction (``train=False``: gates empty)."""
    kern = _kernels(backend, x, w_hh.shape[1])
    rows = _rows(x, lengths, reverse)
    one = _one_call(kern, "gru_layer_fwd", x, rows, backend)
    if one is not None:
        fn, kw = one
        return fn(x, w_ih, b_ih, b_hh, w_hh, h0, lengths, reverse,
                  train=train, **kw)
    bias, b_hn = _gru_bias(b_ih, b_hh)
    xp = _project(kern, x, w_ih, bias, rows)
    _, packed = _kernel_rows(kern, x, lengths, reverse)
    y, h_n, gates = kern.gru_fwd(xp, w_hh, b_hn, h0, lengths, reverse, reuse_xp=True,
                                 train=train, **packed)
    return _from_kernel_rows(x, lengths, reverse, y), h_n, gates


def _gru_impl(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], h0: Tensor, lengths: Optional[Tensor],
              reverse: bool, backend: str, probe: Optional[Tensor]
              ) -> tuple[Tensor, Tensor, Tensor]:
    """x [T, B, I] -> y [T, B, H], h_n [B, H], gates [T, B, 4H] (r, z, n, hn: saved for
    backward)."""
    return _gru_run(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, backend, probe, True)


def _gru_bwd_impl(dy: Tensor, dh_n: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor,
                  h0: Tensor, y: Tensor, gates: Tensor, lengths: Optional[Tensor],
                  reverse: bool, backend: str, has_bias: bool, need_dx: bool,
                  need_dh0: bool
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> dx [T, B, I] (or [0]), dW_ih, dW_hh, db_ih, db_hh [3H] (or [0]), dh0 [B, H]
    (or [0, H] when not need_dh0: :func:`_no_dh0`), norms [T] float64."""
    kern = _kernels(backend, x, w_hh.shape[1])
    one = _one_call_bwd(kern, "gru_layer_bwd", x, lengths, backend)
    if one is not None:
        out = one(dy, dh_n, x, w_ih, w_hh, h0, y, gates, reverse, has_bias, need_dx,
                  need_dh0)
        if out is not None:
            return (*out[:5], _no_dh0(out[5], need_dh0), out[6])
    (dy_k, y_k), packed = _kernel_rows(kern, x, lengths, reverse, dy, y)
    dxp, dgh, dh0, norms = kern.gru_bwd(dy_k, dh_n, y_k, gates, h0, w_hh, lengths,
                                        reverse, need_dh0=need_dh0, **packed)
    dx, dw_ih, dw_hh, db_ih, db_hh = _layer_grads(kern, dxp, x, y, h0, w_ih, lengths,
                                                  reverse, has_bias, need_dx, dgh=dgh)
    return dx, dw_ih, dw_hh, db_ih, db_hh, _no_dh0(dh0, need_dh0), norms


gru_layer = torch.library.custom_op("rnnfast::gru_layer", _gru_impl, mutates_args=())
gru_layer_bwd = torch.library.custom_op("rnnfast::gru_layer_bwd", _gru_bwd_impl,
                                        mutates_args=())


@gru_layer.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, backend, probe):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return x.new_empty((T, B, H)), _fresh(h0), x.new_empty((T, B, 4 * H))


@gru_layer_bwd.register_fake
def _(dy, dh_n, x, w_ih, w_hh, h0, y, gates, lengths, reverse, backend, has_bias,
      need_dx, need_dh0):
    return (*_fake_layer_grads(x, w_ih, w_hh, has_bias, need_dx), _fake_dh0(h0, need_dh0),
            x.new_empty((x.shape[0],), dtype=torch.float64))


def _gru_reference(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, backend, probe):
    return _reference_layer(reference.gru_layer, x, lengths, reverse, w_ih, w_hh, b_ih,
                            b_hh, h0, lengths, reverse, probe)


def _gru_setup_context(ctx, inputs, output):
    _setup_context(ctx, inputs, output, (0, 2))


def _gru_backward(ctx, dy, dh_n, _dgates):
    differentiable = _needs_differentiable_backward((dy, dh_n))
    inputs, (y, gates) = _saved(ctx, differentiable)
    if differentiable:
        return _reference_backward(_gru_reference, inputs, (dy, dh_n))
    x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, backend, probe = inputs
    dy, dh_n = _zeros_if_none(dy, y), _zeros_if_none(dh_n, h0)
    need_dx, need_dh0 = ctx.needs_input_grad[0], ctx.needs_input_grad[5]
    plain = _plain(dy, x)
    dx, dw_ih, dw_hh, db_ih, db_hh, dh0, norms = (_gru_bwd_impl if plain else gru_layer_bwd)(
        dy, dh_n, x, w_ih, w_hh, h0, y, gates, lengths, reverse,
        _backend_arg(backend, plain), b_ih is not None, need_dx, need_dh0)
    return (dx if need_dx else None, dw_ih, dw_hh,
            *_bias_grads(b_ih is not None, db_ih, db_hh), dh0 if need_dh0 else None, None,
            None, None, _norms_out(probe, norms))


gru_layer.register_autograd(_gru_backward, setup_context=_gru_setup_context)


# ---------------------------------------------------------------- eager twins

def _eager_twin(name, impl, setup_context, backward, non_differentiable):
    """An autograd.Function that runs ``impl`` with the op's setup and backward. Its
    last argument, ``copy_y``, makes it return a copy of y (output 0) and keep y itself
    for backward: the caller may then change the returned y in place (see :func:`rnn`)
    without a separate clone node in the graph."""

    def forward(ctx, *args):
        inputs, copy_y = args[:-1], args[-1]
        out = impl(*inputs)
        ctx.eager = True  # see _setup_context
        setup_context(ctx, inputs, out)
        if non_differentiable:
            ctx.mark_non_differentiable(*[out[i] for i in non_differentiable])
        return (out[0].clone(), *out[1:]) if copy_y else out

    return type(name, (torch.autograd.Function,), {
        "__doc__": f"Eager twin of {impl.__name__[1:-5]} (see the module docstring).",
        "forward": staticmethod(forward),
        "backward": staticmethod(lambda ctx, *grads: (*backward(ctx, *grads), None))})


_EagerRNN = _eager_twin("_EagerRNN", _rnn_impl, _rnn_setup_context, _rnn_backward, ())
_EagerLSTM = _eager_twin("_EagerLSTM", _lstm_impl, _lstm_setup_context, _lstm_backward,
                         (3, 4))
_EagerGRU = _eager_twin("_EagerGRU", _gru_impl, _gru_setup_context, _gru_backward, (2,))


# ---------------------------------------------------------------- entry points

def packed_rows_ok(*tensors):
    """Whether a layer may be given a PackedSequence's data as packed rows: in plain
    eager execution only (the custom ops' shapes under torch.compile / export / tracing
    are those of padded [T, B, *] tensors)."""
    return _plain(*tensors)


def _copied(out, copy_y):
    """A layer op's outputs with y (output 0) copied where the caller may change it in
    place and a graph keeps it (:func:`rnn`'s ``copy_y``; a traced graph keeps the copy
    whatever the grad mode of the trace's check run)."""
    y = out[0]
    if copy_y and (y.requires_grad or torch.jit.is_tracing()):
        return (y.clone(), *out[1:])
    return out


def _check_padded(x):
    if x.dim() != 3:
        raise RuntimeError("rnnfast internal error: packed rows [M, I] reached a layer "
                           "op outside plain eager mode (see ops.packed_rows_ok)")


def rnn(x, w_ih, w_hh, b_ih, b_hh, h0, *, lengths, reverse, activation, negative_slope,
        backend, probe, copy_y=False):
    """One Elman RNN layer direction -> (y [T, B, H], h_n [B, H]).

    ``copy_y``: the caller may change the returned y in place (a module's output): where
    a graph keeps y for backward, the caller gets a copy (made inside the eager twin, or
    after the op under torch.compile / tracing); elsewhere y as it is.

    ``backend`` is a resolved :class:`rnnfast.dispatch.Backend`: the reference loop when
    it has no kernels, else the fused op (which re-resolves ``backend.requested`` from
    its tensors when it runs).

    x may also be a PackedSequence's data [M, I] with its sorted ``lengths`` [B] (y is
    then [M, H], in the same order) in plain eager mode (:func:`packed_rows_ok`): the
    layer runs its GEMMs on those rows and pads only what the recurrence kernel reads."""
    if backend.kernels is None:
        return _reference_layer(reference.rnn_layer, x, lengths, reverse, w_ih, w_hh,
                                b_ih, b_hh, h0, lengths, reverse,
                                _ACTIVATION_NAMES[activation], negative_slope, probe)
    plain = _plain(x, h0, probe)
    args = (x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, activation, negative_slope,
            _backend_arg(backend, plain), probe)
    if not plain:
        _check_padded(x)
        return _copied(rnn_layer(*args), copy_y)
    return _rnn_run(*args, False) if is_inference(args) else _EagerRNN.apply(*args, copy_y)


def lstm(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, *, lengths, reverse, backend, probe,
         copy_y=False):
    """One LSTM layer direction -> (y [T, B, P], h_n [B, P], c_n [B, H]); packed rows
    and ``copy_y`` as :func:`rnn`."""
    if backend.kernels is None:
        return _reference_layer(reference.lstm_layer, x, lengths, reverse, w_ih, w_hh,
                                b_ih, b_hh, w_hr, h0, c0, lengths, reverse, probe)
    plain = _plain(x, h0, c0, probe)
    args = (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse,
            _backend_arg(backend, plain), probe)
    if not plain:
        _check_padded(x)
        y, h_n, c_n, _, _ = _copied(lstm_layer(*args), copy_y)
    elif is_inference(args):
        y, h_n, c_n, _, _ = _lstm_run(*args, False)
    else:
        y, h_n, c_n, _, _ = _EagerLSTM.apply(*args, copy_y)
    return y, h_n, c_n


def gru(x, w_ih, w_hh, b_ih, b_hh, h0, *, lengths, reverse, backend, probe, copy_y=False):
    """One GRU layer direction -> (y [T, B, H], h_n [B, H]); packed rows and ``copy_y``
    as :func:`rnn`."""
    if backend.kernels is None:
        return _reference_layer(reference.gru_layer, x, lengths, reverse, w_ih, w_hh,
                                b_ih, b_hh, h0, lengths, reverse, probe)
    plain = _plain(x, h0, probe)
    args = (x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, _backend_arg(backend, plain),
            probe)
    if not plain:
        _check_padded(x)
        y, h_n, _ = _copied(gru_layer(*args), copy_y)
    elif is_inference(args):
        y, h_n, _ = _gru_run(*args, False)
    else:
        y, h_n, _ = _EagerGRU.apply(*args, copy_y)
    return y, h_n
