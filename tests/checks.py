"""One routine that runs an rnnfast module and its twin on the same problem and compares
every output and every gradient (input, h0, c0, each weight and bias)."""

import torch
from torch.nn.utils.rnn import PackedSequence

from .tolerances import assert_close


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _flat_outputs(out):
    y, state = out
    y = y.data if isinstance(y, PackedSequence) else y
    states = list(state) if isinstance(state, tuple) else [state]
    return [y] + states


def run_with_grads(module, x, hx, upstream, packer=None):
    """Forward + backward with fixed upstream grads; returns (outputs, grads dict)."""
    module.zero_grad(set_to_none=True)
    xl = _leaf(x)
    hl = None if hx is None else (tuple(_leaf(h) for h in hx) if isinstance(hx, tuple)
                                  else _leaf(hx))
    inp = packer(xl) if packer is not None else xl
    outs = _flat_outputs(module(inp, hl))
    loss = sum((o * g).sum() for o, g in zip(outs, upstream))
    loss.backward()
    grads = {"input": xl.grad}
    if hl is not None:
        for i, h in enumerate(hl if isinstance(hl, tuple) else (hl,)):
            grads[f"hx[{i}]"] = h.grad
    for name, p in module.named_parameters():
        grads[name] = p.grad
    return outs, grads


def compare_modules(ours, twin, x, hx=None, kind="kernel", packer=None, seed=1):
    """Assert ours == twin on outputs and all gradients; upstream gradients are random
    on the output and on every final state."""
    with torch.no_grad():
        probe = _flat_outputs(twin(packer(x) if packer else x, hx))
    g = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in probe]
    out_a, grads_a = run_with_grads(ours, x, hx, upstream, packer)
    out_b, grads_b = run_with_grads(twin, x, hx, upstream, packer)
    dtype = x.dtype
    for name, a, b in zip(["output", "h_n", "c_n"], out_a, out_b):
        assert_close(name, a, b, dtype, kind)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        assert grads_a[name] is not None, f"no gradient for {name}"
        assert_close(f"grad {name}", grads_a[name], grads_b[name], dtype, kind)
    return out_a, grads_a
