"""The report's sentences, generated from the summary of this run only.

Every number in the prose comes from ``summary`` (see :func:`bench.study.stats.summarize`)
and is followed by the runs it was measured on. The literature's figures are the only
fixed numbers here, and they are attributed to their papers with their settings.
"""

import math
import re

from .cells import GATED, LABELS, RELU_FAMILY
from .config import COPY


def num(x, digits=2):
    """A number as the report prints it: 0.0123, 1.2e-25, n/a."""
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def pct(p):
    """'3/8 (38%)' from a stats.proportion dict."""
    if not p or not p["n"]:
        return "no runs"
    return f"{p['k']}/{p['n']} ({100 * p['share']:.0f}%)"


def cite(ids):
    """Run ids, those differing only in seed folded: 'adding-T50-relu-lr0.001-clip-s0..2'."""
    groups = {}
    for rid in ids:
        m = re.fullmatch(r"(.*)-s(\d+)", rid)
        stem, seed = (m.group(1), int(m.group(2))) if m else (rid, None)
        groups.setdefault(stem, []).append(seed)
    parts = []
    for stem, seeds in groups.items():
        seeds = sorted(s for s in seeds if s is not None)
        if not seeds:
            parts.append(stem)
        elif seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 1:
            parts.append(f"{stem}-s{seeds[0]}..{seeds[-1]}")
        else:
            parts.append(f"{stem}-s" + ",".join(map(str, seeds)))
    return ", ".join(f"`{p}`" for p in parts)


def cite_grid(task, T, cells, clip=None):
    """The grid runs of ``cells`` at T, as one pattern."""
    cl = "" if clip is None else ("-clip" if clip else "-noclip")
    return ", ".join(f"`{task}-T{T}-{c}-lr*{cl}-s*`" for c in cells)


def horizon_text(h, Ts):
    """'100', '>= 200' (solved the top rung), '< 25' (failed the first), 'n/a'."""
    if h is None:
        return "n/a"
    if h["T"] is None:
        return f"< {Ts[0]}" if h["first_fail"] is not None else "not measured"
    return f">= {h['T']}" if h["censored"] else str(h["T"])


def horizon_value(h):
    """A number to rank horizons by (0 when none, +0.5 when censored)."""
    if h is None or h["T"] is None:
        return 0.0
    return h["T"] + (0.5 if h["censored"] else 0.0)


def _ladder_steps(cfg, task):
    steps = sorted(set(cfg["ladders"][task]["steps"].values()))
    return f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}-{steps[-1]:,}"


def _horizon_sentence(cfg, summary, task, lead):
    Ts = cfg["ladders"][task]["Ts"]
    hs = summary["horizons"][task]
    order = sorted(hs, key=lambda c: -horizon_value(hs[c]))
    parts, ids = [], []
    for c in order:
        parts.append(f"{LABELS[c]} {horizon_text(hs[c], Ts)}")
        ids += hs[c]["runs"]
    cut = sum(r["cut"] for rows in summary["ladders"][task].values() for r in rows)
    return (f"{lead}, with at most {_ladder_steps(cfg, task)} steps per run, T in "
            f"{{{', '.join(map(str, Ts))}}} and {cfg['seeds']} seed(s), the longest T solved "
            f"by at least half the seeds is: " + "; ".join(parts)
            + (f" ({cut} run(s) of this ladder were cut by the time budget, so a '>=' may "
               "hide a longer horizon)" if cut else "")
            + (f" [runs {cite(ids)}]." if ids else " [no run solved].")), hs


def fmt_steps(x):
    """A step count: '1,250'."""
    return "n/a" if x is None else f"{x:,.0f}"


