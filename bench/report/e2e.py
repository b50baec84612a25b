"""End-to-end: training steps of PyTorch's example word-level language model
(``examples/word_language_model``) with torch.nn's recurrent stack and with rnnfast's.

The model and the step are the example's: embedding (emsize 200) -> dropout 0.2 ->
2-layer recurrent stack (hidden 200, dropout 0.2 between layers) -> dropout 0.2 ->
Linear decoder to the vocabulary (10,000 tokens) -> log-softmax; loss NLL (the
cross-entropy); per step ``model.zero_grad()``, the hidden state of the previous step
carried over and detached (the example's ``repackage_hidden``), forward over bptt = 35
steps of batch 20, backward, ``clip_grad_norm_(0.25)``, SGD ``p -= lr * p.grad`` (lr 20).
Weights: the example's init (embedding and decoder U(-0.1, 0.1), decoder bias 0; the
recurrent stack torch.nn's default), drawn once and loaded into both models.

Data: synthetic token ids, uniform over the vocabulary from a fixed seed (no download);
the step's cost does not depend on which ids they are. Both models see the same
batches in the same order, and each step reseeds torch's RNG, so both draw the same
dropout masks where they draw them alike (the mean losses agree to a few parts in a
thousand; they are reported).

Timing: the models alternate step by step (the order rotates each round, with a short
pause before each step, as in ``common.time_interleaved``); warm-up steps are dropped;
medians over the remaining steps. Inside each step the recurrent module is timed by
hooks, with no extra calls: its forward between a forward pre-hook and a forward hook;
its backward from the moment the gradient w.r.t. its output arrives (a tensor hook on
the output) to the last of the gradient w.r.t. its input (a tensor hook on the
embedding it received) and the accumulation of each of its parameters' gradients
(post-accumulate-grad hooks). CPU autograd runs one node at a time on the calling
thread, so that window holds the recurrent stack's backward (its inter-layer dropout
included) and nothing else.
"""

import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

import rnnfast

from . import common
from .common import CELLS

# cells the example offers (LSTM, GRU, RNN_TANH, RNN_RELU), in report order
E2E_CELLS = ("lstm", "rnn_relu", "rnn_tanh", "gru")


@dataclass(frozen=True)
class Config:
    """The example's defaults, and the steps timed."""

    ntoken: int = 10000
    emsize: int = 200
    nhid: int = 200
    nlayers: int = 2
    dropout: float = 0.2
    bptt: int = 35
    batch: int = 20
    lr: float = 20.0
    clip: float = 0.25
    warmup: int = 3
    steps: int = 30

    def label(self):
        return (f"vocab {self.ntoken}, emb {self.emsize}, H {self.nhid}, "
                f"{self.nlayers} layers, T {self.bptt}, B {self.batch}")


FULL = Config()
# The recurrent stack at the example's shape; a small vocabulary keeps the decoder cheap.
QUICK = replace(FULL, ntoken=1000, warmup=2, steps=6)


def default_config(quick=False):
    return QUICK if quick else FULL


def default_cells(quick=False):
    return ("lstm", "rnn_relu") if quick else E2E_CELLS


