"""Smoke tests of the study's pieces (``bench.study_tasks``, ``bench.study``) on tiny
settings: task generators and their baselines, the gradient-lag instrument on cases with
a known answer, reproducibility, and the whole pipeline end to end (seconds)."""

import json
import math

import pytest
import torch

from bench import study, study_tasks as st

from .tolerances import assert_close


def test_adding_generator_and_baseline():
    g = torch.Generator().manual_seed(0)
    T, B = 20, 40000
    x, y = st.adding_batch(T, B, g)
    assert x.shape == (T, B, 2) and y.shape == (B,)
    marks = x[..., 1]
    assert torch.equal(marks.sum(0), torch.full((B,), 2.0))
    assert torch.equal(marks[: T // 2].sum(0), torch.ones(B))  # one marker per half
    assert torch.allclose((x[..., 0] * marks).sum(0), y)
    assert ((x[..., 0] >= 0) & (x[..., 0] <= 1)).all()
    # predict-the-mean baseline: Var(U1 + U2) = 1/6 (not 0.1767)
    assert st.ADDING_BASELINE == pytest.approx(1 / 6)
    mse = torch.mean((y - 1.0) ** 2).item()
    assert abs(mse - 1 / 6) < 0.005, mse
    assert abs(y.mean().item() - 1.0) < 0.01


def test_copy_generator_and_baseline():
    T, B = 7, 64
    x, y = st.copy_batch(T, B, torch.Generator().manual_seed(1))
    L = T + 20
    assert x.shape == (L, B, st.COPY_CLASSES) and y.shape == (L, B)
    seq = x.argmax(-1)
    assert torch.equal(x.sum(-1), torch.ones(L, B))  # one-hot
    assert ((seq[:10] >= 1) & (seq[:10] <= 8)).all()
    assert (seq[10:T + 9] == 0).all() and (seq[T + 9] == 9).all() and (seq[T + 10:] == 0).all()
    assert (y[:T + 10] == 0).all() and torch.equal(y[-10:], seq[:10])
    assert st.copy_baseline(T) == pytest.approx(10 * math.log(8) / (T + 20))
    # the memoryless strategy (blanks right, uniform over the 8 symbols) scores exactly it
    logits = torch.full((L, B, st.COPY_CLASSES), -1e9)
    logits[:T + 10, :, 0] = 0.0
    logits[T + 10:, :, 1:9] = 0.0
    assert st.task_loss("copy", logits, y).item() == pytest.approx(st.copy_baseline(T), rel=1e-6)


def test_solved_thresholds():
    assert st.solved("adding", 0.009, 150) and not st.solved("adding", 0.011, 150)
    b = st.copy_baseline(50)
    assert st.solved("copy", 0.09 * b, 50) and not st.solved("copy", 0.11 * b, 50)
    assert not st.solved("adding", float("nan"), 50)


def test_cells_initialisation():
    torch.manual_seed(0)
    irnn = st.make_recurrent("irnn", 2, 16)
    assert torch.equal(irnn.weight_hh_l0, torch.eye(16))
    assert not irnn.bias_ih_l0.any() and not irnn.bias_hh_l0.any()
    assert irnn.nonlinearity == "relu"
    leaky = st.make_recurrent("leaky", 2, 16)
    assert leaky.nonlinearity == "leaky_relu" and torch.equal(leaky.weight_hh_l0, torch.eye(16))
    lstm = st.make_recurrent("lstm", 2, 16)
    forget = lstm.bias_ih_l0[16:32] + lstm.bias_hh_l0[16:32]
    assert torch.equal(forget, torch.ones(16))
    assert st.make_recurrent("tanh", 2, 16).nonlinearity == "tanh"
    assert st.make_recurrent("relu", 2, 16).nonlinearity == "relu"


def test_recurrent_spectrum_known():
    m = st.make_recurrent("relu", 2, 3)
    with torch.no_grad():
        m.weight_hh_l0.copy_(torch.tensor([[0.5, 2.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, -0.8]]))
    s = st.recurrent_spectrum(m)
    assert s["spectral_radius"] == pytest.approx(0.8)  # triangular: eigenvalues on the diagonal
    assert s["sigma_max"] == pytest.approx(torch.linalg.svdvals(m.weight_hh_l0.double())[0].item())
    lstm = st.make_recurrent("lstm", 2, 4)
    s = st.recurrent_spectrum(lstm)
    assert set(s["spectral_radius_per_gate"]) == set("ifgo")
    assert s["spectral_radius"] == max(s["spectral_radius_per_gate"].values())


@pytest.mark.parametrize("a", [1.0, 0.9])
def test_grad_profile_known_case(a):
    """ReLU with W_hh = a I and every unit active: the gradient at lag k is a^k times
    the one at h_T, exactly (also at lag T: the initial state)."""
    T, H = 30, 6
    torch.manual_seed(0)
    model = st.SeqModel("irnn", 2, H, 1, True)
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(a * torch.eye(H))
        model.rnn.weight_ih_l0.fill_(0.1)
        model.rnn.bias_ih_l0.fill_(0.5)  # every pre-activation positive
    x, y = st.adding_batch(T, 4, torch.Generator().manual_seed(3))
    prof = st.grad_profile(model, x, y)
    assert prof.dtype == torch.float64 and prof.shape == (T + 1,)
    a = torch.tensor(a, dtype=torch.float32).item()  # the model is built in float32
    assert_close("a^k", prof, a ** torch.arange(T + 1, dtype=torch.float64))
    summ = st.lag_summary(prof, [10, 100, T])
    assert set(summ) == {"10", "T"}  # lag 100 does not exist at T = 30
    assert summ["10"] == pytest.approx(a ** 10) and summ["T"] == pytest.approx(a ** T)
    assert model.rnn.weight_hh_l0.grad is None  # the profile works on a copy


def test_lag_ratios():
    norms = torch.tensor([8.0, 4.0, 2.0, 1.0])  # positions 0..3, h_T = position 3
    assert st.lag_ratios(norms, [0, 1, 3, 10]) == {0: 1.0, 1: 2.0, 3: 8.0}


def test_grad_profile_vanishes_for_default_tanh():
    torch.manual_seed(0)
    model = st.SeqModel("tanh", 2, 32, 1, True)
    x, y = st.adding_batch(120, 8, torch.Generator().manual_seed(0))
    prof = st.grad_profile(model, x, y)
    assert prof[100] < 1e-6 < prof[1]


def test_train_run_reproducible():
    kw = dict(task="adding", cell="relu", T=10, clip=True, seed=3, steps=6, batch=4, hidden=8,
              lr=1e-3, eval_every=3, test_size=16, profile_steps=(0, 6))
    a, b = st.train_run(**kw), st.train_run(**kw)
    assert a["curve"] == b["curve"] and a["profiles"] == b["profiles"]
    assert [s for s, _ in a["curve"]] == [0, 3, 6]
    assert [p["step"] for p in a["profiles"]] == [0, 6]
    c = st.train_run(**dict(kw, seed=4))
    assert c["curve"] != a["curve"]
    copy = st.train_run(**dict(kw, task="copy", cell="lstm", T=3))
    assert copy["baseline"] == pytest.approx(st.copy_baseline(3)) and copy["profiles"] == []


def test_study_pipeline_smoke(tmp_path):
    out = tmp_path / "study"
    assert study.main(["--preset", "smoke", "--workers", "1", "--out", str(out)]) == 0
    for name in ("report.md", "results.json", "grad_vs_lag_init.png",
                 "grad_vs_lag_training.png", "learning_curves_adding.png",
                 "learning_curves_copy.png"):
        assert (out / name).exists(), name
    data = json.loads((out / "results.json").read_text())
    assert set(data["init_profiles"]) == set(st.CELLS)
    assert not data["summary"]["errors"]
    assert len(data["runs"]) == 2 * 5 * 2 * 2  # tasks x cells x clip x seeds
    report = (out / "report.md").read_text()
    for heading in ("Gradient norm vs lag at initialization", "adding: solved rate",
                    "copy: solved rate", "What the numbers say", "The literature",
                    "rnnfast vs torch.nn while training"):
        assert heading in report, heading
    # the report can be rebuilt from the JSON alone
    (out / "report.md").unlink()
    assert study.main(["--report-only", str(out)]) == 0
    assert (out / "report.md").read_text() == report


def test_time_budget_skips_and_truncates():
    """A spent time budget: the run is recorded as skipped, not as a 0-step result."""
    import time
    r = st.train_run("adding", "relu", 10, True, 0, 5, 4, 8, 1e-3, 5, 16,
                     deadline=time.time() - 1)
    assert "skipped" in r
    rows = __import__("bench.study_report", fromlist=["x"]).summarize(
        [r], {c: [] for c in st.CELLS}, dict(adding_T=(10,), copy_T=()))
    assert rows["skipped_runs"] == 1