def short_answer(cfg, summary, meta):
    """At most five sentences answering the seed question, each claim with its number
    and its runs."""
    init = summary["init"]
    out = []
    P = cfg["profile_T"]
    if all(c in init for c in ("tanh", "relu", "irnn", "lstm")) and P > 100:
        out.append(
            f"A ReLU never saturates, yet at initialization the gradient reaching 100 steps "
            f"back is {num(init['relu']['lag_100'])} of the last step's for the default-init "
            f"ReLU-RNN (W_hh's spectral radius {num(init['relu']['spectral_radius'])}: "
            f"repeated multiplication by W_hh, not the derivative, decides) and "
            f"{num(init['tanh']['lag_100'])} for tanh, against {num(init['irnn']['lag_100'])} "
            f"for the IRNN and {num(init['lstm']['lag_100'])} for the LSTM"
            + (f" ({num(init['gru']['lag_100'])} for the GRU)" if "gru" in init else "")
            + f" [init profiles, "
            f"adding loss, T = {P}, median of {cfg['profile_seeds']} seeds: "
            f"`results.json` init_profiles].")
    if "adding" in summary["horizons"]:
        s, _ = _horizon_sentence(cfg, summary, "adding",
                                      "On the adding problem (solved: test MSE < 0.01)")
        out.append(s)
    if "copy" in summary["horizons"]:
        s, _ = _horizon_sentence(
            cfg, summary, "copy", f"On copy memory ({COPY['n_symbols']} symbols of "
            f"{COPY['alphabet']}; solved: cross-entropy below 10% of the memoryless baseline)")
        out.append(s)
    rob = summary["robustness"]
    key = [c for c in ("tanh", "relu", "irnn", "leaky", "lstm", "gru") if c in rob]
    if key:
        T = cfg["grid_T"]
        grid = ", ".join(num(v) for v in cfg["lr_grid"])
        out.append(
            f"Over one learning-rate grid fixed in advance ({grid}, Adam) at T = {T}, the "
            "share of (lr, seed) runs that solved / diverged was "
            + "; ".join(f"{c}: {_share(rob[c]['clip']['solved'])} / "
                        f"{_share(rob[c]['clip']['diverged'])} with clipping"
                        + (f", {_share(rob[c]['noclip']['solved'])} / "
                           f"{_share(rob[c]['noclip']['diverged'])} without"
                           if rob[c]["noclip"]["solved"]["n"] else
                           ", not measured without (time budget)")
                        for c in key)
            + f" [runs {cite_grid('adding', T, key)}].")
    out.append(_verdict(cfg, summary))
    return out[:5]


def _share(p):
    return "n/a" if not p["n"] else f"{100 * p['share']:.0f}%"


def _family_best(hs, family):
    cands = [c for c in family if c in hs]
    if not cands:
        return None, 0.0
    best = max(cands, key=lambda c: horizon_value(hs[c]))
    return best, horizon_value(hs[best])


def _diverged_share(rob, family, clip):
    k = sum(rob[c][clip]["diverged"]["k"] for c in family if c in rob)
    n = sum(rob[c][clip]["diverged"]["n"] for c in family if c in rob)
    return (k / n if n else None), k, n


def _verdict(cfg, summary):
    """The one-sentence answer, chosen by comparing the measured horizons and shares."""
    hs = summary["horizons"].get("adding", {})
    rob = summary["robustness"]
    g, gv = _family_best(hs, GATED)
    r, rv = _family_best(hs, RELU_FAMILY)
    Ts = cfg["ladders"]["adding"]["Ts"] if "adding" in cfg["ladders"] else []
    if g is None or r is None:
        return "The comparison needs both a gated and a ReLU cell; this run lacks one."
    if gv > rv:
        reach = (f"the gated cells reached further on the adding problem ({LABELS[g]} "
                 f"{horizon_text(hs[g], Ts)} against the best ReLU cell, {LABELS[r]}, "
                 f"{horizon_text(hs[r], Ts)})")
    elif gv == rv:
        reach = (f"within this budget the best ReLU cell ({LABELS[r]}) reached as far on the "
                 f"adding problem as the best gated cell ({LABELS[g]}: both "
                 f"{horizon_text(hs[g], Ts)})")
    else:
        reach = (f"in this run the best ReLU cell reached further on the adding problem than "
                 f"the gated cells ({LABELS[r]} {horizon_text(hs[r], Ts)} against {LABELS[g]} "
                 f"{horizon_text(hs[g], Ts)}), which is not what the practitioners' rule "
                 "predicts")
    dr, kr, nr = _diverged_share(rob, RELU_FAMILY, "noclip")
    dg, kg, ng = _diverged_share(rob, GATED, "noclip")
    if dr is None or dg is None:
        stab = ""
    elif dr > dg:
        stab = (f", and without clipping the ReLU cells diverged in {kr}/{nr} grid runs "
                f"against {kg}/{ng} for the gated cells: the ReLU-RNN can learn, but in a "
                "narrower band of learning rates")
    elif dr < dg:
        stab = (f", while without clipping the ReLU cells diverged less often than the gated "
                f"ones ({kr}/{nr} against {kg}/{ng} grid runs)")
    else:
        stab = (f", and without clipping both diverged equally often ({kr}/{nr} and "
                f"{kg}/{ng} grid runs)")
    return ("So the answer measured here: a non-saturating derivative does not keep the "
            "gradient alive (the product of W_hh's does the vanishing, or with identity init "
            f"sits at the edge of exploding); {reach}{stab} [the runs cited above].")


