"""Shared fixtures. Fresh buffers (torch's empty / empty_like / new_empty and the numba
launchers' numpy scratch buffers) are poisoned with NaN for the whole test session, so
any output element a kernel never wrote shows up as a NaN mismatch.

The tests compare rnnfast's kernels: a cold first call compiles them in the test process
(RNNFAST_COMPILE=sync) rather than running torch.nn's operator while a background
process compiles; tests/test_background_compile.py covers that path."""

import os

os.environ.setdefault("RNNFAST_COMPILE", "sync")

import pytest  # noqa: E402
import torch  # noqa: E402

_REAL_EMPTY = {name: getattr(torch, name) for name in ("empty", "empty_like")}
_REAL_NEW_EMPTY = torch.Tensor.new_empty


def _poisoned(fn):
    def wrapper(*args, **kwargs):
        t = fn(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t
    return wrapper


@pytest.fixture(autouse=True)
def poison_empty(request, monkeypatch):
    # torch.compile traces torch.empty itself; those tests opt out with this marker.
    if request.node.get_closest_marker("no_poison"):
        yield
        return
    for name, fn in _REAL_EMPTY.items():
        monkeypatch.setattr(torch, name, _poisoned(fn))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(_REAL_NEW_EMPTY))
    # the numba launchers' numpy-allocated buffers (kernels/numba/_host.scratch)
    from rnnfast.kernels.numba import _host
    monkeypatch.setattr(_host, "scratch", _poisoned_scratch(_host.scratch))
    yield


@pytest.fixture(autouse=True, scope="session")
def split_short_recurrences():
    """The case catalogue's small shapes (B * H * G past config.PARALLEL_MIN_MACS: (7, 5,
    80), (6, 33, 100), ...) exercise the batch-parallel recurrence kernels, as they did
    before short launches ran serial: the suite drops the whole-launch threshold
    (config.PARALLEL_MIN_LAUNCH_MACS) to 0, so a split is decided by the step's work
    alone. tests/test_kernels.py::test_short_launches_run_serial checks the threshold
    itself."""
    from rnnfast.kernels.numba import _host
    kept = _host.PARALLEL_MIN_LAUNCH_MACS
    _host.PARALLEL_MIN_LAUNCH_MACS = 0
    yield
    _host.PARALLEL_MIN_LAUNCH_MACS = kept


def _poisoned_scratch(fn):
    def wrapper(*args, **kwargs):
        t, a = fn(*args, **kwargs)
        a.fill(float("nan"))
        return t, a
    return wrapper


def pytest_configure(config):
    config.addinivalue_line("markers", "no_poison: do not NaN-poison torch.empty in this test")
    config.addinivalue_line("markers", "slow: long-running (long sequences, subprocesses)")


@pytest.fixture
def two_torch_threads():
    """Two torch threads (the launchers' thread budget), restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)
