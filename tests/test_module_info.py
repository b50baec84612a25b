"""PyTorch's own generic module tests for nn.RNN / nn.LSTM / nn.GRU, run on rnnfast.

``torch.testing._internal.common_modules`` ships a ModuleInfo for each of torch.nn.RNN,
LSTM and GRU: a sample-input generator (constructor arguments, forward arguments, and a
reference function that runs an unbatched input as a batch of one) and an error-input
generator (bad constructor arguments or forward inputs, with torch's exception class
and regex). Here rnnfast's class of the same name takes torch.nn's place: every sample
and every error input goes through checks written after torch's test/test_modules.py:

* forward: equals torch.nn with the same state_dict (float32 and float64), equals the
  sample's reference function, and survives .float() / .double(); repr works;
* gradcheck and gradgradcheck in float64 over inputs, initial state and all weights
  (torch's fast mode; the weights enter as one flat tensor, so fast mode's cost does
  not grow with their number), and gradcheck over the inputs alone with frozen weights;
* error inputs: the same exception class, message matching torch's regex;
* save / load: torch.save of the whole module (weights_only=False, as torch's test
  does) and a state_dict round trip into a fresh module give the same outputs;
* .to(dtype) / .double() / factory kwargs (dtype=, device=) give parameters of that dtype
  and torch.nn's outputs;
* non-contiguous inputs and states give the contiguous run's outputs and gradients;
* train / eval: the mode propagates, outputs equal torch.nn's in both modes, and with
  dropout between layers eval mode equals torch.nn's eval mode.

RNN and GRU samples include the generator's PackedSequence ones (with_packed_sequence,
which torch's own ModuleInfo leaves off). Batched-gradient checks (vmap over backward)
are left to tests/test_dropin.py (is_grads_batched), since here they would multiply the
cost of every gradcheck. The backend is rnnfast's default ('auto': numba on the CPU);
RNNFAST_BACKEND=torch (or triton with TRITON_INTERPRET=1) runs the same cases on
another backend.
"""

import io
import re
from itertools import product

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

import rnnfast

from .tolerances import assert_close

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest "
                                          "(pip install expecttest)")
from torch.testing._internal import common_modules as cm  # noqa: E402
from torch.testing._internal.common_utils import freeze_rng_state  # noqa: E402

NAMES = ("RNN", "LSTM", "GRU")
INFOS = {name: next(i for i in cm.module_db if i.module_cls is getattr(nn, name))
         for name in NAMES}
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


def rnnfast_class(name):
    """The substitute for torch.nn.<name>: rnnfast's class, same arguments."""
    return getattr(rnnfast, name)


def samples(name, dtype=torch.float64, requires_grad=True, training=True):
    """torch's sample inputs for torch.nn.<name>, generated from a fixed seed."""
    info = INFOS[name]
    extra = {} if name == "LSTM" else dict(with_packed_sequence=True)
    with freeze_rng_state():
        torch.manual_seed(0)
        return list(info.module_inputs_func(info, device="cpu", dtype=dtype,
                                            requires_grad=requires_grad, training=training,
                                            **extra))


def error_inputs(name, dtype):
    info = INFOS[name]
    return list(info.module_error_inputs_func(info, device="cpu", dtype=dtype,
                                              requires_grad=False, training=True))


def _is_packed(sample):
    return isinstance(sample.forward_input.args[0], PackedSequence)


def _sample_id(name, i, sample):
    kw = sample.constructor_input.kwargs
    parts = [f"{name}{i:02d}", kw.get("nonlinearity", ""),
             "bias" if kw.get("bias", True) else "nobias",
             "batch_first" if kw.get("batch_first") else "",
             "bidir" if kw.get("bidirectional") else "",
             f"proj{kw['proj_size']}" if kw.get("proj_size") else "", f"H{kw['hidden_size']}"]
    args = sample.forward_input.args
    if _is_packed(sample):
        parts.append(f"packed-B{int(args[0].batch_sizes[0])}")
    else:
        parts.append("unbatched" + ("-hx" if len(args) > 1 else ""))
    return "-".join(p for p in parts if p)


