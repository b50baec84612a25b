"""The one tolerance table and the one comparison every test uses.

Tolerances are (atol, rtol) per (dtype, kind). "kernel" compares a backend with the
float64-exact reference or torch.nn in the same dtype; float32 errors grow with T
(rounding in the recurrence), so long-sequence tests use "long".
"""

import torch

TOLERANCES = {
    (torch.float64, "kernel"): (1e-10, 1e-8),
    (torch.float32, "kernel"): (2e-5, 2e-4),
    (torch.float32, "long"): (1e-4, 2e-3),
    (torch.float16, "kernel"): (2e-3, 2e-2),
    (torch.bfloat16, "kernel"): (2e-2, 5e-2),
}


def tolerance(dtype, kind="kernel"):
    return TOLERANCES[(dtype, kind)]


def assert_close(name, actual, expected, dtype=None, kind="kernel"):
    """torch.testing-style closeness with a message that explains a failure: the number
    of mismatches, the worst index and values, and NaN/inf disagreements."""
    dtype = dtype or expected.dtype
    atol, rtol = tolerance(dtype, kind)
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    nan_a, nan_e = ~torch.isfinite(a), ~torch.isfinite(e)
    if (nan_a != nan_e).any():
        idx = (nan_a != nan_e).nonzero()[0].tolist()
        raise AssertionError(
            f"{name}: non-finite mismatch at {idx}: actual {a[tuple(idx)].item()}, "
            f"expected {e[tuple(idx)].item()} ({int((nan_a != nan_e).sum())} such)")
    err = (a - e).abs().masked_fill(nan_e, 0)
    bad = err > atol + rtol * e.abs().masked_fill(nan_e, 0)
    if bad.any():
        worst = torch.argmax(err).item()
        idx = list(torch.unravel_index(torch.tensor(worst), a.shape)) if a.dim() else []
        idx = tuple(int(i) for i in idx)
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ beyond atol={atol}, "
            f"rtol={rtol} ({dtype}, {kind}); worst at {idx}: actual {a[idx].item():.9g}, "
            f"expected {e[idx].item():.9g}, |diff| {err[idx].item():.3g}")
