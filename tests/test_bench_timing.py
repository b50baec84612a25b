"""bench.report.common.time_interleaved: what each sample calls and times."""

import time

import torch

from bench.report import common

CPU = torch.device("cpu")


def _counting(sleep_s=0.0):
    calls = []

    def fn():
        calls.append(time.perf_counter())
        if sleep_s:
            time.sleep(sleep_s)
    return fn, calls


def test_short_calls_are_rewarmed_after_each_pause():
    """A call shorter than rewarm_below_s runs once untimed after each settle pause, so
    a sample is made of warm calls only: calls = 2 warm-up + rounds * (1 + inner)."""
    fn, calls = _counting()
    out = common.time_interleaved({"a": fn}, CPU, min_reps=3, max_reps=3, budget_s=0.0,
                                  min_sample_s=0.0, settle_s=0.0)
    assert out["a"]["reps"] == 3 and out["a"]["inner"] == 1
    assert len(calls) == 2 + 3 * 2


def test_long_calls_are_not_rewarmed():
    fn, calls = _counting(sleep_s=0.002)
    out = common.time_interleaved({"a": fn}, CPU, min_reps=3, max_reps=3, budget_s=0.0,
                                  min_sample_s=0.0, settle_s=0.0, rewarm_below_s=0.001)
    assert out["a"]["reps"] == 3
    assert len(calls) == 2 + 3
    assert out["a"]["median_s"] >= 0.002


def test_alloc_child_reports_time_and_faults(capsys):
    """bench.alloc's per-process measurement: one JSON line with a positive median time
    and a page-fault count per call, for torch.nn and for rnnfast."""
    import json

    from bench import alloc
    for impl in alloc.IMPLS:
        alloc.main(["--child", "rnn_relu", "3", "2", "4", impl, "2"])
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["ms"] > 0 and out["faults"] >= 0, (impl, out)
