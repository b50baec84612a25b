"""The report's markdown: one function per table, :func:`markdown` for the whole page."""

import re

from . import check, e2e, fidelity, host
from .common import fmt_ms, fmt_x


def _md_layer_gemm(lg):
    """The float32 layer-GEMM provider the numba backend used in this run."""
    if not lg:
        return ""
    if "classes" not in lg:
        p = lg["provider"]
        return (" Layer GEMMs (projection, weight gradients): "
                + ("auto, no call in this run needed the choice." if p == "auto" else
                   f"{p} (RNNFAST_LAYER_GEMM)."))

    def one(c):
        times = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in c["seconds"].items())
        return f"{c['provider']} (auto's calibration: {times})"

    return " Layer GEMMs (projection, weight gradients): " + "; ".join(
        f"{name} calls {one(c)}" for name, c in lg["classes"].items()) + "."


def md_speed(results, backends, mode, peak):
    rows = [r for r in results if r["mode"] == mode]
    if not rows:
        return ""
    title = "forward+backward" if mode == "fwdbwd" else "forward (no_grad)"
    lines = [f"### Speed, {title}: median ms, and peer time / rnnfast time (> 1: rnnfast faster)",
             "",
             "| cell | T | B | H | dtype | backend | rnnfast ms | torch.nn ms | vs torch.nn | "
             "compile ms | vs compile | JAX ms | vs JAX | GFLOP/s | % GEMM peak |",
             "|---|--:|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        t = r["times"]
        for be in backends or [None]:
            key = f"rnnfast[{be}]"
            mine = t.get(key, {}).get("median_s")
            ratio = r["ratios"].get(be, {})
            gf = t.get(key, {}).get("gflops")
            cells = [r["cell"], r["T"], r["B"], r["H"], r["dtype"], be or "—", fmt_ms(mine),
                     fmt_ms(t.get("torch.nn", {}).get("median_s")), fmt_x(ratio.get("torch.nn")),
                     fmt_ms(t.get("torch.compile", {}).get("median_s")),
                     fmt_x(ratio.get("torch.compile")),
                     fmt_ms(t.get("jax", {}).get("median_s")), fmt_x(ratio.get("jax")),
                     f"{gf:.1f}" if gf else "—",
                     f"{100 * gf / peak:.1f}" if gf and peak else "—"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def md_floor(rows, backend):
    if not rows:
        return ""
    lines = [f"### Speed floors (ReLU-RNN, LSTM: the foundation issue; GRU: issue 12): "
             f"torch.nn time / rnnfast[{backend}] time, T=100, I=H, float32",
             "",
             "| cell | B | H | fwd | fwd+bwd | floor (fwd+bwd) | |",
             "|---|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['B']} | {r['H']} | {fmt_x(r['fwd_ratio'])} | "
                     f"{fmt_x(r['fwdbwd_ratio'])} | >= {r['target']:.2f}x | "
                     f"{'met' if r['pass'] else '**NOT MET**'} |")
    return "\n".join(lines) + "\n"


def md_fidelity(rows, results):
    if not rows:
        return ""
    seeds = results[0]["seeds"] if results else 0
    lines = [f"### Gradient fidelity: worst relative error over y, h_n(, c_n) and every "
             f"gradient vs float64 torch.nn (RMS over {seeds} seeds, B={fidelity.FID_B}, "
             f"H={fidelity.FID_H})",
             "",
             "| cell | T | backend | rnnfast f32 | torch.nn f32 | worst ratio (per tensor) "
             "| worst tensor | rnnfast f64 | <= 1.5x |",
             "|---|--:|---|--:|--:|--:|---|--:|---|"]
    for r in rows:
        f64 = f"{r['float64_max_err']:.1e}" if r["float64_max_err"] is not None else "—"
        lines.append(f"| {r['cell']} | {r['T']} | {r['backend']} | {r['rnnfast_max_err']:.2e} | "
                     f"{r['torch_max_err']:.2e} | {r['max_ratio']:.2f} | {r['worst_tensor']} | "
                     f"{f64} | {'yes' if r['pass'] else '**NO**'} |")
    return "\n".join(lines) + "\n"


def md_packed(results, backends):
    if not results:
        return ""
    lines = ["### Packed sequences (fwd+bwd): packed time / padded time, next to the token "
             "fraction sum(lengths) / (T B)",
             "",
             "Lengths: uniform in [1, T]; longtail T min(1, LogNormal(log 1/8, 1)); spread "
             "evenly over [T/4, T]; the longest is T in each. Last two columns: torch.nn "
             "time / rnnfast time on the packed batch and on the padded batch.",
             "",
             "| cell | lengths | T | B | H | tokens | impl | padded ms | packed ms | "
             "packed / padded | packed: torch.nn / rnnfast | padded: torch.nn / rnnfast |",
             "|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|"]
    for r in results:
        t = r["times"]
        frac = r.get("token_fraction")
        for impl in ["torch.nn"] + [f"rnnfast[{be}]" for be in backends]:
            pad, pk = t[f"{impl} padded"]["median_s"], t[f"{impl} packed"]["median_s"]
            sp, sd = "", ""
            if impl != "torch.nn":
                sp = fmt_x(t["torch.nn packed"]["median_s"] / pk)
                sd = fmt_x(t["torch.nn padded"]["median_s"] / pad)
            lines.append(f"| {r['cell']} | {r.get('dist', 'spread')} | {r['T']} | {r['B']} | "
                         f"{r['H']} | {'—' if frac is None else f'{frac:.2f}'} | {impl} | "
                         f"{fmt_ms(pad)} | {fmt_ms(pk)} | {fmt_x(pk / pad)} | {sp} | {sd} |")
    return "\n".join(lines) + "\n"


def md_e2e(results):
    if not results:
        return ""
    cfg = e2e.Config(**results[0]["config"])
    lines = [f"### End-to-end: PyTorch's example word-level language model, one training "
             f"step ({cfg.label()}, dropout {cfg.dropout}, SGD lr {cfg.lr:g}, clip "
             f"{cfg.clip}; median of {cfg.steps} interleaved steps after {cfg.warmup} "
             "warm-up)",
             "",
             "Synthetic token ids (uniform, fixed seed). The recurrent stack's forward and "
             "backward are timed inside the step by module and autograd hooks (forward "
             "pre-/post-hooks; backward from the gradient reaching its output to the last of "
             "its input gradient and its parameters' gradient accumulations). Ratios: "
             "torch.nn / rnnfast; *allowed*: the step ratio the recurrent ratio gives if the "
             "rest of the step costs what torch.nn's does (Amdahl on torch.nn's share).",
             "",
             "| cell | impl | step ms | recurrent fwd ms | recurrent bwd ms | "
             "recurrent share | rest ms | mean loss | step ratio | recurrent ratio | "
             "allowed |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        for impl, m in r["impls"].items():
            q = r["ratios"].get(impl[len("rnnfast["):-1], {}) if impl != "torch.nn" else {}
            lines.append(f"| {r['cell']} | {impl} | {fmt_ms(m['step_s'])} | "
                         f"{fmt_ms(m['rnn_fwd_s'])} | {fmt_ms(m['rnn_bwd_s'])} | "
                         f"{m['rnn_share']:.0%} | {fmt_ms(m['rest_s'])} | {m['loss']:.4f} | "
                         f"{fmt_x(q.get('step_ratio'))} | {fmt_x(q.get('rnn_ratio'))} | "
                         f"{fmt_x(q.get('step_allowed'))} |")
    return "\n".join(lines) + "\n"


def md_notes(report):
    notes = []
    for r in report.get("speed", []):
        for impl, why in r["notes"].items():
            notes.append(f"- {r['cell']} T{r['T']} B{r['B']} H{r['H']} {r['mode']}: "
                         f"{impl} — {why}")
    for n in report["config"].get("notes", []):
        notes.append(f"- {n}")
    return ("### Notes\n\n" + "\n".join(notes) + "\n") if notes else ""


def markdown(report):
    c = report["config"]
    m = report["machine"]
    g = report.get("gemm") or {}
    be = c["backends"]
    parts = [f"## rnnfast benchmark, {report['date']}", "",
             f"Command: `{report['command']}` (wall time {report['wall_s']:.0f} s)", "",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores, device {m['device']}, "
             f"torch {m['torch']} with {m['torch_threads']} threads, numpy {m['numpy']}"
             + (f", numba {m['numba']}" if "numba" in m else "")
             + (f", jax {m['jax']}" if "jax" in m else ", jax not installed") + ". "
             f"Load average (1, 5, 15 min) at start {m.get('loadavg_start')}, at end "
             f"{m.get('loadavg_end')}: timings are noisy while it exceeds the core count.", ""]
    if "isa" in m:
        i = m["isa"]
        parts += [f"Instruction set: {i['requested']} (numba compiles for "
                  f"{i['numba_cpu']}, widest vector extension {i['numba_widest']}; torch's "
                  f"CPU capability {i['torch_cpu_capability']}, oneDNN limit "
                  f"{i['onednn_max_cpu_isa']}).", ""]
    if g:
        parts += [f"GEMM rate ({'x'.join(map(str, g['shape']))} {g['dtype']}): torch "
                  f"{g['torch_gflops']:.0f} GFLOP/s"
                  + (f", numpy {g['numpy_gflops']:.0f} GFLOP/s" if "numpy_gflops" in g else "")
                  + (f", rnnfast's tile {g['rnnfast_gflops']:.0f} GFLOP/s"
                     if "rnnfast_gflops" in g else "")
                  + f"; peak used for % = {g['peak_gflops']:.0f} GFLOP/s. GFLOP/s counts "
                  "every GEMM of the layer (fwd 2TBG(I+H), fwd+bwd 3x that)."
                  + _md_layer_gemm(g.get("layer_gemm")), ""]
    peak = g.get("peak_gflops")
    for b in be:
        parts.append(md_floor(report.get("floor", {}).get(b, []), b))
    for mode in ("fwdbwd", "fwd"):
        parts.append(md_speed(report.get("speed", []), be, mode, peak))
    parts.append(md_fidelity(report.get("fidelity_summary", []), report.get("fidelity", [])))
    parts.append(md_packed(report.get("packed", []), be))
    parts.append(md_e2e(report.get("e2e", [])))
    parts.append(host.markdown(report.get("host", [])))
    if "check" in report:
        parts.append(check.markdown(report["check"], report))
    parts.append(md_notes(report))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(p for p in parts if p is not None))
