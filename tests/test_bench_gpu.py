"""``python -m bench.gpu --dry-run``: the GPU validation script end to end on the CPU
(Triton's interpreter, a tiny grid: one point per cell, one test per test file over two
shards), so it cannot rot while no GPU is here. Its timings mean nothing; what is checked
is that every step ran and wrote what the GPU run writes, and that rnnfast agreed with
torch.nn at every point."""

import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_validation_dry_run(tmp_path):
    # A generous deadline: the dry run needs about a minute of CPU time over all its
    # processes (measured: 59 s), but took 3-7 minutes of wall time on a shared 2-core
    # machine at load average 11-13; this test checks that every step ran, not how fast.
    res = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry-run", "--deadline", "1500",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["dry_run"] and env["device"] == "cpu"

    tests = json.loads((tmp_path / "tests" / "summary.json").read_text())
    assert tests["tests"] == 2 and not tests["failures"] and not tests["errors"], tests
    xmls = sorted((tmp_path / "tests").glob("shard*.xml"))
    assert len(xmls) == 2
    # one test from each default test file: the GRU's Triton tests run too
    names = {c.get("classname") for x in xmls for c in ET.parse(x).getroot().iter("testcase")}
    assert names == {"tests.test_triton", "tests.test_triton_gru"}, names

    bench = json.loads((tmp_path / "bench.json").read_text())
    rows = bench["rows"]
    # one compile job per (cell, H, dtype), whatever the number of points
    assert bench["warm"].get("compiled") == len({(r["cell"], r["H"], r["dtype"]) for r in rows})
    assert [r["headline"] for r in rows] == [True, False, False, False]
    assert [r["cell"] for r in rows[1:]] == ["rnn_relu", "lstm", "gru"]
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        for key in ("ours_fwd_ms", "ours_fwdbwd_ms", "torch_fwd_ms", "torch_fwdbwd_ms"):
            assert r[key] > 0, (key, r)
        assert r["max_rel_err"] < 1e-5, r
        kind = r["cell"].split("_")[0]  # rnn_relu -> the rnn kernels
        assert r["fwd_launch"]["kernel"] == f"{kind}_fwd", r
        assert r["fwd_launch"]["config"] and r["bwd_launch"]["kernel"] == f"{kind}_bwd", r
        assert r["fwd_launch"]["persistent"] is False  # the interpreter: one step per launch
    assert rows[0]["torch_fwd_ms_float64"] > 0 and rows[0]["torch_fwdbwd_ms_float64"] > 0
    with open(tmp_path / "bench.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["cell"] for r in csv_rows] == [r["cell"] for r in rows]
    gru = next(r for r in csv_rows if r["cell"] == "gru")
    assert float(gru["speedup_fwdbwd"]) > 0 and float(gru["max_rel_err"]) < 1e-5, gru
    summary = (tmp_path / "summary.txt").read_text()
    assert "DRY RUN" in summary and "tests: 2 run, 0 failed" in summary
    assert "\ngru " in summary  # the GRU's row in the speedup table
    assert summary in res.stdout