def _sample_params():
    out = []
    for name in NAMES:
        for i, s in enumerate(samples(name)):
            out.append(pytest.param(name, i, id=_sample_id(name, i, s)))
    return out


def _error_params():
    out = []
    for name, dtype in product(NAMES, (torch.float32, torch.float64)):
        for i, e in enumerate(error_inputs(name, dtype)):
            words = re.sub(r"[^a-z0-9]+", "_", e.error_regex[:40].lower()).strip("_")
            out.append(pytest.param(name, dtype, i,
                                    id=f"{name}-{str(dtype)[6:]}-{i:02d}-{words}"))
    return out


SAMPLES = _sample_params()
ERRORS = _error_params()


def build(name, sample, dtype, training=True, **extra):
    """(rnnfast module, torch.nn module) from a sample's constructor input, with the
    same state_dict, in ``dtype``, in train or eval mode."""
    args, kwargs = sample.constructor_input.args, dict(sample.constructor_input.kwargs, **extra)
    with freeze_rng_state():
        torch.manual_seed(1)
        twin = getattr(nn, name)(*args, **kwargs)
    ours = rnnfast_class(name)(*args, **kwargs)
    ours.load_state_dict(twin.state_dict())
    ours.to(dtype).train(training)
    twin.to(dtype).train(training)
    return ours, twin


def forward_args(sample):
    return sample.forward_input.args, sample.forward_input.kwargs


def detached(tree):
    """A copy of the sample's tensors (fresh leaves where the original required grad)."""
    def copy(t):
        if not isinstance(t, torch.Tensor):
            return t
        c = t.detach().clone()
        return c.requires_grad_(t.requires_grad) if c.is_floating_point() else c
    return tree_map(copy, tree)


def assert_trees_close(what, got, want, dtype):
    """Same structure (tuples, PackedSequence) and every tensor close (integer tensors,
    such as a PackedSequence's batch_sizes, equal)."""
    got_leaves, got_spec = tree_flatten(got)
    want_leaves, want_spec = tree_flatten(want)
    assert got_spec == want_spec, f"{what}: structure {got_spec} != torch.nn's {want_spec}"
    for k, (a, b) in enumerate(zip(got_leaves, want_leaves)):
        if not isinstance(b, torch.Tensor):
            assert a == b, f"{what}[{k}]: {a} != {b}"
        elif b.is_floating_point():
            assert a.dtype == b.dtype, f"{what}[{k}]: dtype {a.dtype} != torch.nn's {b.dtype}"
            assert_close(f"{what}[{k}]", a, b, dtype)
        else:
            assert torch.equal(a, b), f"{what}[{k}]: {a} != {b}"


# ============================================================ forward

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,index", SAMPLES)
def test_forward(name, index, dtype):
    sample = samples(name, dtype, requires_grad=False)[index]
    ours, twin = build(name, sample, dtype)
    args, kwargs = forward_args(sample)
    with freeze_rng_state():
        out = ours(*detached(args), **kwargs)
    with freeze_rng_state():
        want = twin(*detached(args), **kwargs)
    assert_trees_close("forward", out, want, dtype)
    if sample.reference_fn is not None and not _is_packed(sample):
        assert_trees_close("reference_fn", out, sample.reference_fn(ours, *detached(args),
                                                                   **kwargs), dtype)
    (ours.float if dtype == torch.float32 else ours.double)()
    ours(*detached(args), **kwargs)
    assert all(p.dtype == dtype for p in ours.parameters())
    assert repr(ours) and str(ours)


# ============================================================ gradients

