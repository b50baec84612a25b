"""bench.report.check: a speed floor's row states what it asks of the machine."""

import torch

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


def test_a_check_that_measured_nothing_fails_and_every_floor_has_a_row():
    """A run with none of the floors' data (here: the fidelity section only) has a
    "not measured" row for each floor, the host floor included (it had none), and the
    check fails: a run that measured nothing exited 0 as if every floor were met."""
    report = {"config": {"backends": ["numba"], "sections": ["fidelity"]}, "date": "d"}
    rows = check.rows(report)
    assert rows and all(r["status"] == check.ABSENT for r in rows)
    host = [r for r in rows if "host time" in r["floor"]]
    assert len(host) == 1 and host[0]["detail"] == "host section not run"
    assert check.failed(rows) and not check.missed(rows)
    assert "No floor was measured" in check.markdown(rows, report)
    met = _report(FLOPS / 150e9, FLOPS / 200e9, None)
    assert not check.failed(check.rows(met))  # one met, the rest not measured: passes


def test_a_check_on_a_busy_machine_fails():
    """A floor met while another process held cores is no evidence: with the 1-minute
    load average past the CPU count (+ half a thread) at the run's start or end, the
    check fails and says why; at the threshold or below it stands."""
    report = dict(_report(FLOPS / 150e9, FLOPS / 200e9, None), date="d")
    rows = check.rows(report)
    for start, end, busy in ((0.7, 1.9, False), (2.5, 2.5, False), (6.2, 1.0, True),
                             (0.5, 2.6, True)):
        report["machine"] = {"cpu_count": 2, "loadavg_start": [start, 1.0, 1.0],
                             "loadavg_end": [end, 1.0, 1.0]}
        assert check.failed(rows, report) is busy, (start, end)
        assert ("The machine was busy" in check.markdown(rows, report)) is busy
    assert not check.failed(rows)  # rows alone: no machine to judge


def test_bench_cli_refuses_bad_values_before_measuring(capsys, tmp_path):
    """python -m bench: a value no run can use (a length, batch or hidden size below 1,
    an unknown backend or device, thread, repeat, seed or step counts below 1, a
    report that does not exist or is not a report, an empty list: an unset shell
    variable, which ran the whole grid as "all") is argparse's usage error (exit 2)
    before anything is measured, naming the option; python -m bench.study's
    --report-only (also a results file that is not one), --workers and --device
    likewise, and bench.alloc's and bench.coldstart's lists and sizes."""
    import pytest

    from bench.report import cli
    from bench.study import cli as study_cli
    garbage, empty = tmp_path / "garbage.json", tmp_path / "empty.json"
    garbage.write_text("garbage")
    empty.write_text("{}")
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "results.json").write_text('{"x": 1}')
    for argv, says in ((["--only", ""], "--only"), (["--cells", ","], "--cells"),
                       (["--modes", ""], "--modes"), (["--T", ","], "--T"),
                       (["--check-report", str(garbage)], "--check-report"),
                       (["--check-report", str(empty)], "--check-report"),
                       (["--T", "0"], "--T"), (["--T", "10,-5"], "--T"), (["--B", "0"], "--B"),
                       (["--H", "0"], "--H"), (["--fidelity-T", "0"], "--fidelity-T"),
                       (["--backends", "foo"], "--backends"), (["--device", "tpu"], "--device"),
                       (["--threads", "0"], "--threads"), (["--max-reps", "0"], "--max-reps"),
                       (["--seeds", "0"], "--seeds"), (["--e2e-steps", "0"], "--e2e-steps"),
                       (["--budget", "0"], "--budget"), (["--budget", "nan"], "--budget"),
                       (["--compile-budget", "-1"], "--compile-budget"),
                       (["--check-report", "/nonexistent/report.json"], "--check-report"),
                       *([(["--device", "cuda"], "--device")]
                         if not torch.cuda.is_available() else [])):
        with pytest.raises(SystemExit) as e:
            cli.parse_args(argv)
        assert e.value.code == 2, argv
        assert says in capsys.readouterr().err, argv
    a = cli.parse_args(["--T", "1,100", "--B", "1", "--device", "cpu", "--backends", "numba",
                        "--compile-budget", "0"])
    assert a.T == [1, 100] and a.B == [1] and a.compile_budget == 0.0
    assert cli.parse_args(["--skip", ""]).skip == []  # nothing skipped
    from bench import alloc, coldstart
    for main, argv, says in ((alloc.main, ["--cells", "lstmx"], "--cells: unknown lstmx"),
                             (alloc.main, ["--cells", ","], "--cells"),
                             (alloc.main, ["--points", "32x"], "--points"),
                             (alloc.main, ["--points", "0x64"], "--points"),
                             (alloc.main, ["--T", "-1"], "--T"),
                             (alloc.main, ["--rounds", "0"], "--rounds"),
                             (coldstart.main, ["--cells", ""], "--cells"),
                             (coldstart.main, ["--cells", "relu"], "--cells: unknown relu"),
                             (coldstart.main, ["--H", "0"], "--H")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
        assert says in capsys.readouterr().err, argv
    for argv in (["--report-only", "/nonexistent"], ["--workers", "0"], ["--device", "tpu"],
                 ["--report-only", str(tmp_path / "study")]):
        with pytest.raises(SystemExit) as e:
            study_cli.parse(argv)
        assert e.value.code == 2, argv
