"""bench.solo: each implementation in its own process, alternated, and its table."""

import re

import pytest

from bench import solo


def test_solo_runs_both_and_reports_medians_and_rounds(capsys):
    """Two rounds of torch.nn and rnnfast (each round two processes, the order flipped in
    the second) at one tiny point: every round's times, then one table row whose ratio
    is the ratio of the medians."""
    solo.main(["--cell", "rnn_relu", "--points", "2,1,4", "--rounds", "2",
               "--seconds", "0.05"])
    out = capsys.readouterr().out
    rounds = re.findall(r"round (\d) (\S+): 2,1,4:([\d.]+)", out)
    assert [(r, who.split("@")[0]) for r, who, _ in rounds] == [
        ("1", "torch.nn"), ("1", "numba"), ("2", "numba"), ("2", "torch.nn")]  # ABBA
    row = re.search(r"\| \(2, 1, 4\) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| (.+) \|", out)
    assert row, out
    peer = sorted(float(v) for _, who, v in rounds if who == "torch.nn")
    mine = sorted(float(v) for _, who, v in rounds if who != "torch.nn")
    assert float(row.group(1)) == pytest.approx(sum(peer) / 2, abs=2e-3)
    assert float(row.group(2)) == pytest.approx(sum(mine) / 2, abs=2e-3)
    assert len(row.group(4).split()) == 2


@pytest.mark.parametrize("argv,msg", [
    (["--points", "10,64"], "--points takes T,B,H"),
    (["--points", "10,0,4"], "--points takes T,B,H"),
    (["--checkout", "/nonexistent"], "has no rnnfast/__init__.py"),
    (["--points", "5,4,\u00b2"], "--points takes T,B,H"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--seconds", "-1"], "--seconds must be > 0"),
    (["--seconds", "nan"], "--seconds must be > 0"),
])
def test_solo_bad_arguments_are_named(argv, msg, capsys):
    with pytest.raises(SystemExit):
        solo.main(argv)
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("load,busy", [(1.9, False), (2.5, False), (2.6, True)])
def test_solo_says_when_the_machine_is_busy(load, busy, monkeypatch, capsys):
    """bench.solo and bench.ab print a line where the 1-minute load average exceeds the
    CPU count by more than half a thread: another process then takes cores from the
    timed calls (ratios of 45-1191x were read so, with no word)."""
    from bench.report import check
    monkeypatch.setattr(check.os, "getloadavg", lambda: (load, 1.0, 1.0))
    monkeypatch.setattr(check.os, "cpu_count", lambda: 2)
    check.warn_if_busy("bench.solo", "at the start")
    err = capsys.readouterr().err
    assert ("bench.solo: the machine is busy at the start" in err) is busy, err


def test_solo_checkout_without_its_own_kernels_link(tmp_path):
    """A checkout whose rnnfast/ has no kernels link (every checkout of this repository:
    kernels/ sits beside rnnfast/) is accepted as --checkout, and its worker imports
    that checkout's kernels/ as rnnfast.kernels, not the installed checkout's."""
    import os
    import subprocess
    import sys

    root = tmp_path / "co"
    (root / "rnnfast").mkdir(parents=True)
    (root / "kernels").mkdir()
    (root / "rnnfast" / "__init__.py").write_text("from . import kernels\n")
    (root / "kernels" / "__init__.py").write_text("WHO = 'the checkout'\n")
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); "
            f"sys.path.append({os.path.dirname(os.path.dirname(solo.__file__))!r}); "
            f"from bench import solo; solo._own_kernels({str(root)!r}); "
            "import rnnfast.kernels as k; print(k.WHO, k.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("the checkout " + str(root / "kernels")), out
