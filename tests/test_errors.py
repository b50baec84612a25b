"""Bad input fails before any kernel runs, with a message naming the argument, the
expected and the actual value; a failed call leaves the module usable."""

import os
import re

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
from rnnfast.dispatch import kernel_module

from .tolerances import assert_close


def _rnn():
    return rnnfast.RNN(5, 7, backend="numba")


def _lstm(**kw):
    return rnnfast.LSTM(5, 7, backend="numba", **kw)


def _gru():
    return rnnfast.GRU(5, 7, backend="numba")


X = torch.randn(4, 3, 5)

# torch.nn's own messages where torch.nn makes the same check (its regexes match them).
BAD_CALLS = [
    ("rank", _rnn, lambda: (torch.randn(4, 3, 5, 1), None),
     r"^RNN: Expected input to be 2D or 3D, got 4D tensor instead$"),
    ("feature", _rnn, lambda: (torch.randn(4, 3, 6), None),
     r"^input.size\(-1\) must be equal to input_size. Expected 5, got 6$"),
    ("hx-shape", _rnn, lambda: (X, torch.randn(1, 2, 7)),
     r"^Expected hidden size \(1, 3, 7\), got \[1, 2, 7\]$"),
    ("gru-hx-shape", _gru, lambda: (X, torch.randn(1, 2, 7)),
     r"^Expected hidden size \(1, 3, 7\), got \[1, 2, 7\]$"),
    ("hx-rank", _rnn, lambda: (X, torch.randn(3, 7)),
     r"^For batched 3-D input, hx should also be 3-D but got 2-D tensor$"),
    ("hx-rank-unbatched", _rnn, lambda: (torch.randn(4, 5), torch.randn(1, 1, 7)),
     r"^For unbatched 2-D input, hx should also be 2-D but got 3-D tensor$"),
    ("input-dtype", _rnn, lambda: (X.double(), None),
     r"^RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\). "
     r"Convert input: input.to\(torch.float32\), or convert model: model.to\(torch.float64\)$"),
    ("hx-dtype", _rnn, lambda: (X, torch.randn(1, 3, 7, dtype=torch.float64)),
     r"^RNN hidden dtype \(torch.float64\) does not match input dtype \(torch.float32\) "
     r"for hx$"),
    ("hx-device", _rnn, lambda: (X, torch.randn(1, 3, 7, device="meta")),
     r"^Input and hidden tensors are not at the same device, found input tensor at cpu and "
     r"hidden tensor at meta$"),
    ("input-device", _rnn, lambda: (X.to("meta"), None),
     r"^Input and parameter tensors are not at the same device, found input tensor at meta "
     r"and parameter tensor at cpu$"),
    ("lstm-hx-3d-tensor", _lstm, lambda: (X, torch.randn(2, 3, 7)),
     r"^For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 2-D\) tensors$"),
    ("lstm-hx-type", _lstm, lambda: (X, 7), r"^LSTM: hx must be a tuple \(h_0, c_0\), got int$"),
    ("lstm-hx-three", _lstm, lambda: (X, (torch.zeros(1, 3, 7),) * 3),
     r"^lstm expects two hidden states$"),
    ("lstm-hx-one", _lstm, lambda: (X, (torch.zeros(1, 3, 7),)),
     r"^LSTM: hx must be a tuple \(h_0, c_0\), got a tuple of 1 tensor$"),
    ("lstm-hx-rank", _lstm, lambda: (X, (torch.zeros(3, 7), torch.zeros(1, 3, 7))),
     r"^For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 3-D\) tensors$"),
    ("lstm-c0-shape", _lstm, lambda: (X, (torch.zeros(1, 3, 7), torch.zeros(1, 3, 6))),
     r"^Expected hidden\[1\] size \(1, 3, 7\), got \[1, 3, 6\]$"),
    ("lstm-proj-h0", lambda: _lstm(proj_size=3),
     lambda: (X, (torch.zeros(1, 3, 7), torch.zeros(1, 3, 7))),
     r"^Expected hidden\[0\] size \(1, 3, 3\), got \[1, 3, 7\]$"),
    # A PackedSequence gets no dimension check in torch.nn: an hx that is not 3-D fails
    # its size check (the RNN / GRU), or aten::lstm with an IndexError (the LSTM: there
    # rnnfast's message is that of torch.nn's size check on padded input).
    ("packed-hx-rank", _rnn, lambda: (pack_padded_sequence(X, [4, 3, 2]), torch.randn(3, 7)),
     r"^Expected hidden size \(1, 3, 7\), got \[3, 7\]$"),
    ("packed-gru-hx-rank", _gru,
     lambda: (pack_padded_sequence(X, [4, 3, 2]), torch.randn(3, 7)),
     r"^Expected hidden size \(1, 3, 7\), got \[3, 7\]$"),
    ("packed-lstm-hx-rank", _lstm,
     lambda: (pack_padded_sequence(X, [4, 3, 2]), (torch.zeros(3, 7), torch.zeros(3, 7))),
     r"^Expected hidden\[0\] size \(1, 3, 7\), got \[3, 7\]$"),
    ("empty-time", _rnn, lambda: (torch.randn(0, 3, 5), None),
     r"^Expected sequence length to be larger than 0 in RNN$"),
]


