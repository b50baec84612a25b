"""bench.report.check: a speed floor's row states what it asks of the machine."""

from bench.report import check, common

FLOPS = common.gemm_flops("lstm", 100, 32, 128, 128, "fwd")


def _report(t_torch, t_rnnfast, peak):
    """A speed section of one point as speed.py writes it (median times and rates)."""
    times = {name: {"median_s": t, "gflops": FLOPS / t / 1e9}
             for name, t in (("torch.nn", t_torch), ("rnnfast[numba]", t_rnnfast))}
    point = {"cell": "lstm", "T": 100, "B": 32, "H": 128, "I": 128, "dtype": "float32",
             "mode": "fwd", "gemm_flops": FLOPS, "times": times,
             "ratios": {"numba": {"torch.nn": t_torch / t_rnnfast}}}
    report = {"config": {"backends": ["numba"], "sections": ["speed"]}, "speed": [point]}
    if peak is not None:
        report["gemm"] = {"peak_gflops": peak}
    return report


def _row(report):
    return next(r for r in check.rows(report)
                if r["floor"] == "lstm B=32 H=128 fwd: torch.nn / rnnfast")


def test_a_speed_floor_states_the_gemm_rate_it_needs():
    """1.2x against a peer that takes t needs the point's GEMM flops in t / 1.2: here
    torch.nn runs them at 150 GFLOP/s, so the floor needs 180, 90% of a 200 peak."""
    t_torch = FLOPS / 150e9
    row = _row(_report(t_torch, t_torch, 200.0))
    assert row["status"] == check.MISSED
    assert row["detail"] == ("needs 180 GFLOP/s, 90% of this run's GEMM peak 200 "
                             "(rnnfast ran 150, torch.nn 150)")


def test_no_gemm_rate_no_statement():
    row = _row(_report(FLOPS / 150e9, FLOPS / 200e9, None))
    assert row["status"] == check.MET
    assert row["detail"] == ""