def _gradcheck_fn(module, sample):
    """(fn, inputs): fn(*input tensors, flat weights) -> flat outputs, for gradcheck.
    The floating tensors of the forward input are the leading arguments; all weights
    enter as one flat vector."""
    args, kwargs = forward_args(sample)
    args = detached(args)
    leaves, spec = tree_flatten(args)
    slots = [k for k, t in enumerate(leaves) if isinstance(t, torch.Tensor)
             and t.is_floating_point()]
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def fn(*tensors):
        new = list(leaves)
        for k, t in zip(slots, tensors[:len(slots)]):
            new[k] = t
        split = tensors[len(slots)].split([s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, split, shapes)}
        out = functional_call(module, params, tuple(tree_unflatten(new, spec)), kwargs)
        return tuple(t for t in tree_flatten(out)[0]
                     if isinstance(t, torch.Tensor) and t.is_floating_point())

    inputs = [leaves[k].detach().clone().requires_grad_(True) for k in slots]
    return fn, inputs, flat


@pytest.mark.parametrize("name,index", SAMPLES)
def test_gradcheck(name, index):
    """float64 gradcheck over the total derivative (inputs and weights), then over the
    inputs alone with the weights frozen (the path that needs no weight gradients)."""
    sample = samples(name)[index]
    ours, _ = build(name, sample, torch.float64)
    fn, inputs, flat = _gradcheck_fn(ours, sample)
    assert torch.autograd.gradcheck(fn, (*inputs, flat.requires_grad_(True)), fast_mode=True)
    assert torch.autograd.gradcheck(lambda *t: fn(*t, flat.detach()), tuple(inputs),
                                    fast_mode=True)


@pytest.mark.parametrize("name,index", SAMPLES)
def test_gradgradcheck(name, index):
    sample = samples(name)[index]
    ours, _ = build(name, sample, torch.float64)
    fn, inputs, flat = _gradcheck_fn(ours, sample)
    assert torch.autograd.gradgradcheck(fn, (*inputs, flat.requires_grad_(True)),
                                        fast_mode=True)


# ============================================================ error inputs

@pytest.mark.parametrize("name,dtype,index", ERRORS)
def test_error_inputs(name, dtype, index):
    """Construction or forward raises torch's exception class with torch's regex."""
    err = error_inputs(name, dtype)[index]
    cls = rnnfast_class(name)
    inp = err.module_error_input
    args, kwargs = inp.constructor_input.args, inp.constructor_input.kwargs
    with pytest.raises(err.error_type, match=err.error_regex):
        if err.error_on == cm.ModuleErrorEnum.CONSTRUCTION_ERROR:
            cls(*args, **kwargs)
        else:
            cls(*args, **kwargs)(*inp.forward_input.args, **inp.forward_input.kwargs)


# ============================================================ save / load

@pytest.mark.parametrize("name,index", SAMPLES)
def test_save_load(name, index):
    dtype = torch.float32
    sample = samples(name, dtype, requires_grad=False)[index]
    ours, _ = build(name, sample, dtype)
    args, kwargs = forward_args(sample)
    with freeze_rng_state():
        out = ours(*detached(args), **kwargs)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    copy = torch.load(buf, weights_only=False)
    assert type(copy) is type(ours)
    with freeze_rng_state():
        assert_trees_close("torch.load(module)", copy(*detached(args), **kwargs), out, dtype)
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    with freeze_rng_state():
        torch.manual_seed(2)
        fresh = rnnfast_class(name)(*sample.constructor_input.args,
                                    **sample.constructor_input.kwargs)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    with freeze_rng_state():
        assert_trees_close("state_dict round trip", fresh(*detached(args), **kwargs), out, dtype)


# ============================================================ dtype moves

