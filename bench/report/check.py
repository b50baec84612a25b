"""``--check``: issue 13's floors (and the foundation issue's ReLU-RNN floors, issue 12's
GRU floors and the fidelity floor they must not cost), each with its measured value,
the floor, and met / NOT MET / not measured, computed from a report dict
(``report.json``).

A report, not a test: the numbers are the run's medians, under whatever load the
machine had (``machine.loadavg_*`` in the report). A floor whose data the run did not
produce (a section left out by ``--only``, a point outside the grid, JAX not installed)
is "not measured" and does not fail the check, unless no floor at all was measured.

Ratios are peer time / rnnfast time in the same run (> 1: rnnfast faster); the speed
floors read the speed section at T = 100, I = H, float32.
"""

import os
import sys

from . import e2e as e2e_mod
from . import fidelity, host, speed

MET, MISSED, ABSENT = "met", "NOT MET", "not measured"

# issue 13: forward-only floor at all five points, LSTM fwd+bwd floors
FWD_FLOOR = 1.2
LSTM_FWDBWD_FLOOR = {(16, 64): 1.3, (32, 128): 1.3, (32, 256): 1.3, (64, 512): 1.15}
# issue 13: packed batches (uniform lengths) at B = 32, H = 128
PACKED_B, PACKED_H, PACKED_TS = 32, 128, (100, 1000)
PACKED_OVER_PADDED = 0.65
SMALL_POINT = (1, 32)
# issue 13: the recurrent layers' fwd+bwd inside the word-LM step
E2E_RNN_FLOOR = {"rnn_relu": 2.0, "lstm": 1.3}
ISSUE13_CELLS = ("rnn_relu", "lstm")  # the small-point, forward and packed floors


def _row(issue, floor, measured, target, ok, detail=""):
    """One check row; ``ok`` None means not measured."""
    status = ABSENT if ok is None else (MET if ok else MISSED)
    return {"issue": issue, "floor": floor, "measured": measured, "target": target,
            "status": status, "detail": detail}


def _x(v):
    return f"{v:.2f}x"


def _speed_point(report, cell, B, H, mode, backend):
    for r in report.get("speed") or []:
        if ((r["cell"], r["T"], r["B"], r["H"], r["I"], r["dtype"], r["mode"])
                == (cell, speed.FLOOR_T, B, H, H, "float32", mode)
                and backend in r["ratios"]):
            return r
    return None


def _why_absent(report, section):
    if section not in report["config"].get("sections", []):
        return f"{section} section not run"
    return "not in this run's grid"


def _ratio_floor(report, issue, cell, B, H, mode, peer, target, be):
    name = f"{cell} B={B} H={H} {'fwd' if mode == 'fwd' else 'fwd+bwd'}: {peer} / rnnfast"
    r = _speed_point(report, cell, B, H, mode, be)
    if r is None:
        return _row(issue, name, None, f">= {_x(target)}", None, _why_absent(report, "speed"))
    v = r["ratios"][be].get(peer)
    if v is None:
        why = r.get("notes", {}).get(peer) or f"no {peer} column"
        if peer == "jax" and not report["config"].get("jax"):
            why = "JAX not installed or disabled"
        return _row(issue, name, None, f">= {_x(target)}", None, why)
    return _row(issue, name, _x(v), f">= {_x(target)}", v >= target,
                _needs(report, r, be, peer, target))


def _needs(report, r, be, peer, target):
    """What a speed floor asks of the machine: the GEMM rate rnnfast would need to run
    the point's GEMM flops (common.gemm_flops: the pointwise cell math and the host path
    come on top) in peer time / target, i.e. the peer's own rate (the speed section's
    ``gflops``) times the target, against the best GEMM rate this run measured
    (report["gemm"]: torch.mm, numpy, rnnfast's tile). A floor that needs 90% or more
    of that peak in GEMM flops alone is out of reach on this machine for any
    implementation of these flops, not only for rnnfast's."""
    peak = (report.get("gemm") or {}).get("peak_gflops")
    peer_gf = (r["times"].get(peer) or {}).get("gflops")
    my_gf = (r["times"].get(f"rnnfast[{be}]") or {}).get("gflops")
    if not peak or not peer_gf or not my_gf:
        return ""
    need = peer_gf * target
    return (f"needs {need:.0f} GFLOP/s, {100 * need / peak:.0f}% of this run's GEMM peak "
            f"{peak:.0f} (rnnfast ran {my_gf:.0f}, {peer} {peer_gf:.0f})")


