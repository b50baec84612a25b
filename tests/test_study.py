"""The study's pieces (``bench.study``) on tiny settings: tasks and baselines, the
solved / diverged classification, the gradient-lag instrument on a case with a known
answer, the statistics and the prose on synthetic results, and the CLI end to end on
the 'micro' mode (seconds)."""

import json
import math
import re

import pytest
import torch

from bench.study import cells, cli, prose, stats, tasks, telemetry, train
from bench.study.config import mode_config

# ---------------------------------------------------------------- tasks


def test_adding_batch_and_baseline():
    T, B = 20, 40000
    x, y = tasks.adding_batch(T, B, torch.Generator().manual_seed(0))
    assert x.shape == (T, B, 2) and y.shape == (B,)
    marks = x[..., 1]
    assert torch.equal(marks[: T // 2].sum(0), torch.ones(B))  # one marker per half
    assert torch.equal(marks[T // 2:].sum(0), torch.ones(B))
    assert torch.allclose((x[..., 0] * marks).sum(0), y)
    assert abs(torch.mean((y - 1.0) ** 2).item() - 1 / 6) < 0.005  # the 1/6 baseline
    with pytest.raises(ValueError, match="T >= 2"):
        tasks.adding_batch(1, 4, torch.Generator())


@pytest.mark.parametrize("T,n,K", [(1, 1, 2), (7, 3, 4), (20, 10, 8)])
def test_copy_batch_and_baseline(T, n, K):
    task = tasks.copy_task(n, K)
    x, y = task.batch(T, 64, torch.Generator().manual_seed(1))
    L = T + 2 * n
    assert task.seq_len(T) == L and x.shape == (L, 64, K + 2) and y.shape == (L, 64)
    seq = x.argmax(-1)
    assert torch.equal(x.sum(-1), torch.ones(L, 64))
    assert ((seq[:n] >= 1) & (seq[:n] <= K)).all() and (seq[n + T - 1] == K + 1).all()
    assert (y[:T + n] == 0).all() and torch.equal(y[-n:], seq[:n])
    # the memoryless strategy (blanks right, symbols uniform) scores the baseline exactly
    logits = torch.full((L, 64, K + 2), -1e9)
    logits[:T + n, :, 0] = 0.0
    logits[T + n:, :, 1:K + 1] = 0.0
    assert task.loss(logits, y).item() == pytest.approx(task.baseline(T), rel=1e-6)
    assert task.baseline(T) == pytest.approx(n * math.log(K) / L)


def test_solved_and_diverged_classification():
    add, cp = tasks.adding_task(), tasks.copy_task(3, 4)
    assert tasks.is_solved(add, 0.0099, 50) and not tasks.is_solved(add, 0.0101, 50)
    assert not tasks.is_solved(add, float("nan"), 50)
    assert tasks.is_diverged(add, 10 / 6 + 1e-6, 50) and not tasks.is_diverged(add, 1.6, 50)
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert tasks.is_diverged(add, bad, 50) and tasks.is_diverged(cp, bad, 50)
    b = cp.baseline(20)
    assert tasks.is_solved(cp, 0.099 * b, 20) and not tasks.is_solved(cp, 0.101 * b, 20)
    # a run that starts above 10x the baseline diverges only at 10x its own start
    assert tasks.is_diverged(cp, 1.8, 20) and not tasks.is_diverged(cp, 1.8, 20, initial=1.79)
    assert tasks.is_diverged(cp, 17.91, 20, initial=1.79)
    assert not tasks.is_diverged(add, 2.0, 50, initial=0.5)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make_task("parity")


# ---------------------------------------------------------------- cells, telemetry


def test_cells():
    assert cells.available_cells()[-1] == "gru" and len(cells.available_cells()) == 6
    torch.manual_seed(0)
    irnn = cells.make_recurrent("irnn", 2, 16)
    assert torch.equal(irnn.weight_hh_l0, torch.eye(16)) and irnn.nonlinearity == "relu"
    assert not irnn.bias_ih_l0.any() and not irnn.bias_hh_l0.any()
    leaky = cells.make_recurrent("leaky", 2, 16)
    assert leaky.nonlinearity == "leaky_relu" and leaky.negative_slope == cells.LEAKY_SLOPE
    lstm = cells.make_recurrent("lstm", 2, 16)
    assert torch.equal(lstm.bias_ih_l0[16:32] + lstm.bias_hh_l0[16:32], torch.ones(16))
    assert cells.recurrent_spectrum(irnn)["spectral_radius"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown cell"):
        cells.make_recurrent("elman", 2, 4)


@pytest.mark.parametrize("a", [1.0, 0.9])
def test_grad_profile_known_case(a):
    """ReLU, W_hh = a I, every unit active: the ratio at lag k is exactly a^k."""
    T, H = 30, 6
    torch.manual_seed(0)
    model = cells.SeqModel("irnn", 2, H, 1, True)
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(a * torch.eye(H))
        model.rnn.weight_ih_l0.fill_(0.1)
        model.rnn.bias_ih_l0.fill_(0.5)
    x, y = tasks.adding_batch(T, 4, torch.Generator().manual_seed(3))
    prof = telemetry.grad_profile(model, tasks.adding_task(), x, y)
    a32 = torch.tensor(a, dtype=torch.float32).item()
    assert prof["lags"] == telemetry.stored_lags(T) and prof["lags"][-1] == T
    for k, r in zip(prof["lags"], prof["ratio"]):
        assert r == pytest.approx(a32 ** k, rel=1e-10), k
    assert telemetry.ratio_at(prof, "T") == pytest.approx(a32 ** T, rel=1e-10)
    assert telemetry.ratio_at(prof, 10 ** 6) is None
    assert model.rnn.weight_hh_l0.grad is None


def test_train_run_reproducible_and_classified():
    kw = dict(task="adding", cell="relu", T=10, lr=1e-3, clip=True, seed=3, steps=6,
              batch=4, hidden=8, eval_every=3, test_size=16)
    a, b = train.train_run(**kw), train.train_run(**kw)
    assert a["curve"] == b["curve"] and a["profiles"] == b["profiles"]
    assert a["outcome"] == "unsolved" and [s for s, _ in a["curve"]] == [0, 3, 6]
    assert a["id"] == "adding-T10-relu-lr0.001-clip-s3" and len(a["profiles"]) == 2
    assert train.train_run(**dict(kw, seed=4))["curve"] != a["curve"]
    # an absurd learning rate without clipping: stopped as diverged, not trained on
    d = train.train_run(**dict(kw, lr=1e4, clip=False, steps=30))
    assert d["outcome"] == "diverged" and d["stop_step"] < 30
    s = train.train_run(**dict(kw, deadline=0.0))
    assert s["outcome"] == "skipped"


# ---------------------------------------------------------------- stats and prose


def _run(task, cell, T, lr, clip, seed, outcome, stage="ladder", step=None, loss=None):
    lags = telemetry.stored_lags(T)
    prof = lambda s, q: {"step": s, "spectral_radius": q, "sigma_max": q,  # noqa: E731
                         "lags": lags, "ratio": [q ** k for k in lags]}
    stop = step or 100
    return {"id": train.run_id(task, cell, T, lr, clip, seed), "task": task, "cell": cell,
            "T": T, "lr": lr, "clip": clip, "seed": seed, "steps": 100, "stage": stage,
            "outcome": outcome, "stop_step": stop,
            "solved_step": stop if outcome == "solved" else None,
            "final_loss": loss if loss is not None else (0.005 if outcome == "solved" else 0.16),
            "profiles": [prof(0, 0.5), prof(stop, 0.99)], "seconds": 1.0}


def _synthetic(horizons, diverge_noclip):
    """Runs in which each cell solves adding and copy up to horizons[cell] and, in the
    grid, diverges without clipping in diverge_noclip[cell] of its (lr, seed) runs."""
    cfg = mode_config("micro")
    cfg.update(lr_grid=(1e-3, 1e-2), grid_T=4, seeds=2, grid_steps=100,
               ladders={"adding": dict(Ts=(4, 8, 16), steps={4: 100, 8: 100, 16: 100}),
                        "copy": dict(Ts=(2, 4), steps={2: 100, 4: 100})})
    runs = []
    for cell, h in horizons.items():
        k = 0
        for lr in cfg["lr_grid"]:
            for clip in (True, False):
                for seed in range(2):
                    if not clip and k < diverge_noclip[cell]:
                        out, k = "diverged", k + 1
                    else:
                        out = "solved" if (lr == 1e-2 and h >= 4) else "unsolved"
                    runs.append(_run("adding", cell, 4, lr, clip, seed, out, "grid", 50,
                                     loss=0.1 if lr == 1e-2 and out == "unsolved" else None))
        for task, Ts in (("adding", (8, 16)), ("copy", (2, 4))):
            for T in Ts:
                for seed in range(2):
                    runs.append(_run(task, cell, T, 1e-2, True, seed,
                                     "solved" if T <= h else "unsolved", step=70))
                if T > h:
                    break
    profiles = {c: [{"seed": 0, "spectral_radius": 0.6, "sigma_max": 1.0,
                     "lags": telemetry.stored_lags(12), "ratio": [0.5 ** k for k in
                                                                  telemetry.stored_lags(12)]}]
                for c in horizons}
    return cfg, profiles, runs


def test_proportion_and_choose_lr():
    p = stats.proportion(3, 4)
    assert p["share"] == 0.75 and 0 < p["ci"][0] < 0.75 < p["ci"][1] < 1
    assert stats.proportion(0, 0)["ci"] is None
    runs = [_run("adding", "relu", 4, 1e-3, True, s, "solved", step=90) for s in range(2)]
    runs += [_run("adding", "relu", 4, 1e-2, True, s, "solved", step=40) for s in range(2)]
    assert stats.choose_lr(runs, (1e-3, 1e-2))[0] == 1e-2  # same count, fewer steps
    runs[2]["outcome"] = "diverged"
    assert stats.choose_lr(runs, (1e-3, 1e-2))[0] == 1e-3  # more runs solved


def test_ladder_horizon_and_robustness():
    cfg, profiles, runs = _synthetic({"relu": 8, "lstm": 16, "tanh": 0, "irnn": 4},
                                     {"relu": 3, "lstm": 0, "tanh": 1, "irnn": 4})
    s = stats.summarize(cfg, ("tanh", "relu", "irnn", "lstm"), profiles, runs)
    h = s["horizons"]["adding"]
    assert h["relu"]["T"] == 8 and h["relu"]["first_fail"] == 16 and not h["relu"]["censored"]
    assert h["lstm"]["T"] == 16 and h["lstm"]["censored"]
    assert h["tanh"]["T"] is None and h["tanh"]["first_fail"] == 4
    assert h["irnn"]["T"] == 4 and h["irnn"]["first_fail"] == 8
    lad = {r["T"]: r for r in s["ladders"]["adding"]["irnn"]}
    assert lad[16]["status"] == "not run: no seed solved T = 8"
    rb = s["robustness"]["relu"]
    assert rb["noclip"]["diverged"]["k"] == 3 and rb["noclip"]["diverged"]["n"] == 4
    assert rb["clip"]["diverged"]["k"] == 0 and rb["clip"]["solved"]["k"] == 2
    assert s["lrs"]["relu"] == 1e-2 and s["horizon_mechanism"]["lstm"]["T"] == 16


def test_prose_follows_the_results():
    kw = dict(diverge_noclip={"relu": 3, "lstm": 0, "tanh": 1, "irnn": 4})
    cfg, profiles, runs = _synthetic({"relu": 8, "lstm": 16, "tanh": 0, "irnn": 4}, **kw)
    s = stats.summarize(cfg, ("tanh", "relu", "irnn", "lstm"), profiles, runs)
    meta = {"mode": "micro"}
    answer = prose.short_answer(cfg, s, meta)
    assert 1 <= len(answer) <= 5
    for sentence in answer:  # each claim carries its runs
        assert re.search(r"`(adding|copy)-T\d+-", sentence) or \
            "[the runs cited above]" in sentence, sentence
    text = " ".join(answer)
    assert "LSTM (forget bias 1) >= 16" in text and "ReLU-RNN (default init) 8" in text
    assert "tanh-RNN < 4" in text and "tanh-RNN < 2" in text
    assert "gated cells reached further" in text and "diverged in 7/8 grid runs against 0/4" in text
    assert "`adding-T8-relu-lr0.01-clip-s0..1`" in text
    # other results, other words: the text is generated, not written
    cfg2, profiles2, runs2 = _synthetic({"relu": 16, "lstm": 8, "tanh": 0, "irnn": 4}, **kw)
    s2 = stats.summarize(cfg2, ("tanh", "relu", "irnn", "lstm"), profiles2, runs2)
    text2 = " ".join(prose.short_answer(cfg2, s2, meta))
    assert "best ReLU cell reached further" in text2 and "not what the practitioners" in text2
    # the literature: the IRNN failing at T = 8 disagrees with Le et al.'s T = 150
    lit = {e["key"]: e for e in prose.literature(cfg, s)}
    assert lit["le2015"]["agrees"] == [False] and "**disagrees**" in lit["le2015"]["ours"]
    assert lit["li2018"]["agrees"] == [True, None] or lit["li2018"]["agrees"][0] is True
    assert prose.cite(["a-s0", "a-s1", "a-s2", "b-s1"]) == "`a-s0..2`, `b-s1`"
    assert re.fullmatch(r"\d\.\d+e-\d+", prose.num(1.234e-25))


def test_cli_micro_end_to_end(tmp_path):
    out = tmp_path / "study"
    argv = ["--mode", "micro", "--workers", "1", "--cells", "relu,lstm", "--out", str(out)]
    assert cli.main(argv) == 0
    for name in ("report.md", "results.json", "horizon.png", "gradients.png"):
        assert (out / name).exists(), name
    data = json.loads((out / "results.json").read_text())
    assert data["cells"] == ["relu", "lstm"] and not data["summary"]["errors"]
    grid = [r for r in data["runs"] if r["stage"] == "grid"]
    assert len(grid) == 2 * 2 * 2 * 1  # cells x lrs x clip x seeds
    report = (out / "report.md").read_text()
    for heading in ("## Short answer", "![solved fraction vs T](horizon.png)",
                    "## Horizon: adding", "## Horizon: copy", "## Robustness",
                    "## Mechanism", "## Beside the literature", "## Where the time went"):
        assert heading in report, heading
    assert report.index("## Short answer") < report.index("horizon.png") < report.index("## Setup")
    short = report.split("## Setup")[0]
    (out / "report.md").unlink()
    assert cli.main(["--report-only", str(out)]) == 0
    assert (out / "report.md").read_text().split("## Setup")[0] == short
    with pytest.raises(SystemExit):
        cli.main(["--mode", "micro", "--cells", "elman", "--out", str(out)])


def test_cli_report_only_reads_the_results_once_and_takes_the_current_folder(
        tmp_path, monkeypatch):
    """--report-only DIR reads DIR/results.json once (parse checks it and keeps it), and
    an empty DIR is the current folder: it ran the whole study before."""
    (tmp_path / "results.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    reads, finished = [], []
    monkeypatch.setattr(cli.store, "read", lambda out: reads.append(out) or {"sentinel": 1})
    monkeypatch.setattr(cli, "finish", lambda out, data: finished.append((out, data)) or "r")
    monkeypatch.setattr(cli, "mode_config", lambda mode: pytest.fail("ran the study"))
    assert cli.main(["--report-only", ""]) == 0
    assert reads == [""] and finished == [("", {"sentinel": 1})]


@pytest.mark.parametrize("mode", ["micro", "quick", "standard", "full"])
def test_modes_are_consistent(mode):
    """Every mode plans: the adding ladder's rung at grid_T is the grid itself, every
    ladder T has a step budget, and the first jobs are the clipped grid runs."""
    from bench.study.runner import Plan
    cfg = mode_config(mode)
    plan = Plan(cfg, cells.available_cells(), "cpu", None)
    n = len(cells.available_cells()) * len(cfg["lr_grid"]) * 2 * cfg["seeds"]
    assert len(plan.queue) == n
    assert all(set(lad["Ts"]) == set(lad["steps"]) for lad in cfg["ladders"].values())
    first = [plan.next_job() for _ in range(n // 2)]
    assert all(j["stage"] == "grid" and j["clip"] for j in first)
    assert all(j["stage"] == "grid" and not j["clip"] for j in iter(plan.next_job, None))
    with pytest.raises(KeyError, match="unknown mode"):
        mode_config("huge")