@pytest.mark.parametrize("name,index", SAMPLES)
def test_to_dtype(name, index):
    """.double() on a float32 module, .to(float32) back, and dtype= at construction:
    parameters take the dtype and the outputs equal torch.nn's in that dtype."""
    sample = samples(name, torch.float64, requires_grad=False)[index]
    ours, twin = build(name, sample, torch.float32)
    args, kwargs = forward_args(sample)
    ours.double()
    twin.double()
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert_trees_close(".double()", ours(*detached(args), **kwargs),
                       twin(*detached(args), **kwargs), torch.float64)
    ours.to(torch.float32)
    twin.to(torch.float32)
    args32 = tree_map(lambda t: t.float() if isinstance(t, torch.Tensor)
                      and t.is_floating_point() else t, detached(args))
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    assert_trees_close(".to(float32)", ours(*args32, **kwargs), twin(*args32, **kwargs),
                       torch.float32)
    made = rnnfast_class(name)(*sample.constructor_input.args, dtype=torch.float64,
                               device="cpu", **sample.constructor_input.kwargs)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in made.parameters())


# ============================================================ non-contiguous inputs

def _non_contiguous(tree):
    """torch's trick: every tensor of dim > 0 becomes a strided view of a wider copy."""
    def nc(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or not t.is_floating_point():
            return t
        out = torch.repeat_interleave(t.detach(), 2, dim=-1)[..., ::2]
        assert not out.is_contiguous()
        return out.requires_grad_(t.requires_grad)
    if isinstance(tree, PackedSequence):
        return PackedSequence(nc(tree.data), tree.batch_sizes, tree.sorted_indices,
                              tree.unsorted_indices)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_non_contiguous(t) for t in tree)
    return nc(tree)


def _run_with_grads(module, args, kwargs, upstream):
    module.zero_grad(set_to_none=True)
    inputs = [t for t in tree_flatten(args)[0]
              if isinstance(t, torch.Tensor) and t.requires_grad]
    out = module(*args, **kwargs)
    outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)
            and t.is_floating_point()]
    sum((o * u).sum() for o, u in zip(outs, upstream)).backward()
    return outs, [t.grad for t in inputs] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("name,index", SAMPLES)
def test_non_contiguous_inputs(name, index):
    dtype = torch.float64
    sample = samples(name, dtype, requires_grad=True)[index]
    ours, _ = build(name, sample, dtype)
    args, kwargs = forward_args(sample)
    with torch.no_grad():
        probe = [t for t in tree_flatten(ours(*detached(args), **kwargs))[0]
                 if isinstance(t, torch.Tensor) and t.is_floating_point()]
    g = torch.Generator().manual_seed(3)
    upstream = [torch.randn(o.shape, generator=g, dtype=dtype) for o in probe]
    out_c, grads_c = _run_with_grads(ours, detached(args), kwargs, upstream)
    nc_args = _non_contiguous(detached(args))
    out_n, grads_n = _run_with_grads(ours, nc_args, kwargs, upstream)
    for k, (a, b) in enumerate(zip(out_n, out_c)):
        assert_close(f"non-contiguous output[{k}]", a, b, dtype)
    for k, (a, b) in enumerate(zip(grads_n, grads_c)):
        assert (a is None) == (b is None), f"grad[{k}] is None in one run only"
        if b is not None:
            assert_close(f"non-contiguous grad[{k}]", a, b, dtype)


# ============================================================ train / eval

@pytest.mark.parametrize("name,index", SAMPLES)
def test_train_eval(name, index):
    """train()/eval() set ``training``; outputs equal torch.nn's in both modes; with
    dropout between layers (p=0.5), eval mode equals torch.nn's eval mode."""
    dtype = torch.float64
    sample = samples(name, dtype, requires_grad=False)[index]
    args, kwargs = forward_args(sample)
    for training in (True, False):
        ours, twin = build(name, sample, dtype, training=training)
        assert ours.training is training
        assert_trees_close(f"training={training}", ours(*detached(args), **kwargs),
                           twin(*detached(args), **kwargs), dtype)
    ours, twin = build(name, sample, dtype, training=False, dropout=0.5)
    assert_trees_close("eval with dropout", ours(*detached(args), **kwargs),
                       twin(*detached(args), **kwargs), dtype)
    ours.train()
    assert ours.training
