"""Gradient norm vs lag, read from rnnfast's BPTT telemetry.

The kernels hand out ||dL/dh_t|| for every step when ``record_grad_norms`` is on
(``last_grad_norms`` after the backward). The lag-k ratio is
||dL/dh_{T-1-k}|| / ||dL/dh_{T-1}||: how much of the loss's gradient at the last state
reaches k steps back. Lag T is the initial state h_0 (its autograd gradient).
"""

import copy

import numpy as np
import torch


def stored_lags(T, n_log=40):
    """The lags a profile keeps: 0..10, ~n_log log-spaced lags up to T, T/2 and T."""
    lags = set(range(min(T, 10) + 1)) | {T // 2, T}
    lags |= {int(v) for v in np.geomspace(10, max(T, 10), n_log)} if T > 10 else set()
    return sorted(k for k in lags if 0 <= k <= T)


def grad_profile(model, task, x, y):
    """Gradient norm vs lag of ``task``'s loss for ``model`` on (x [T, B, I], y), in
    float64 on a CPU copy of the model (the model's own ``.grad`` is untouched; on the
    CPU so that the profile never depends on a GPU backend's float64 support).

    Returns {'lags': [k...], 'ratio': [||dL/dh at lag k|| / ||dL/dh_{T-1}||...]} at
    :func:`stored_lags`. For a task read out at every step (copy) the last state also
    receives the loss of the last output only through the readout; ratios are still
    relative to it."""
    m = copy.deepcopy(model).double().cpu()
    x, y = x.double().cpu(), (y.double() if y.is_floating_point() else y).cpu()
    T, B = x.shape[:2]
    h0 = torch.zeros(1, B, m.rnn.hidden_size, dtype=torch.float64, requires_grad=True)
    m.rnn.record_grad_norms = True
    with torch.enable_grad():
        task.loss(m(x, m.initial_state(h0)), y).backward()
    norms = m.rnn.last_grad_norms[0].double()  # positions 0..T-1
    by_lag = torch.cat([norms.flip(0), h0.grad.norm().reshape(1)])
    ref = float(by_lag[0])
    lags = stored_lags(T)
    ratio = [float(by_lag[k]) / ref if ref > 0 else float("nan") for k in lags]
    return {"lags": lags, "ratio": ratio}


def ratio_at(profile, lag):
    """The stored ratio at ``lag`` (an int, or "T" for the initial state, or "T/2");
    None when that lag was not stored."""
    lags = profile["lags"]
    T = lags[-1]
    k = T if lag == "T" else T // 2 if lag == "T/2" else lag
    try:
        return profile["ratio"][lags.index(k)]
    except ValueError:
        return None


def training_ratios(norms, lags):
    """Lag ratios from one training step's float32 telemetry ``norms`` [T] (positions).
    Returns {str(k): ratio} for k < T."""
    n = np.asarray(norms, dtype=np.float64)
    T = n.shape[0]
    ref = n[-1]
    return {str(k): float(n[T - 1 - k] / ref) if ref > 0 else float("nan")
            for k in lags if 0 <= k < T}
