"""Gradient telemetry: the per-step norms ||dL/dh_t|| that BPTT computes anyway.

Every backend's backward hands them out through a "probe" input of each layer op whose
gradient *is* the norm vector (see :mod:`rnnfast.ops`); no per-step autograd, no Python
loop over time.
"""

import torch
from torch.nn.utils.rnn import PackedSequence


def hidden_grad_norms(module, input, grad_output, hx=None):
    """Run ``module`` forward and backward once and return ||dL/dh_t||.

    Parameters
    ----------
    module : rnnfast.RNN, rnnfast.LSTM or rnnfast.GRU
    input : Tensor or PackedSequence, as for ``module(input, hx)``
    grad_output : Tensor shaped like the module's output (its ``.data`` when packed):
        the upstream gradient dL/d output
    hx : optional initial state, as for the module

    Returns
    -------
    float64 Tensor [num_layers * num_directions, T]: row ``layer * num_directions +
    direction``, column t = position in the input sequence (also for the reverse
    direction), entry = 2-norm over batch and hidden units of the total gradient
    reaching h_t (from the output at t, from the next processed step and, at each
    sequence's own last step, from h_n; a packed sequence's rows past its length add
    nothing). T: the steps that have rows (a PackedSequence's batch_sizes without
    trailing zeros).
    Parameter ``.grad`` fields and the module's ``last_grad_norms`` are left untouched.

    Runs with grad enabled whatever the caller's mode: under ``torch.no_grad()`` and
    ``torch.inference_mode()`` too (for an input made there, an inference tensor,
    torch's own error: it cannot be saved for backward; clone it outside first).

    Raises TypeError for a module that is not rnnfast's (torch.nn's modules have no
    per-step norms), and what ``module(input, hx)`` raises for a bad input.
    """
    from .modules import _require_rnnfast_module
    _require_rnnfast_module(module, "hidden_grad_norms")
    previous = module.record_grad_norms
    kept = module._grad_norm_probes  # the module's last_grad_norms, restored below
    module.record_grad_norms = True
    module._grad_norm_probes = None  # this call's probes become the module's
    try:
        with torch.inference_mode(False), torch.enable_grad():
            out, _ = module(input, hx)
            probes = module._grad_norm_probes
            y = out.data if isinstance(out, PackedSequence) else out
            grads = torch.autograd.grad(y, probes, grad_output, allow_unused=True)
    finally:
        module.record_grad_norms = previous
        object.__setattr__(module, "_grad_norm_probes", kept)
    return torch.stack([g if g is not None else torch.zeros_like(p)
                        for g, p in zip(grads, probes)])
