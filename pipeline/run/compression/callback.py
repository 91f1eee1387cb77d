"""The Lightning side of gradient compression: Lightning's DDP strategy with the hook
registered, the bytes a rank sends logged against the dense all-reduce, and the hook's state
in every checkpoint (see pipeline/checkpoint.py)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from pipeline import checkpoint
from pipeline.config.trainer import TrainerConfig
from pipeline.run.compression.powersgd import PowerSGD, powersgd_hook
from pipeline.run.compression.topk import TopK, topk_hook


class HookedDDPStrategy(DDPStrategy):
    """Lightning's DDP, registering the communication hook on every device: Lightning does it
    for CUDA only, a limit of gloo in torch 1.8 that gloo no longer has."""

    def _register_ddp_hooks(self) -> None:
        assert isinstance(self.model, nn.parallel.DistributedDataParallel)
        self.model.register_comm_hook(self._ddp_comm_state, self._ddp_comm_hook)


class GradientCompression(pl.Callback):
    """Owns the hook's state: registers it through the strategy, logs `comm/bytes_sent` and
    `comm/bytes_dense` (per step, rank 0's) at the logging interval, and saves and restores the
    state with the checkpoints."""

    def __init__(self, cfg: TrainerConfig, model: nn.Module):
        self.method = cfg.gradient_compression
        if self.method == "topk":
            self.state: TopK | PowerSGD = TopK(cfg.topk_ratio, model)
            self.hook: Any = topk_hook
        else:
            self.state = PowerSGD(cfg.powersgd_rank, cfg.powersgd_start_step)
            self.hook = powersgd_hook
        self.sent = self.dense = self.steps = 0

    def strategy(self) -> HookedDDPStrategy:
        return HookedDDPStrategy(ddp_comm_state=self.state, ddp_comm_hook=self.hook)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Backward is over: the hook has exchanged every bucket of this step.
        sent, dense = self.state.traffic.take()
        self.sent, self.dense, self.steps = self.sent + sent, self.dense + dense, self.steps + 1
        step = trainer.global_step + 1
        if step % trainer.log_every_n_steps:
            return
        if trainer.logger is not None and trainer.is_global_zero:
            per_step = {"comm/bytes_sent": self.sent, "comm/bytes_dense": self.dense}
            trainer.logger.log_metrics({k: v / self.steps for k, v in per_step.items()}, step)
        self.sent = self.dense = self.steps = 0

    def on_save_checkpoint(self, trainer, pl_module, ckpt: dict) -> None:
        # Every rank saves (rank 0 alone writes): each one's residuals go in, gathered.
        entry: dict[str, Any] = {"method": self.method}
        if isinstance(self.state, TopK):
            entry["residuals"] = _gathered(trainer.strategy, self.state.residuals)
        else:
            entry["step"] = self.state.state.iter
        ckpt[checkpoint.COMPRESSION_KEY] = entry

    def on_load_checkpoint(self, trainer, pl_module, ckpt: dict) -> None:
        entry = ckpt.get(checkpoint.COMPRESSION_KEY) or {}
        if entry.get("method") != self.method:
            return  # a run's method never changes on resume; an older checkpoint has none
        if isinstance(self.state, PowerSGD):
            self.state.resume_at(entry["step"])
            return
        mine = residuals_of_rank(entry["residuals"], trainer.world_size, trainer.global_rank)
        params = self.state.params
        self.state.residuals = {
            name: tensor.to(params[name].device, params[name].dtype).clone()
            for name, tensor in mine.items()
        }


def residuals_of_rank(
    saved: list[dict[str, torch.Tensor]], world_size: int, rank: int
) -> dict[str, torch.Tensor]:
    """A rank's residuals from those a checkpoint saved for every rank. On another number of
    ranks, each gets the mean, so that the update still receives all that was held back (the
    mean over ranks of their residuals)."""
    if not saved:
        return {}  # saved before the first exchange
    if len(saved) == world_size:
        return saved[rank]
    return {name: sum(r[name] for r in saved) / len(saved) for name in saved[0]}


def _gathered(strategy: pl.strategies.Strategy, residuals: dict[str, torch.Tensor]):
    """Every rank's residuals, as one {name: tensor} a rank (views of one gathered tensor)."""
    names = sorted(residuals)
    if not names:
        return []
    flat = torch.cat([residuals[n].reshape(-1) for n in names])
    rows = strategy.all_gather(flat).reshape(-1, flat.numel()).cpu()
    out = []
    for row in rows:
        start, entry = 0, {}
        for name in names:
            size = residuals[name].numel()
            entry[name] = row[start : start + size].view(residuals[name].shape)
            start += size
        out.append(entry)
    return out


def for_trainer(cfg: TrainerConfig, model: nn.Module) -> GradientCompression | None:
    """The callback for trainer.gradient_compression, None when it is none."""
    return None if cfg.gradient_compression == "none" else GradientCompression(cfg, model)
