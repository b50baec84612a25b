"""Argument checks for every backend's launchers, in one place (one message style).

A launcher calls :func:`check_recurrence_args` (forward) or :func:`check_backward_args`
(BPTT) before it allocates anything; both raise ``ValueError`` naming the launcher, the
argument, the expected and the actual value."""

import weakref

import numpy as np
import torch

from . import ACTIVATIONS, LEAKY_RELU


def full_lengths(lengths, T, B, device):
    """``lengths`` as int64 on ``device``, or all-T when None."""
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int64, device=device)
    return lengths.to(device=device, dtype=torch.int64)


def _expect(cond, msg):
    """Raise ValueError(msg()) when ``cond`` is false. ``msg`` is a callable, so the
    message is formatted only on failure (these checks run on every launch: formatting
    eagerly cost ~60 us per launch on a 2 GHz Xeon)."""
    if not cond:
        raise ValueError(msg())


def _input_dims(where, name, k, x, lengths, offsets):
    """(T, B, K) of a forward launcher's input ``x`` (called ``name``; ``k`` names its
    last dimension): padded [T, B, K], or with ``offsets`` a PackedSequence's rows
    [M, K] with its sorted ``lengths`` (required; checked by :func:`check_packed_rows`)."""
    if offsets is None:
        _expect(x.dim() == 3, lambda: f"{where}: {name} must be 3-D [T, B, {k}], got shape "
                                      f"{tuple(x.shape)}")
        return tuple(x.shape)
    _expect(x.dim() == 2, lambda: f"{where}: packed {name} must be 2-D [M, {k}], got shape "
                                  f"{tuple(x.shape)}")
    _expect(lengths is not None, lambda: f"{where}: packed rows need lengths")
    check_packed_rows(where, x.shape[0], lengths, offsets)
    return offsets.shape[0], lengths.shape[0], x.shape[1]


def check_recurrence_args(cell, xp, w_hh, h0, c0, w_hr, lengths, activation,
                          negative_slope, dtypes, backend, b_hn=None, offsets=None):
    """Validate a forward launcher's arguments; returns (T, B, G).

    cell: 'rnn' (G = H), 'lstm' (G = 4H; c0, optional w_hr) or 'gru' (G = 3H; b_hn [H]
    or None); arguments a cell does not take are ignored. With ``offsets`` (int64 [T]:
    the rows before each step) xp is a PackedSequence's rows [M, G], lengths [B] its
    sorted lengths (required): see :func:`check_packed_rows`."""
    where = f"{cell}_fwd[{backend}]"
    T, B, G = _input_dims(where, "xp", "G", xp, lengths, offsets)
    _expect(xp.dtype in dtypes,
            lambda: f"{where}: xp dtype must be one of {dtypes}, got {xp.dtype}")
    _check_state(where, cell, T, B, G, xp.dtype, xp.device, w_hh, h0, c0, w_hr, lengths,
                 activation, negative_slope, b_hn, in_range=offsets is not None)
    return T, B, G


def check_layer_args(cell, x, w_ih, b_ih, b_hh, w_hh, h0, c0, w_hr, lengths, activation,
                     negative_slope, dtypes, backend, offsets=None):
    """Validate a layer-forward launcher's arguments (the input projection and the
    recurrence in one call: x [T, B, I], w_ih [G, I], b_ih and b_hh [G] or both None,
    then as :func:`check_recurrence_args` with G = w_ih.size(0)); returns (T, B, I, G).
    With ``offsets`` x is a PackedSequence's rows [M, I] (see
    :func:`check_recurrence_args`)."""
    where = f"{cell}_layer_fwd[{backend}]"
    T, B, I = _input_dims(where, "x", "I", x, lengths, offsets)
    _expect(x.dtype in dtypes,
            lambda: f"{where}: x dtype must be one of {dtypes}, got {x.dtype}")
    _expect(w_ih.dim() == 2, lambda: f"{where}: w_ih must be 2-D [G, I], got shape "
                                     f"{tuple(w_ih.shape)}")
    G = w_ih.shape[0]
    _expect((b_ih is None) == (b_hh is None),
            lambda: f"{where}: b_ih and b_hh must both be given or both be None")
    named = [("w_ih", w_ih, (G, I))]
    if b_ih is not None:
        named += [("b_ih", b_ih, (G,)), ("b_hh", b_hh, (G,))]
    _check_named(where, named, x.dtype, x.device)
    _check_state(where, cell, T, B, G, x.dtype, x.device, w_hh, h0, c0, w_hr, lengths,
                 activation, negative_slope, None, "w_ih.size(0)",
                 in_range=offsets is not None)
    return T, B, I, G


def _check_named(where, named, dtype, device):
    """Each (name, tensor, shape) of ``named`` has that shape, ``dtype`` and ``device``."""
    for name, t, shape in named:
        if t.shape != shape or t.dtype != dtype or t.device != device:
            _expect(t.shape == shape,
                    lambda: f"{where}: {name} must have shape {shape}, got {tuple(t.shape)}")
            _expect(t.dtype == dtype,
                    lambda: f"{where}: {name} dtype must be {dtype}, got {t.dtype}")
            _expect(False, lambda: f"{where}: {name} must be on {device}, got {t.device}")