class WordLM(nn.Module):
    """The example's ``RNNModel`` (without weight tying) around a given recurrent stack.

    ``forward(input [T, B] int64, hidden) -> (log-probabilities [T*B, ntoken], hidden)``.
    """

    def __init__(self, rnn, ntoken, emsize, dropout):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, emsize)
        self.rnn = rnn
        self.decoder = nn.Linear(rnn.hidden_size, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden


def _stack(cell, cfg, backend=None):
    """torch.nn's recurrent stack (backend None) or rnnfast's on ``backend``."""
    kind, nl = CELLS[cell]
    args = (cfg.emsize, cfg.nhid, cfg.nlayers)
    kw = {"dropout": cfg.dropout}
    if backend is not None:
        kw["backend"] = backend
    lib = nn if backend is None else rnnfast
    if kind == "lstm":
        return lib.LSTM(*args, **kw)
    if kind == "gru":
        return lib.GRU(*args, **kw)
    return lib.RNN(*args, nonlinearity=nl, **kw)


def make_models(cell, cfg, device, backends, seed=0):
    """name -> WordLM: "torch.nn" and "rnnfast[<be>]" for each backend, all with the
    weights of the torch.nn model drawn from ``seed``."""
    if CELLS[cell][1] == "leaky_relu":
        raise ValueError("the word LM compares with torch.nn, which has no leaky-ReLU RNN")
    torch.manual_seed(seed)
    ref = WordLM(_stack(cell, cfg), cfg.ntoken, cfg.emsize, cfg.dropout).to(device)
    models = {"torch.nn": ref}
    for be in backends:
        m = WordLM(_stack(cell, cfg, be), cfg.ntoken, cfg.emsize, cfg.dropout).to(device)
        m.load_state_dict(ref.state_dict())
        models[f"rnnfast[{be}]"] = m
    for m in models.values():
        m.train()
    return models


class RecurrentTimer:
    """Forward and backward seconds of ``rnn`` inside each step (see the module
    docstring); :meth:`reset` before a step, :meth:`read` after its backward."""

    def __init__(self, rnn, device):
        self.device = device
        self.reset()
        rnn.register_forward_pre_hook(self._fwd_start)
        rnn.register_forward_hook(self._fwd_end)
        for p in rnn.parameters():
            p.register_post_accumulate_grad_hook(self._param_done)

    def reset(self):
        self.fwd0 = self.fwd1 = self.bwd0 = None
        self.bwd_ends = []

    def _now(self):
        common.sync(self.device)
        return time.perf_counter()

    def _fwd_start(self, module, args):
        self.fwd0 = self._now()

    def _fwd_end(self, module, args, output):
        self.fwd1 = self._now()
        y, x = output[0], args[0]
        if y.requires_grad:
            y.register_hook(self._bwd_start)
        if x.requires_grad:
            x.register_hook(self._input_done)

    def _bwd_start(self, grad):
        self.bwd0 = self._now()

    def _input_done(self, grad):
        self.bwd_ends.append(self._now())

    def _param_done(self, param):
        self.bwd_ends.append(self._now())

    def read(self):
        if self.fwd0 is None or self.bwd0 is None or not self.bwd_ends:
            raise RuntimeError("the recurrent stack's hooks did not all fire in this step")
        return self.fwd1 - self.fwd0, max(self.bwd_ends) - self.bwd0


def _detach(h):
    return tuple(v.detach() for v in h) if isinstance(h, tuple) else h.detach()


class Trainer:
    """One model's training state: the model, its hook timer, its carried hidden state."""

    def __init__(self, model, cell, cfg, device):
        self.model, self.cfg, self.device = model, cfg, device
        self.timer = RecurrentTimer(model.rnn, device)
        z = torch.zeros(cfg.nlayers, cfg.batch, cfg.nhid, device=device)
        self.hidden = (z, z.clone()) if CELLS[cell][0] == "lstm" else z

    def step(self, data, targets, seed):
        """One training step of the example; returns its seconds, the recurrent
        stack's forward and backward seconds, and the loss."""
        m, cfg = self.model, self.cfg
        torch.manual_seed(seed)
        self.timer.reset()
        common.sync(self.device)
        t0 = time.perf_counter()
        m.zero_grad()
        self.hidden = _detach(self.hidden)
        output, self.hidden = m(data, self.hidden)
        loss = F.nll_loss(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.clip)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(p.grad, alpha=-cfg.lr)
        common.sync(self.device)
        step_s = time.perf_counter() - t0
        fwd_s, bwd_s = self.timer.read()
        return {"step_s": step_s, "rnn_fwd_s": fwd_s, "rnn_bwd_s": bwd_s,
                "loss": loss.item()}


def batches(cfg, n, device, seed=1):
    """n (data [T, B], targets [T*B]) pairs cut from one synthetic token stream, as the
    example's ``get_batch`` cuts its batchified corpus."""
    gen = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, cfg.ntoken, (n * cfg.bptt + 1, cfg.batch), generator=gen)
    stream = stream.to(device)
    return [(stream[i * cfg.bptt:(i + 1) * cfg.bptt],
             stream[i * cfg.bptt + 1:(i + 1) * cfg.bptt + 1].reshape(-1)) for i in range(n)]


def _median(xs):
    return statistics.median(xs)


def run_case(cell, cfg, device, backends, settle_s=0.005):
    """Train every model of ``make_models`` for ``cfg.warmup + cfg.steps`` interleaved
    steps. Returns a JSON-ready dict: per implementation the medians (``step_s``,
    ``rnn_fwd_s``, ``rnn_bwd_s``, ``rnn_fwdbwd_s``, ``rest_s`` = step minus recurrent,
    ``rnn_share``) and mean loss; per backend the ratios torch.nn / rnnfast of the step
    (``step_ratio``) and of the recurrent forward+backward (``rnn_ratio``), and
    ``step_allowed``: the step ratio the measured recurrent ratio allows if the rest of
    the step costs what torch.nn's does (Amdahl: 1 / (1 - s + s / rnn_ratio), s =
    torch.nn's recurrent share)."""
    t_start = time.perf_counter()
    models = make_models(cell, cfg, device, backends)
    trainers = {n: Trainer(m, cell, cfg, device) for n, m in models.items()}
    names = list(trainers)
    data = batches(cfg, cfg.warmup + cfg.steps, device)
    samples = {n: [] for n in names}
    for r, (x, y) in enumerate(data):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            time.sleep(settle_s)
            s = trainers[n].step(x, y, seed=1000 + r)
            if r >= cfg.warmup:
                samples[n].append(s)
    impls = {}
    for n, ss in samples.items():
        fb = [s["rnn_fwd_s"] + s["rnn_bwd_s"] for s in ss]
        med = {k: _median([s[k] for s in ss]) for k in ("step_s", "rnn_fwd_s", "rnn_bwd_s")}
        med.update(rnn_fwdbwd_s=_median(fb),
                   rest_s=_median([s["step_s"] - f for s, f in zip(ss, fb)]),
                   loss=statistics.fmean(s["loss"] for s in ss), steps=len(ss))
        med["rnn_share"] = med["rnn_fwdbwd_s"] / med["step_s"]
        impls[n] = med
    ref = impls["torch.nn"]
    out = {"cell": cell, "config": asdict(cfg), "device": str(device), "impls": impls,
           "ratios": {}}
    for be in backends:
        mine = impls[f"rnnfast[{be}]"]
        rnn_ratio = ref["rnn_fwdbwd_s"] / mine["rnn_fwdbwd_s"]
        s = ref["rnn_share"]
        out["ratios"][be] = {
            "step_ratio": ref["step_s"] / mine["step_s"],
            "rnn_ratio": rnn_ratio,
            "rnn_fwd_ratio": ref["rnn_fwd_s"] / mine["rnn_fwd_s"],
            "rnn_bwd_ratio": ref["rnn_bwd_s"] / mine["rnn_bwd_s"],
            "step_allowed": 1.0 / (1.0 - s + s / rnn_ratio),
            "loss_rel_diff": abs(mine["loss"] - ref["loss"]) / abs(ref["loss"]),
        }
    out["wall_s"] = time.perf_counter() - t_start
    return out
