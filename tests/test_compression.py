"""Gradient compression between DDP ranks (trainer.gradient_compression), checked on a real
2-process gloo group with the product's hooks: top-k at 1% sends at least 10x fewer bytes, what
a rank did not send is exactly what it keeps for later (error feedback), replicas stay
identical, and a run restarted from its weights and residuals continues exactly; PowerSGD's
bytes are counted as it sends them. The settings that cannot work are refused. The Lightning
run (logged bytes, residuals in the checkpoint, exact resume mid-epoch) is in test_ddp.py."""

from __future__ import annotations

import math
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipeline.errors import UserError
from pipeline.run.compression.powersgd import PowerSGD, powersgd_hook
from pipeline.run.compression.topk import TopK, topk_hook

# The spawned ranks import this module: what only the config tests need is imported there.
STEPS = 6
RATIO = 0.01


class Net(nn.Module):
    """Three layers registered out of the order that uses them: DDP's first buckets
    (registration order) then group them otherwise than its rebuilt ones (gradient order)."""

    def __init__(self):
        super().__init__()
        self.middle = nn.Linear(64, 64)
        self.first = nn.Linear(32, 64)
        self.last = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.tanh(self.middle(torch.tanh(self.first(x)))))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return Net()


def wrap(model: nn.Module, state, hook) -> nn.parallel.DistributedDataParallel:
    # Small buckets: several of them, and DDP reorders them after the first step.
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.01)
    ddp.register_comm_hook(state, hook)
    return ddp


def step(ddp: nn.Module, number: int) -> None:
    """One SGD step on this rank's own batch."""
    g = torch.Generator().manual_seed(1000 * number + dist.get_rank())
    x, y = torch.randn(16, 32, generator=g), torch.randn(16, 8, generator=g)
    ddp.zero_grad()
    ((ddp(x) - y) ** 2).mean().backward()
    with torch.no_grad():
        for p in ddp.parameters():
            p -= 0.1 * p.grad


def local_grads(model: nn.Module, number: int) -> dict[str, torch.Tensor]:
    """This rank's own gradient at step `number`, without DDP."""
    plain = build_model()
    plain.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1000 * number + dist.get_rank())
    x, y = torch.randn(16, 32, generator=g), torch.randn(16, 8, generator=g)
    ((plain(x) - y) ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in plain.named_parameters()}


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(2)]
    dist.all_gather(parts, tensor)
    return (parts[0] + parts[1]) / 2


def topk_run(out: dict) -> None:
    model = build_model()
    state = TopK(RATIO, model)
    ddp = wrap(model, state, topk_hook)
    out["traffic"], out["feedback_exact"] = [], []
    for number in range(STEPS):
        mine = local_grads(model, number)
        before = {n: r.clone() for n, r in state.residuals.items()}
        step(ddp, number)
        out["traffic"].append(state.traffic.take())
        # What this rank sent = its gradient + what it held back before - what it holds now,
        # and every rank's parameters received the mean of what the ranks sent.
        exact = True
        for name, p in model.named_parameters():
            held = before.get(name, torch.zeros_like(p))
            sent = mine[name] + held - state.residuals[name]
            exact &= torch.equal(mean_over_ranks(sent), p.grad)
            # A rank sends ceil(ratio * size) entries of each parameter, and keeps the rest.
            kept_back = int((state.residuals[name] != 0).sum())
            exact &= kept_back >= p.numel() - math.ceil(RATIO * p.numel())
        out["feedback_exact"].append(exact)
    out["straight"] = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Stopped after half the steps and restarted in a new DDP (new buckets, rebuilt again),
    # from its weights and residuals: the same weights as without the stop. Without the
    # residuals: other weights (what they hold matters).
    half = STEPS // 2
    for keep_residuals in (True, False):
        model = build_model()
        state = TopK(RATIO, model)
        ddp = wrap(model, state, topk_hook)
        for number in range(half):
            step(ddp, number)
        weights = {n: t.clone() for n, t in model.state_dict().items()}
        residuals = {n: r.clone() for n, r in state.residuals.items()}
        again = build_model()
        again.load_state_dict(weights)
        state = TopK(RATIO, again)
        state.residuals = residuals if keep_residuals else {}
        ddp = wrap(again, state, topk_hook)
        for number in range(half, STEPS):
            step(ddp, number)
        out[f"resumed_{keep_residuals}"] = {
            n: p.detach().clone() for n, p in again.named_parameters()
        }