@pytest.mark.parametrize("make,args,pattern", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_message_and_module_still_usable(make, args, pattern):
    m = make()
    x, hx = args()
    with pytest.raises((ValueError, RuntimeError), match=pattern):
        m(x, hx)
    y, _ = m(X)  # the module still works after a failed call
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("make,args,pattern", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_explain_raises_what_the_call_raises(make, args, pattern):
    """rnnfast.explain(module, input, hx) answers only for a call that would run."""
    x, hx = args()
    with pytest.raises((ValueError, RuntimeError), match=pattern):
        rnnfast.explain(make(), x, hx)


def test_errors_are_both_value_and_runtime_errors():
    with pytest.raises(ValueError):
        _rnn()(torch.randn(4, 3, 6))
    with pytest.raises(RuntimeError):
        _rnn()(torch.randn(4, 3, 6))


def _assert_lstm_outputs(what, got, want):
    """An LSTM's (output, (h_n, c_n)) against torch.nn's (a PackedSequence's data)."""
    (y, (h_n, c_n)), (y_t, (h_t, c_t)) = got, want
    for name, a, b in (("output", y, y_t), ("h_n", h_n, h_t), ("c_n", c_n, c_t)):
        a, b = (a.data, b.data) if isinstance(a, PackedSequence) else (a, b)
        assert_close(f"{what} {name}", a, b, torch.float32)


def test_lstm_hx_as_one_stacked_tensor_as_torch_nn():
    """torch.nn.LSTM only indexes an hx's [0] and [1], so torch.stack([h_0, c_0]) works
    where its forward makes a tuple of them (unbatched input; a PackedSequence it
    reorders) and raises aten::lstm's TypeError elsewhere: rnnfast does the same."""
    ref = torch.nn.LSTM(5, 7)
    ours = rnnfast.LSTM(5, 7, backend="numba")
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    hx = torch.randn(2, 1, 3, 7, generator=g)
    lengths = torch.tensor([2, 4, 3])
    cases = [(X, hx), (X[:, 0], hx[:, :, 0]),
             (pack_padded_sequence(X, lengths.sort(descending=True).values), hx),
             (pack_padded_sequence(X, lengths, enforce_sorted=False), hx)]
    raised = 0
    for i, (x, h) in enumerate(cases):
        try:
            want = ref(x, h)
        except TypeError:
            raised += 1
            with pytest.raises(TypeError, match=r"^lstm\(\) received an invalid combination "
                                                r"of arguments - got hx as one Tensor"):
                ours(x, h)
            with pytest.raises(TypeError, match="got hx as one Tensor"):
                rnnfast.explain(ours, x, h)
            continue
        _assert_lstm_outputs(f"case {i}", ours(x, h), want)
    assert raised == 2  # the padded batch and the sorted PackedSequence
    with pytest.raises(IndexError):  # torch.nn's too: it reads hx[1] of a [1, B, H] hx
        ours(X, torch.zeros(1, 3, 7))


def test_lstm_hx_of_three_tensors_as_torch_nn():
    """torch.nn checks the first two tensors of an LSTM's hx, and aten::lstm rejects a
    third, except where torch.nn's forward has already kept only the first two
    (unbatched input; a PackedSequence it reorders): rnnfast raises where torch.nn does
    and otherwise returns its outputs."""
    ref = torch.nn.LSTM(5, 7)
    ours = rnnfast.LSTM(5, 7, backend="numba")
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    h, c = torch.randn(1, 3, 7, generator=g), torch.randn(1, 3, 7, generator=g)
    lengths = torch.tensor([2, 4, 3])
    cases = [(X, (h, c, h)), (X[:, 0], (h[:, 0], c[:, 0], h[:, 0])),
             (pack_padded_sequence(X, lengths.sort(descending=True).values), (h, c, h)),
             (pack_padded_sequence(X, lengths, enforce_sorted=False), (h, c, h))]
    for i, (x, hx) in enumerate(cases):
        try:
            want = ref(x, hx)
        except RuntimeError as e:
            with pytest.raises(RuntimeError, match=f"^{re.escape(str(e))}$"):
                ours(x, hx)
            continue
        _assert_lstm_outputs(f"case {i}", ours(x, hx), want)


def test_dtype_the_backend_cannot_run():
    m = rnnfast.RNN(5, 7, backend="numba").to(torch.complex64)
    with pytest.raises(ValueError, match=r"backend 'numba' supports dtypes .*got torch.complex64"):
        m(X.to(torch.complex64))


def test_backend_device_and_name():
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'cuda'"):
        rnnfast.RNN(5, 7, backend="cuda")
    with pytest.raises(ValueError, match=r"backend 'numba' runs on CPU tensors, got device meta"):
        rnnfast.RNN(5, 7, backend="numba").to("meta")(X.to("meta"))


def test_constructor_arguments():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        rnnfast.RNN(5, 7, nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"negative_slope must be >= 0, got -0.5"):
        rnnfast.RNN(5, 7, nonlinearity="leaky_relu", negative_slope=-0.5)
    with pytest.raises(ValueError, match="proj_size"):
        rnnfast.RNN(5, 7, proj_size=2)
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        rnnfast.LSTM(5, 7, proj_size=7)
    with pytest.raises(ValueError, match="dropout"):
        rnnfast.LSTM(5, 7, dropout=1.5)


@pytest.mark.parametrize("lengths,pattern", [
    (torch.tensor([4, 0, 2]), r"lengths must lie in \[1, 4\], got min 0, max 4"),
    (torch.tensor([5, 1, 2]), r"lengths must lie in \[1, 4\], got min 1, max 5"),
    (torch.tensor([4, 1]), r"lengths must have shape \(3,\), got \(2,\)"),
    (torch.tensor([4.0, 1.0, 2.0]), r"lengths must be an integer tensor, got torch.float32"),
])
def test_kernel_launcher_rejects_bad_lengths(lengths, pattern):
    k = kernel_module("numba")
    with pytest.raises(ValueError, match=pattern):
        k.rnn_fwd(torch.randn(4, 3, 7), torch.randn(7, 7), torch.zeros(3, 7), lengths)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("grad", [True, False])
def test_negative_slope_set_after_construction(backend, grad):
    """``m.negative_slope = -0.5`` after construction (leaky-ReLU): the constructor's
    ValueError at the call, before any kernel runs, in training and in inference (the
    eager path's launchers do not check it again: their derivative needs slope >= 0)."""
    m = rnnfast.RNN(5, 7, nonlinearity="leaky_relu", backend=backend)
    m.negative_slope = -0.5
    x = torch.randn(4, 2, 5)
    with torch.set_grad_enabled(grad), \
            pytest.raises(ValueError, match=r"negative_slope must be >= 0, got -0.5"):
        m(x)
    for bad in ("0.1", None, torch.tensor([0.1, 0.2])):
        m.negative_slope = bad
        with torch.set_grad_enabled(grad), \
                pytest.raises(TypeError, match="negative_slope should be of type float"):
            m(x)
    m.negative_slope = 0.0  # the boundary runs
    with torch.set_grad_enabled(grad):
        m(x)
    relu = rnnfast.RNN(5, 7, nonlinearity="relu", backend=backend)
    relu.negative_slope = -0.5  # read by leaky-ReLU only
    relu(x)


def test_kernel_launcher_rejects_bad_shapes():
    k = kernel_module("numba")
    with pytest.raises(ValueError, match=r"w_hh must have shape \(7, 7\), got \(7, 6\)"):
        k.rnn_fwd(torch.randn(4, 3, 7), torch.randn(7, 6), torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"c0 dtype must be torch.float32, got torch.float64"):
        k.lstm_fwd(torch.randn(4, 3, 28), torch.randn(28, 7), None, torch.zeros(3, 7),
                   torch.zeros(3, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"negative_slope must be >= 0"):
        k.rnn_fwd(torch.randn(4, 3, 7), torch.randn(7, 7), torch.zeros(3, 7), None, False, 2, -1.0)


def _raised(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the test compares whatever is raised
        return e
    raise AssertionError("no error raised")


def test_packed_lstm_data_errors_are_aten_lstm_ones():
    """torch.nn's LSTM checks no PackedSequence's data (its RNN and GRU do): a data of
    the wrong width or dtype fails in aten::lstm's first product, with the matmul's
    message. rnnfast raises that message word for word, before any kernel runs."""
    ref = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True)
    ours = rnnfast.LSTM(5, 7, num_layers=2, bidirectional=True, backend="numba")
    ours.load_state_dict(ref.state_dict())
    cases = [pack_padded_sequence(torch.randn(4, 3, 6), [4, 3, 2]),
             pack_padded_sequence(torch.randn(4, 3, 2), [4, 2, 2]),
             pack_padded_sequence(X.double(), [4, 3, 2]),
             pack_padded_sequence(torch.randn(4, 3, 6).double(), [4, 3, 2]),
             pack_padded_sequence(X.half(), [4, 3, 2])]
    for x in cases:
        want, got = _raised(lambda: ref(x)), _raised(lambda: ours(x))
        assert isinstance(got, RuntimeError) and str(got) == str(want), (want, got)
    assert str(got) == "mat1 and mat2 must have the same dtype, but got Half and Float"
    with pytest.raises(RuntimeError, match=r"^mat1 and mat2 shapes cannot be multiplied "
                                           r"\(9x6 and 5x28\)$"):
        ours(pack_padded_sequence(torch.randn(4, 3, 6), [4, 3, 2]))


@pytest.mark.parametrize("change", [("hidden_size", 7.0), ("proj_size", -1),
                                    ("proj_size", 0.0), ("hidden_size", np.int64(7))])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_size_option_set_after_construction_as_torch_nn(kind, change):
    """An option set after construction to a value torch.nn takes for the same weights
    (proj_size=-1: no projection, as proj_size=0; a numpy int) runs as torch.nn does,
    and one it refuses (hidden_size=7.0: the TypeError of its zero state's torch.zeros)
    raises its error. rnnfast raised for proj_size=-1 (it named a W_hr) and ran
    hidden_size=7.0 (its cached zero state took 7.0 for 7)."""
    x = torch.randn(4, 3, 5)
    results = []
    for lib in (torch.nn, rnnfast):
        torch.manual_seed(0)
        m = getattr(lib, kind)(5, 7)
        setattr(m, *change)
        try:
            results.append(m(x)[0])
        except Exception as e:  # noqa: BLE001 - compared with torch.nn's below
            results.append(e)
    want, got = results
    if isinstance(want, Exception):
        assert type(got) is type(want) and str(got) == str(want), (want, got)
    else:
        assert_close(f"{kind} output", got, want)


@pytest.mark.parametrize("hx", [False, True])
@pytest.mark.parametrize("sizes_dtype", [torch.float32, torch.float64, torch.int32])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_packed_batch_sizes_of_another_dtype_as_torch_nn(kind, sizes_dtype, hx):
    """A PackedSequence whose batch_sizes are not int64: torch.nn raises aten's
    RuntimeError ("expected scalar type Long but found Int"), or, for floating-point
    ones without hx, the TypeError of its zero state's torch.zeros; rnnfast raises the
    same class and message (it raised its RuntimeError for the floating ones too)."""
    x = PackedSequence(torch.randn(6, 5), torch.tensor([2, 2, 1, 1]).to(sizes_dtype))
    state = torch.zeros(1, 2, 7)
    results = []
    for lib in (torch.nn, rnnfast):
        m = getattr(lib, kind)(5, 7)
        h = ((state, state) if kind == "LSTM" else state) if hx else None
        results.append(_raised(lambda: m(x, h)))
    want, got = results
    assert isinstance(got, type(want)) and str(got) == str(want), (want, got)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_hx_of_another_type_raises_torch_nn_exception_type(kind):
    """An hx that is no Tensor (nor, for the LSTM, a tuple of them): torch.nn fails in
    ``hx[0]`` (a TypeError for a float) or in ``.dim()`` (an AttributeError: a tuple to
    the RNN / GRU, a numpy array to the LSTM). rnnfast raises an exception of that same
    type, which is also an RNNArgumentError naming hx."""
    ref = getattr(torch.nn, kind)(5, 7)
    ours = getattr(rnnfast, kind)(5, 7, backend="numba")
    h = torch.zeros(1, 3, 7)
    cases = [1.5, 3, h.numpy(), (h,) if kind != "LSTM" else "hx"]
    if kind == "LSTM":  # an element that is no tensor: torch.nn's hx[i].dim() fails
        cases += [(1.0, 2.0), (1.0,), (h, 2.0), (h,), ()]
    for hx in cases:
        want, got = _raised(lambda: ref(X, hx)), _raised(lambda: ours(X, hx))
        assert type(want) in (TypeError, AttributeError, IndexError), want
        assert isinstance(got, type(want)) and isinstance(got, rnnfast.RNNArgumentError), \
            (hx, want, got)
        assert re.search(r"hx(\[\d\])? must be a (Tensor|tuple)", str(got)), got


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_dropout_of_another_type_after_construction(kind):
    """``m.dropout`` set to a 0-dim tensor or a numpy number after construction runs as
    in torch.nn (its operator takes any real number); None or a string raises torch.nn's
    TypeError, naming its operator, in training and in eval, before any kernel runs."""
    import numpy as np
    x = torch.randn(4, 2, 3)
    ref = getattr(torch.nn, kind)(3, 5, num_layers=2)
    ours = getattr(rnnfast, kind)(3, 5, num_layers=2, backend="numba")
    ours.load_state_dict(ref.state_dict())
    op = {"RNN": "rnn_tanh", "LSTM": "lstm", "GRU": "gru"}[kind]
    for p in (torch.tensor(0.25), np.float64(0.25), torch.tensor(1.5), None, "0.1"):
        for m in (ref, ours):
            m.dropout = p
        for train in (True, False):
            ref.train(train)
            ours.train(train)
            want = _raised(lambda: ref(x)) if p is None or isinstance(p, str) or \
                (train and float(p) > 1) else None
            if want is None:
                ours(x)
                continue
            got = _raised(lambda: ours(x))
            assert type(got) is type(want) or isinstance(got, type(want)), (p, want, got)
            if isinstance(want, TypeError):
                assert str(got).startswith(f"{op}() received an invalid combination of "
                                           f"arguments - got"), got
            else:
                assert str(got) == str(want), (got, want)
    ref.eval()
    ours.eval()
    ref.dropout = ours.dropout = torch.tensor(0.25)
    assert_close("eval output", ours(x)[0], ref(x)[0], torch.float32)


@pytest.mark.parametrize("p", [1.5, -0.5, 2.0, 1.0000001, float("nan")])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_dropout_set_out_of_range_after_construction(kind, p):
    """``m.dropout = p`` outside [0, 1] after construction: in training with more than
    one layer, torch.nn's RuntimeError with its message, raised by rnnfast before any
    kernel runs; nothing in eval mode or with one layer (as torch.nn)."""
    x = torch.randn(4, 2, 3)
    for m in (getattr(torch.nn, kind)(3, 5, num_layers=2),
              getattr(rnnfast, kind)(3, 5, num_layers=2, backend="numba")):
        m.dropout = p
        # aten prints the double as C++ streams do (%g: 2.0 as 2, 1.0000001 as 1)
        with pytest.raises(RuntimeError, match=rf"^dropout probability has to be between 0 "
                                               rf"and 1, but got {p:g}$"):
            m(x)
        m.eval()
        m(x)
    one = getattr(rnnfast, kind)(3, 5, backend="numba")
    one.dropout = p
    one(x)


@pytest.mark.parametrize("name", ["RNNFAST_TRITON_TF32", "RNNFAST_TRITON_PERSISTENT"])
def test_triton_flags_take_0_or_1(name, monkeypatch):
    """The Triton backend's switches, read at call time: 0 / 1, empty is the default, any
    other value is an error naming the variable (as RNNFAST_BACKEND's)."""
    pytest.importorskip("triton")
    from rnnfast.kernels.triton import config
    monkeypatch.setattr(config, "_tf32_override", None)  # set_tf32's, which wins over env
    read = {"RNNFAST_TRITON_TF32": config.tf32_enabled,
            "RNNFAST_TRITON_PERSISTENT": config.persistent_enabled}[name]
    default = {"RNNFAST_TRITON_TF32": False, "RNNFAST_TRITON_PERSISTENT": True}[name]
    for value, want in (("0", False), ("1", True), ("", default)):
        monkeypatch.setenv(name, value)
        assert read() is want, (name, value)
    monkeypatch.setenv(name, "bogus")
    with pytest.raises(ValueError, match=f"^{name}='bogus': expected '0' or '1'$"):
        read()


def test_set_triton_tf32_takes_a_bool_or_none(monkeypatch):
    """bool('0') is True: a setting read as the string '0' turned TF32 on. Anything but
    True, False and None is a TypeError."""
    pytest.importorskip("triton")
    from rnnfast.kernels.triton import config
    monkeypatch.setattr(config, "_tf32_override", None)
    for bad in ("0", "false", 1, 0.0):
        with pytest.raises(TypeError, match=r"^set_triton_tf32 expects True, False or None"):
            rnnfast.set_triton_tf32(bad)
    assert config._tf32_override is None
    rnnfast.set_triton_tf32(False)
    assert config.tf32_enabled() is False


def test_hidden_grad_norms_refuses_a_torch_nn_module():
    with pytest.raises(TypeError, match=r"^hidden_grad_norms expects an rnnfast RNN, LSTM or "
                                        r"GRU module, got torch\.nn\.modules\.rnn\.GRU$"):
        rnnfast.diagnostics.hidden_grad_norms(torch.nn.GRU(4, 8), torch.randn(5, 2, 4),
                                              torch.randn(5, 2, 8))


_ENV_CALL = ("import torch, rnnfast\n"
             "m = rnnfast.GRU(4, 8, backend='numba')\n"
             "y, _ = m(torch.randn(3, 2, 4))\n"
             "y.sum().backward()\n"
             "print('ran')")


@pytest.mark.slow
@pytest.mark.parametrize("setting, error", [
    ("RNNFAST_SCRATCH_POOL_MB=", None),  # bad sizes: test_scratch_pool.py
    ("RNNFAST_PACK_A=", None), ("RNNFAST_PACK_A=yes", r"RNNFAST_PACK_A='yes': expected '0'"),
    ("RNNFAST_LAYER_GEMM=", None),
    ("RNNFAST_NUMBA_CACHE=false", r"RNNFAST_NUMBA_CACHE='false': expected '0' or '1'"),
    ("RNNFAST_HUGEPAGES=", None), ("RNNFAST_HUGEPAGES=off", r"RNNFAST_HUGEPAGES='off'")])
def test_cpu_settings_empty_is_default_and_bad_values_name_the_variable(setting, error):
    """The numba backend's environment settings, read when its kernels are imported
    (the first layer call): empty means the default, as for RNNFAST_BACKEND and the
    Triton switches; any other bad value is a ValueError naming the variable. Before:
    an empty RNNFAST_PACK_A, _SCRATCH_POOL_MB or _LAYER_GEMM was an error, and
    RNNFAST_NUMBA_CACHE=false (or any word) left the cache on, as did any
    RNNFAST_HUGEPAGES but 0."""
    import subprocess
    import sys
    name, value = setting.split("=")
    env = dict(os.environ, **{name: value})
    r = subprocess.run([sys.executable, "-c", _ENV_CALL], env=env, capture_output=True,
                       text=True, timeout=600)
    if error is None:
        assert r.returncode == 0 and "ran" in r.stdout, r.stderr[-2000:]
    else:
        assert r.returncode != 0 and re.search(f"ValueError: {error}", r.stderr), \
            r.stderr[-2000:]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("name", ["bias_hh_l1", "weight_hh_l0", "weight_ih_l0"])
def test_weight_set_to_none_raises_like_torch(kind, name, packed):
    """A weight set to None after construction: torch.nn's operator raises a TypeError
    naming its position among the weights (its argument 2, or 3 for packed input);
    rnnfast raises the same before any kernel runs (it ran the layer without it). The
    first weight fails torch.nn's input check before that (an AttributeError), in both."""
    x = torch.randn(4, 2, 3)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([4, 2]))
    raised = []
    for m in (getattr(torch.nn, kind)(3, 5, num_layers=2),
              getattr(rnnfast, kind)(3, 5, num_layers=2, backend="numba")):
        setattr(m, name, None)
        with pytest.raises(Exception) as e:
            m(x)
        raised.append((type(e.value), str(e.value)))
    assert raised[1] == raised[0]
    index = {"bias_hh_l1": 7, "weight_hh_l0": 1}.get(name)
    if index is not None:
        assert raised[0] == (TypeError, f"expected Tensor as element {index} in argument "
                                        f"{3 if packed else 2}, but got NoneType")


def test_rnn_mode_set_to_another_value_raises_like_torch():
    """``m.mode`` set to something other than RNN_TANH / RNN_RELU: torch.nn.RNN's
    AssertionError with its message (rnnfast ran it as a ReLU RNN)."""
    x = torch.randn(4, 2, 3)
    for m in (torch.nn.RNN(3, 5), rnnfast.RNN(3, 5, backend="numba")):
        m.mode = "GRU"
        with pytest.raises(AssertionError, match=r"^mode must be RNN_TANH or RNN_RELU, "
                                                 r"got GRU$"):
            m(x)


@pytest.mark.parametrize("make,args,pattern", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_rnnfast_error_where_auto_runs_torch_nn(make, args, pattern):
    """A call that backend='auto' hands to torch.nn's own forward before rnnfast's
    checks (modules._FusedRNNBase._torch_forward_if_faster: here a forward-only call of
    4 steps at batch 3) raises the same error as the kernels' path: the message above,
    as an exception that is both a ValueError and a RuntimeError (where torch.nn's own
    forward raises one of them, or another kind, for it)."""
    m = make()
    m.backend = "auto"
    x, hx = args()
    with torch.no_grad():
        if m.plan(X).name != "torch.nn":
            pytest.skip("auto runs the kernels for this module's good call")
        with pytest.raises(ValueError, match=pattern) as info:
            m(x, hx)
        assert isinstance(info.value, RuntimeError)
        y, _ = m(X)
    assert torch.isfinite(y).all()


def test_bad_module_state_raises_rnnfast_error_where_auto_runs_torch_nn(monkeypatch):
    """Module state that torch.nn's forward meets with another error than rnnfast's
    path, or runs (oneDNN's LSTM reads past a weight too small for the options: NaN or a
    crash; a bias of the wrong shape is broadcast): a weight set to None, a parameter
    of another dtype or shape, an RNN's mode set to another value, options changed
    after construction. On a call that backend='auto' would hand to torch.nn's operator
    (forward-only, one step; the LSTM at a batch of one, hidden 256, with threads),
    rnnfast's error is raised, as on the kernels' path."""
    monkeypatch.delenv("RNNFAST_BACKEND", raising=False)
    if torch.get_num_threads() < 2:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    P = torch.nn.Parameter
    cases = [
        (rnnfast.RNN, lambda m: setattr(m, "bias_hh_l0", None),
         TypeError, r"^expected Tensor as element 3 in argument 2, but got NoneType$"),
        (rnnfast.RNN, lambda m: setattr(m, "weight_hh_l0", P(m.weight_hh_l0.double())),
         RuntimeError, r"parameter weight_hh_l0 has dtype torch.float64"),
        (rnnfast.RNN, lambda m: setattr(m, "mode", "LSTM"), AssertionError,
         r"^mode must be RNN_TANH or RNN_RELU, got LSTM$"),
        (rnnfast.RNN, lambda m: setattr(m, "num_layers", 2), RuntimeError,
         r"^Expected more weights in stacked_rnn$"),
        (rnnfast.GRU, lambda m: setattr(m, "bias_ih_l0", P(torch.randn(1))), RuntimeError,
         r"^GRU: parameter bias_ih_l0 has shape \(1,\), but input_size=5, hidden_size=7 "
         r"need \(21,\)$"),
        (rnnfast.RNN, lambda m: setattr(m, "bias", False), RuntimeError,
         r"^Expected more weights in stacked_rnn$"),
        (rnnfast.LSTM, lambda m: setattr(m, "weight_hh_l0", P(torch.randn(1024, 64))),
         RuntimeError, r"^LSTM: parameter weight_hh_l0 has shape \(1024, 64\), but "
                       r"input_size=5, hidden_size=256 need \(1024, 256\)$"),
        (rnnfast.LSTM, lambda m: setattr(m, "hidden_size", 512), RuntimeError,
         r"parameter weight_ih_l0 has shape \(1024, 5\), but input_size=5, "
         r"hidden_size=512 need \(2048, 5\)$"),
    ]
    for cls, change, kind, pattern in cases:
        H = 256 if cls is rnnfast.LSTM else 7
        m = cls(5, H)
        x = torch.randn(1, 1, 5)
        with torch.no_grad():
            assert m._torch_op_call(x, None) is True  # a call auto hands to torch.nn
            change(m)
            with pytest.raises(kind, match=pattern):
                m(x)