def speed_rows(report, be):
    rows = []
    for cell in ISSUE13_CELLS:
        for mode in ("fwd", "fwdbwd"):
            rows.append(_ratio_floor(report, "13", cell, *SMALL_POINT, mode, "jax", 1.0, be))
    for cell in ISSUE13_CELLS:
        for B, H in speed.FLOOR_POINTS:
            rows.append(_ratio_floor(report, "13", cell, B, H, "fwd", "torch.nn", FWD_FLOOR,
                                     be))
    for (B, H), target in LSTM_FWDBWD_FLOOR.items():
        rows.append(_ratio_floor(report, "13", "lstm", B, H, "fwdbwd", "torch.nn", target, be))
    for issue, cell in (("2", "rnn_relu"), ("12", "gru")):
        for B, H in speed.FLOOR_POINTS:
            rows.append(_ratio_floor(report, issue, cell, B, H, "fwdbwd", "torch.nn",
                                     speed.floor_target(cell, B, H), be))
    return rows


def packed_rows(report, be):
    rows = []
    for cell in ISSUE13_CELLS:
        for T in PACKED_TS:
            r = next((q for q in report.get("packed") or []
                      if (q["cell"], q["T"], q["B"], q["H"], q.get("dist")) ==
                      (cell, T, PACKED_B, PACKED_H, "uniform")
                      and f"{be}_packed_over_padded" in q), None)
            where = f"{cell} packed, uniform lengths, T={T} B={PACKED_B} H={PACKED_H}"
            f1 = f"{where}: rnnfast packed / padded"
            f2 = f"{where}: torch.nn / rnnfast, packed vs padded batch"
            if r is None:
                why = _why_absent(report, "packed")
                rows += [_row("13", f1, None, f"<= {PACKED_OVER_PADDED}", None, why),
                         _row("13", f2, None, ">= the padded ratio", None, why)]
                continue
            v = r[f"{be}_packed_over_padded"]
            rows.append(_row("13", f1, f"{v:.2f}", f"<= {PACKED_OVER_PADDED}",
                             v <= PACKED_OVER_PADDED,
                             f"token fraction {r['token_fraction']:.2f}"))
            pk, pad = r[f"{be}_speedup_packed"], r[f"{be}_speedup_padded"]
            rows.append(_row("13", f2, _x(pk), f">= {_x(pad)} (padded)", pk >= pad))
    return rows


def e2e_rows(report, be):
    rows = []
    for cell, target in E2E_RNN_FLOOR.items():
        r = next((q for q in report.get("e2e") or []
                  if q["cell"] == cell and be in q["ratios"]), None)
        f1 = f"word LM {cell}: recurrent fwd+bwd in the step, torch.nn / rnnfast"
        f2 = f"word LM {cell}: whole step, torch.nn / rnnfast"
        if r is None:
            why = _why_absent(report, "e2e")
            rows += [_row("13", f1, None, f">= {_x(target)}", None, why),
                     _row("13", f2, None, "what the share allows", None, why)]
            continue
        cfg = e2e_mod.Config(**r["config"])
        note = "" if cfg == e2e_mod.FULL else f"quick config ({cfg.label()})"
        q = r["ratios"][be]
        rows.append(_row("13", f1, _x(q["rnn_ratio"]), f">= {_x(target)}",
                         q["rnn_ratio"] >= target, note))
        # The step must gain what the recurrent floor would give it with the rest of the
        # step unchanged (Amdahl, torch.nn's recurrent share s of its own step).
        s = r["impls"]["torch.nn"]["rnn_share"]
        allowed = 1.0 / (1.0 - s + s / target)
        rows.append(_row("13", f2, _x(q["step_ratio"]), f">= {_x(allowed)}",
                         q["step_ratio"] >= allowed,
                         "; ".join(v for v in (f"torch.nn recurrent share {s:.0%}", note)
                                   if v)))
    return rows


def fidelity_rows(report, be):
    rows = []
    summary = [r for r in report.get("fidelity_summary") or [] if r["backend"] == be]
    target = f"<= {fidelity.RATIO_LIMIT}x torch.nn's"
    for cell in dict.fromkeys(r["cell"] for r in summary) or ("all cells",):
        mine = [r for r in summary if r["cell"] == cell]
        name = f"fidelity {cell}: worst float32 error ratio rnnfast / torch.nn"
        if not mine:
            rows.append(_row("13", name, None, target, None, _why_absent(report, "fidelity")))
            continue
        worst = max(mine, key=lambda r: r["max_ratio"])
        rows.append(_row("13", name, f"{worst['max_ratio']:.2f}", target,
                         all(r["pass"] for r in mine),
                         f"T={worst['T']} {worst['worst_tensor']}"))
    return rows