def powersgd_run(out: dict) -> None:
    model = build_model()
    state = PowerSGD(rank=2, start_step=2)
    ddp = wrap(model, state, powersgd_hook)
    out["powersgd_traffic"] = []
    for number in range(4):
        step(ddp, number)
        out["powersgd_traffic"].append(state.traffic.take())
    out["powersgd_weights"] = {n: p.detach().clone() for n, p in model.named_parameters()}


def worker(rank: int, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A rank that fails must not leave the other waiting in a collective for long.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    out: dict = {}
    try:
        topk_run(out)
        powersgd_run(out)
    finally:
        dist.destroy_process_group()
    torch.save(out, folder / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("gloo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, folder), nprocs=2)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


def test_topk_at_one_percent_sends_at_least_10x_fewer_bytes(ranks: list[dict]) -> None:
    sizes = [p.numel() for p in build_model().parameters()]
    # Per step: an int32 index and an fp32 value for each entry sent, against the fp32 bucket.
    expected = (sum(8 * math.ceil(RATIO * n) for n in sizes), 4 * sum(sizes))
    for rank in ranks:
        assert rank["traffic"] == [expected] * STEPS
    sent, dense = expected
    assert dense / sent >= 10  # 47.8 here: a few small tensors send one entry each


def test_topk_error_feedback_sends_exactly_what_was_held_back(ranks: list[dict]) -> None:
    for rank in ranks:
        assert rank["feedback_exact"] == [True] * STEPS


def test_topk_replicas_stay_identical_and_resume_exactly(ranks: list[dict]) -> None:
    first, second = ranks
    for name, weight in first["straight"].items():
        assert torch.equal(weight, second["straight"][name]), name
        assert torch.equal(first["resumed_True"][name], weight), name
    # Losing the residuals at the restart changes the result: they are state, not a cache.
    assert any(not torch.equal(first["resumed_False"][n], w) for n, w in first["straight"].items())


def test_powersgd_counts_its_low_rank_factors(ranks: list[dict]) -> None:
    dense = 4 * sum(p.numel() for p in build_model().parameters())
    # Before start_step: plain all-reduce. Then rank-2 factors P (rows x 2) and Q (cols x 2)
    # of each weight matrix, and the biases as they are.
    compressed = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (8 + 64) * 2 + 64 + 64 + 8)
    for rank in ranks:
        assert rank["powersgd_traffic"] == [(dense, dense)] * 2 + [(compressed, dense)] * 2
    first, second = ranks
    for name, weight in first["powersgd_weights"].items():
        assert torch.equal(weight, second["powersgd_weights"][name]), name


def test_resumed_on_other_ranks_the_held_back_gradient_is_kept() -> None:
    from pipeline.run.compression.callback import residuals_of_rank

    saved = [{"w": torch.tensor([1.0, 0.0, 4.0])}, {"w": torch.tensor([3.0, 2.0, 0.0])}]
    assert torch.equal(residuals_of_rank(saved, 2, 1)["w"], saved[1]["w"])
    # The update adds the mean over ranks of what each sends: what the two ranks held back
    # reaches one rank or four as the same total.
    held_back = (saved[0]["w"] + saved[1]["w"]) / 2
    for world in (1, 4):
        every = [residuals_of_rank(saved, world, r)["w"] for r in range(world)]
        assert torch.equal(sum(every) / world, held_back)
    assert residuals_of_rank([], 2, 0) == {}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.gradient_compression=topk"], "trainer.gradient_compression='topk'"),
        (
            ["trainer=ddp", "trainer.devices=1", "trainer.gradient_compression=powersgd"],
            "none on a single device",
        ),
        (
            ["trainer=ddp", "trainer.strategy=fsdp", "trainer.gradient_compression=topk"],
            "use trainer=ddp",
        ),
        (
            ["trainer=ddp", "trainer.gradient_compression=topk", "trainer.topk_ratio=1.0"],
            "trainer.topk_ratio",
        ),
        (
            ["trainer=ddp", "trainer.gradient_compression=powersgd", "trainer.powersgd_rank=0"],
            "trainer.powersgd_rank",
        ),
    ],
)
def test_compression_that_cannot_work_is_refused(
    overrides: list[str], expected: str, tmp_path: Path
) -> None:
    from tests.helpers import app_config

    with pytest.raises(UserError, match=expected.replace("(", r"\(")) as refused:
        app_config(overrides, tmp_path)
    assert "Traceback" not in str(refused.value)


def test_ddp_with_compression_is_accepted(tmp_path: Path) -> None:
    from tests.helpers import app_config

    cfg = app_config(
        ["trainer=ddp", "trainer.gradient_compression=topk", "trainer.topk_ratio=0.05"], tmp_path
    )
    assert cfg.trainer.gradient_compression == "topk" and cfg.trainer.topk_ratio == 0.05