def _check_state(where, cell, T, B, G, dtype, device, w_hh, h0, c0, w_hr, lengths,
                 activation, negative_slope, b_hn, g_name="xp.size(2)", in_range=False):
    """The recurrence's own arguments against (T, B, G) and the input's dtype / device
    (``g_name``: where G comes from, for the messages; ``in_range``: lengths are known to
    lie in [1, T], as :func:`check_packed_rows` found them)."""
    if cell == "lstm":
        _expect(G % 4 == 0, lambda: f"{where}: {g_name} must be 4*hidden_size, got {G}")
        H = G // 4
        P = w_hr.shape[0] if w_hr is not None else H
    elif cell == "gru":
        _expect(G % 3 == 0, lambda: f"{where}: {g_name} must be 3*hidden_size, got {G}")
        H = P = G // 3
    else:
        H = P = G
        _expect(activation in ACTIVATIONS.values(),
                lambda: f"{where}: activation must be one of "
                        f"{sorted(ACTIVATIONS.values())}, got {activation}")
        if activation == LEAKY_RELU:
            _expect(negative_slope >= 0,
                    lambda: f"{where}: negative_slope must be >= 0, got {negative_slope}")
    named = [("w_hh", w_hh, (G, P)), ("h0", h0, (B, P))]
    if cell == "lstm":
        named.append(("c0", c0, (B, H)))
        if w_hr is not None:
            named.append(("w_hr", w_hr, (P, H)))
    if cell == "gru" and b_hn is not None:
        named.append(("b_hn", b_hn, (H,)))
    _check_named(where, named, dtype, device)
    if lengths is not None:
        _expect(lengths.shape == (B,),
                lambda: f"{where}: lengths must have shape ({B},), got {tuple(lengths.shape)}")
        _expect(not lengths.is_floating_point(),
                lambda: f"{where}: lengths must be an integer tensor, got {lengths.dtype}")
        if B > 0 and not in_range:
            lo, hi = int(lengths.min()), int(lengths.max())
            _expect(lo >= 1 and hi <= T,
                    lambda: f"{where}: lengths must lie in [1, {T}], got min {lo}, max {hi}")


def packed_offsets(L, T):
    """(batch sizes [T], offsets [T]) of sorted lengths L (int64 numpy [B], each in
    [1, T]): bs[t] = #rows with L > t, offsets the exclusive running sum of bs (the
    packed rows before step t)."""
    bs = L.shape[0] - np.cumsum(np.bincount(L, minlength=T + 1))[:T]
    return bs, np.cumsum(bs) - bs


def check_packed_rows(where, M, lengths, offsets):
    """Packed rows: lengths [B] non-increasing in [1, T] summing to M, and offsets [T]
    the exclusive running sum of the batch sizes (rows active at each step). A wrong
    offset would send a kernel's loads and stores outside its arrays, so this runs on
    every packed launch, except where these very tensors, unmodified since (their
    ``_version``), passed it before (a layer's backward after its forward): ~50 us in
    numpy on a 2-core EPYC, ~2 us when remembered."""
    # Inference tensors (made under torch.inference_mode) have no version counter:
    # nothing is remembered for them, and they are checked on every launch.
    remember = not (lengths.is_inference() or offsets.is_inference())
    seen = offsets.__dict__.get("_rnnfast_rows_ok") if remember else None
    if seen is not None and seen[0]() is lengths and seen[1:] == (
            lengths._version, offsets._version, M):
        return
    T = offsets.shape[0]
    _expect(offsets.dim() == 1 and not offsets.is_floating_point(),
            lambda: f"{where}: offsets must be a 1-D integer tensor, got "
                    f"{offsets.dtype} of shape {tuple(offsets.shape)}")
    L = lengths.detach().to("cpu", torch.int64).numpy()
    _expect(L.ndim == 1 and L.shape[0] > 0 and bool((L[1:] <= L[:-1]).all())
            and int(L[0]) == T and int(L[-1]) >= 1,
            lambda: f"{where}: packed rows need lengths sorted non-increasing in [1, {T}] "
                    f"with lengths[0] = {T}, got {L.tolist()}")
    bs, want = packed_offsets(L, T)
    got = offsets.detach().to("cpu", torch.int64).numpy()
    _expect(int(bs.sum()) == M and np.array_equal(got, want),
            lambda: f"{where}: packed rows: {M} rows and offsets {got.tolist()} do not "
                    f"match lengths {L.tolist()} ({int(bs.sum())} rows, offsets "
                    f"{want.tolist()})")
    if remember:
        offsets.__dict__["_rnnfast_rows_ok"] = (weakref.ref(lengths), lengths._version,
                                                offsets._version, M)


def backward_dims(where, y, dh_n, lengths, offsets):
    """(T, B, lead) for a BPTT launcher: y padded [T, B, P] (lead = (T, B)) or, with
    ``offsets``, packed rows [M, P] (lead = (M,); checked as check_packed_rows)."""
    if offsets is None:
        _expect(y.dim() == 3, lambda: f"{where}: y must be 3-D [T, B, P], got shape "
                                      f"{tuple(y.shape)}")
        return y.shape[0], y.shape[1], tuple(y.shape[:2])
    _expect(y.dim() == 2 and lengths is not None,
            lambda: f"{where}: packed rows need y [M, P] and lengths, got y of shape "
                    f"{tuple(y.shape)}")
    check_packed_rows(where, y.shape[0], lengths, offsets)
    return offsets.shape[0], lengths.shape[0], (y.shape[0],)


def check_backward_args(where, like, named):
    """BPTT launcher arguments: each (name, tensor, shape) in ``named`` must have that
    shape and ``like``'s dtype and device (``like``: a tensor saved by the forward)."""
    dtype, device = like.dtype, like.device
    for name, t, shape in named:
        if t.shape != tuple(shape) or t.dtype != dtype or t.device != device:
            _expect(t.shape == tuple(shape) and t.dtype == dtype,
                    lambda: f"{where}: {name} must be {dtype} of shape {tuple(shape)}, "
                            f"got {t.dtype} of shape {tuple(t.shape)}")
            _expect(False, lambda: f"{where}: {name} must be on {device}, got {t.device}")