LITERATURE = [
    dict(key="le2015",
         source="Le, Jaitly & Hinton (2015), *A simple way to initialize recurrent networks "
                "of rectified linear units*",
         setting="adding problem, T = 150, 200, 300, 400; 100 hidden units; SGD with "
                 "gradient clipping and a learning rate picked from a small grid; up to "
                 "about 10^6 training sequences",
         result="the IRNN learned the adding problem at every T tried, about as well as the "
                "LSTM; the tanh-RNN did not",
         cell="irnn", claims_T=150, claims="solves"),
    dict(key="arjovsky2016",
         source="Arjovsky, Shah & Bengio (2016), *Unitary evolution recurrent neural "
                "networks*",
         setting="adding problem at T = 100-750 and copy memory with 10 symbols of 8 at "
                 "delays T = 100-500; RMSProp, about 128 hidden units, 10^4+ iterations",
         result="the LSTM learned the adding problem; on copy memory it did not get "
                "clearly below the memoryless baseline at these delays (only the unitary "
                "RNN did)",
         cell="lstm", claims_T=100, claims="solves"),
    dict(key="li2018",
         source="Li, Li, Cook, Zhu & Gao (2018), *Independently recurrent neural network "
                "(IndRNN)*",
         setting="adding problem at T = 100, 500, 1000, 5000; 128 hidden units; Adam",
         result="the IRNN and the LSTM did not learn T = 1000; the IndRNN (a ReLU cell with "
                "a diagonal, bounded recurrent weight) learned up to T = 5000",
         cell="lstm", claims_T=1000, claims="fails"),
]


def literature(cfg, summary):
    """For each paper: its setting and figure, ours beside it, and whether they agree."""
    hs = summary["horizons"].get("adding", {})
    Ts = cfg["ladders"]["adding"]["Ts"] if "adding" in cfg["ladders"] else []
    out = []
    for lit in LITERATURE:
        cells = ("irnn", "lstm") if lit["key"] == "li2018" else (lit["cell"],)
        verdicts = [_compare(lit, c, hs.get(c), Ts, cfg) for c in cells if c in hs]
        out.append(dict(lit, ours="; ".join(v[0] for v in verdicts),
                        agrees=[v[1] for v in verdicts]))
    copy_h = summary["horizons"].get("copy", {}).get("lstm")
    if copy_h is not None:
        cts = cfg["ladders"]["copy"]["Ts"]
        out[1]["ours"] += (f"; copy memory ({COPY['n_symbols']} symbols of {COPY['alphabet']}, "
                           f"an easier task than theirs): the LSTM's horizon here is "
                           f"{horizon_text(copy_h, cts)}")
    return out


def _compare(lit, cell, h, Ts, cfg):
    """(sentence, agrees: True / False / None when not tested) for one cell."""
    name = LABELS[cell]
    if h is None:
        return f"{name}: not run", None
    T0 = lit["claims_T"]
    steps = cfg["ladders"]["adding"]["steps"]
    if lit["claims"] == "solves":
        if h["first_fail"] is not None and h["first_fail"] <= T0:
            return (f"**disagrees**: the {name} failed the adding problem already at T = "
                    f"{h['first_fail']} within {steps[h['first_fail']]:,} steps (their T: "
                    f"{T0} and longer, with far more training)"), False
        if h["T"] is not None and h["T"] >= T0:
            return f"agrees: the {name} solved T = {h['T']}", True
        return (f"{name}: not tested, it solved every T it ran (horizon "
                f"{horizon_text(h, Ts)}) and this mode's ladder stops below T = {T0}"), None
    if h["T"] is not None and h["T"] >= T0:
        return f"**disagrees**: the {name} solved T = {h['T']}", False
    if h["first_fail"] is not None and h["first_fail"] <= T0:
        return (f"agrees: the {name} failed from T = {h['first_fail']} on (horizon "
                f"{horizon_text(h, Ts)})"), True
    return f"{name}: not tested, this mode's ladder stops below T = {T0}", None


def mechanism_sentences(summary):
    """What changed in the gradient profile of the runs at each cell's horizon: one
    sentence per cell that has both its step-0 and last-step profiles."""
    out = []
    for cell, e in summary.get("horizon_mechanism", {}).items():
        parts = []
        for name in ("solved", "unsolved"):
            g = e.get(name)
            if g:
                parts.append(
                    f"in its {g['n']} {name} run(s) the ratio at lag T/2 went from "
                    f"{num(g['init']['lag_T/2'])} at step 0 to {num(g['end']['lag_T/2'])} at "
                    f"step {fmt_steps(g['end']['step'])} and W_hh's spectral radius from "
                    f"{num(g['init']['spectral_radius'])} to {num(g['end']['spectral_radius'])} "
                    f"[{cite(g['runs'])}]")
        if parts:
            out.append(f"{LABELS[cell]} at T = {e['T']} ({e['why']}): " + "; ".join(parts) + ".")
    return out
