"""The modules across processes: they train under DistributedDataParallel (gloo, CPU,
2 processes), whose averaged gradients equal a single-process run on the concatenated
batch; and Hogwild-style, shared with ``share_memory()`` and trained in a child started
with 'spawn' (README: with 'fork', a child that runs the kernels after its parent did is
stopped by numba's OpenMP layer)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rnnfast

from .tolerances import assert_close


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = rnnfast.LSTM(3, 6, num_layers=2, bidirectional=True, backend="numba")
        self.gru = rnnfast.GRU(12, 5, num_layers=2, bidirectional=True, backend="numba")
        self.rnn = rnnfast.RNN(10, 4, nonlinearity="relu", backend="numba")

    def forward(self, x, target):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        y, _ = self.rnn(y)
        return ((y - target) ** 2).mean()


def _data():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(7, 8, 3, generator=g, dtype=torch.float64),
            torch.randn(7, 8, 4, generator=g, dtype=torch.float64))


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        ddp = torch.nn.parallel.DistributedDataParallel(_Model().double())
        x, target = _data()
        shard = slice(rank * 4, rank * 4 + 4)  # time-major: the batch is dim 1
        ddp(x[:, shard], target[:, shard]).backward()
        grads = {n: p.grad for n, p in ddp.module.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
        # Leave without Python's teardown: a rank that dropped the DDP module (its
        # Reducer holds the last reference to the gloo process group) while a gloo
        # thread was still releasing the work's thread-local state deadlocked in
        # ~ProcessGroupGloo (it waits on that thread, which waits for the GIL): about
        # one run in five hung the suite on 2026-12-07 (py-spy: pthread_mutex_lock in
        # ~ProcessGroupGloo under Reducer's dealloc). Both ranks pass the barrier
        # first, so no collective is left pending.
        dist.barrier()
        os._exit(0)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gradients_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    model = _Model().double()
    x, target = _data()
    model(x, target).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        assert grads.keys() == dict(model.named_parameters()).keys()
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-10, atol=1e-12)


def _hogwild_data():
    return torch.randn(7, 3, 4, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def _sgd_step(m):
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    y, _ = m(_hogwild_data())
    y.square().sum().backward()
    opt.step()


def _hogwild_child(models):
    for m in models:
        _sgd_step(m)


@pytest.mark.slow
def test_hogwild_spawn_child_steps_shared_parameters():
    """share_memory() modules that have run in the parent, one SGD step in a child
    started with 'spawn' (torch.multiprocessing's Hogwild): the parent's parameters then
    equal torch.nn's after the same step, for every cell."""
    ours, twins = [], []
    for kind in ("LSTM", "GRU", "RNN"):
        torch.manual_seed(0)
        m = getattr(rnnfast, kind)(4, 6, num_layers=2, backend="numba").double()
        twin = getattr(torch.nn, kind)(4, 6, num_layers=2).double()
        twin.load_state_dict(m.state_dict())
        m(_hogwild_data())[0].sum().backward()  # the parent runs the kernels first
        m.zero_grad()
        ours.append(m.share_memory())
        twins.append(twin)
    child = mp.get_context("spawn").Process(target=_hogwild_child, args=(ours,))
    child.start()
    child.join(300)
    assert child.exitcode == 0
    for m, twin in zip(ours, twins):
        _sgd_step(twin)
        for (name, p), q in zip(m.named_parameters(), twin.parameters()):
            assert_close(f"{type(m).__name__}.{name}", p, q)