def host_rows(report, be):
    """Issue 13's lean host path: per fwd+bwd of one layer at most 50 us outside the
    compiled kernels (numba backend, CPU; the host section)."""
    if be != "numba":
        return []
    rows = []
    for r in report.get("host") or []:
        m = r["modes"].get("fwdbwd")
        if m is None:
            continue
        rows.append(_row("13", f"{r['cell']} B={r['B']} H={r['H']} fwd+bwd: host time "
                               "per layer call (total - compiled kernels)",
                         f"{m['host_s'] * 1e6:.0f} us",
                         f"<= {host.HOST_FLOOR_S * 1e6:.0f} us",
                         m["host_s"] <= host.HOST_FLOOR_S,
                         f"total {m['total_s'] * 1e6:.0f} us; in the timed round "
                         + (f"{m['timed_total_s'] * 1e6:.0f} us, " if "timed_total_s" in m
                            else "")
                         + f"kernels {m['kernel_s'] * 1e6:.0f} us"
                         + (f", torch's own floor {m['floor_s'] * 1e6:.0f} us (a layer "
                            f"that computes nothing)" if "floor_s" in m else "")))
    if not rows:
        rows.append(_row("13", "fwd+bwd: host time per layer call (total - compiled "
                               "kernels)", None, f"<= {host.HOST_FLOOR_S * 1e6:.0f} us",
                         None, _why_absent(report, "host")))
    return rows


def rows(report):
    """Every floor's row, per rnnfast backend in the report."""
    out = []
    for be in report["config"]["backends"]:
        for r in (speed_rows(report, be) + packed_rows(report, be) + e2e_rows(report, be)
                  + host_rows(report, be) + fidelity_rows(report, be)):
            r["backend"] = be
            out.append(r)
    return out


def missed(check_rows):
    return [r for r in check_rows if r["status"] == MISSED]


def overloaded(load, cpus):
    """Whether a 1-minute load average exceeds the CPU count by more than half a thread
    (the rule of kernels/numba/_host.busy). Another process holding a core stalls
    torch's two-thread OpenMP regions far more than rnnfast's kernels: with a second
    session's compile running on the 2-core Zen 4 (load 6-9, 2026-12-07), torch.nn's
    ReLU-RNN at (10, 16, 64) took 150-656 ms a call against 0.67-0.79 ms quiet, and the
    floors read 55-113x, "met" (bench.solo: 1191x)."""
    return load > cpus + 0.5


def busy(report):
    """The run's 1-minute load averages (at start, at end) that are :func:`overloaded`,
    or []."""
    m = report.get("machine", {})
    cpus = m.get("cpu_count") or os.cpu_count() or 1
    return [v[0] for v in (m.get("loadavg_start"), m.get("loadavg_end"))
            if v and overloaded(v[0], cpus)]


def warn_if_busy(prog, when):
    """A line on stderr where the machine is :func:`overloaded` now (``bench.solo`` and
    ``bench.ab``, which keep no report): these timings are then no evidence."""
    try:
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):
        return
    if overloaded(load, cpus):
        print(f"{prog}: the machine is busy {when} (1-minute load average {load:.2f} "
              f"on {cpus} CPUs): these timings are no evidence; rerun on a quiet machine",
              file=sys.stderr, flush=True)


def failed(check_rows, report=None):
    """The check's verdict: True when a floor is not met, when no floor was measured
    at all (a run that measured nothing must not read as a pass), or when the machine
    was busy during the run (:func:`busy`: its ratios are no evidence either way)."""
    return bool(missed(check_rows)) or not any(r["status"] == MET for r in check_rows) \
        or bool(report is not None and busy(report))


def markdown(check_rows, report):
    if not check_rows:
        return "### Floor check\n\nno rnnfast backend ran: nothing to check\n"
    n = {s: sum(r["status"] == s for r in check_rows) for s in (MET, MISSED, ABSENT)}
    lines = [f"### Floor check ({report['date']}; {n[MET]} met, {n[MISSED]} not met, "
             f"{n[ABSENT]} not measured)",
             ""]
    if not n[MET] and not n[MISSED]:
        lines += ["No floor was measured in this run (see each row's detail): the check "
                  "fails.", ""]
    loads = busy(report)
    if loads:
        cpus = report["machine"].get("cpu_count")
        lines += [f"The machine was busy during this run (1-minute load average "
                  f"{', '.join(f'{v:g}' for v in loads)} on {cpus} CPUs): another process "
                  f"took cores from the timed calls, and the ratios below are no evidence "
                  f"either way. The check fails; rerun on a quiet machine.", ""]
    lines += ["Ratios: peer time / rnnfast time in the same run (> 1: rnnfast faster). "
              "Issue 2: the foundation floors; issue 12: the GRU's fwd+bwd floors; issue 13: "
              "packed, small, inference, LSTM, end-to-end. A speed floor's detail: the GEMM "
              "rate rnnfast would need to meet it (the point's GEMM flops alone, in the "
              "peer's time over the target) against the best GEMM rate this run measured; "
              "near or past 100%, no implementation of those flops meets it here.",
              "",
              "| issue | backend | floor | measured | target | | detail |",
              "|---|---|---|--:|---|---|---|"]
    for r in check_rows:
        status = r["status"] if r["status"] != MISSED else f"**{MISSED}**"
        lines.append(f"| {r['issue']} | {r['backend']} | {r['floor']} | "
                     f"{r['measured'] or '—'} | {r['target']} | {status} | {r['detail']} |")
    return "\n".join(lines) + "\n"
