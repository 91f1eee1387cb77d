"""The LightningModule: task losses and metrics, the optimizer and its schedule."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
)

from pipeline.checkpoint import TRAIN_MEANS_KEY
from pipeline.config.optim import OptimConfig
from pipeline.data.loader import IGNORE_INDEX
from pipeline.losses import classification_loss, lm_loss, predicted
from pipeline.model.contract import Model


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float):
    """Linear warmup to the base lr, then cosine/linear decay to base * min_ratio (or constant)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return factor


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on Linear weights only: not on biases, LayerNorms or embeddings (a tied
    output head shares the embedding matrix, so it stays undecayed too)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            # transformers' GPT-2 keeps its projections in Conv1D modules.
            linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
            is_matrix = linear and name == "weight"
            (decay if is_matrix and id(param) not in embeddings else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, o: OptimConfig, fused: bool = True) -> torch.optim.Optimizer:
    """The optimizer over `model`'s trainable parameters, after the model is on its device.

    AdamW is fused where PyTorch has the kernel (CPU, CUDA): one pass over each tensor instead
    of a dozen small ops, which makes the step of a 124M model several times faster on a CPU.
    """
    groups = param_groups(model, o.weight_decay)
    if o.name == "adamw":
        devices = {p.device.type for group in groups for p in group["params"]}
        fused = fused and devices <= {"cpu", "cuda"}
        return torch.optim.AdamW(
            groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True if fused else None
        )
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)


def is_logged_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning sends this training step's metrics to the logger (it decides right
    after on_train_batch_end). Lightning reads logged values on the host there anyway, so it is
    where work that must read the device belongs, rather than at every step."""
    return trainer._logger_connector.should_update_logs


class GPTLightningModule(pl.LightningModule):
    def __init__(
        self,
        model: Model,
        optim: OptimConfig,
        penalty: Callable[[], torch.Tensor] | None = None,
    ):
        """`model`: our GPTModel or an HFModel; both map input_ids to logits. `penalty`: a
        regulariser added to the training loss (sparsity's L1)."""
        super().__init__()
        self.model = model
        self.optim = optim
        self.penalty = penalty
        self.is_lm = model.is_lm
        self.binary = model.n_outputs == 1
        self.metrics = nn.ModuleDict(
            {stage: self._make_metrics(model.n_outputs or 0) for stage in ("val", "test")}
        )
        # The epoch means of the training loss (and accuracy) so far. Kept in checkpoints, so a
        # run resumed mid-epoch reports the same train/*_epoch as one never interrupted.
        # No NaN check: it reads the value on the host at every step, and a NaN loss stops the
        # run anyway (faults.StopOnNonFiniteLoss).
        self.train_means = nn.ModuleDict({"loss": MeanMetric(nan_strategy="disable")})
        if not self.is_lm:
            self.train_means["acc"] = MeanMetric(nan_strategy="disable")
        self._window_tokens = 0
        self._window_start = time.perf_counter()
        # A language model's loss is the mean over the trained tokens of everything one
        # optimizer step sees, however many micro-batches gradient accumulation splits it into
        # (a mean of per-batch means weights short answers wrongly). Each micro-batch returns
        # its loss sum over `tokens_per_batch` (a typical count: the run sets it from the data,
        # so gradients keep a mean's scale), and the gradients are corrected to the exact
        # token mean before the step (on_before_optimizer_step).
        self.tokens_per_batch = 1.0
        self._trained_since_step = 0

    def _make_metrics(self, n_classes: int) -> MetricCollection:
        metrics: dict[str, nn.Module] = {"loss": MeanMetric()}
        if self.binary:
            metrics.update(acc=BinaryAccuracy(), f1=BinaryF1Score())
        elif not self.is_lm:
            metrics.update(
                acc=MulticlassAccuracy(n_classes, average="micro"),
                f1=MulticlassF1Score(n_classes, average="macro"),
            )
        return MetricCollection(metrics)

    def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.model(batch["input_ids"], position_ids=batch.get("position_ids"))
        if self.is_lm:
            return lm_loss(logits, batch["targets"]), None
        pooled = self.model.pooled(logits, batch["lengths"])
        return classification_loss(pooled, batch["labels"]), pooled

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.is_lm:
            return self._lm_training_step(batch)
        loss, pooled = self._step(batch)
        size = batch["input_ids"].shape[0]
        self.train_means["loss"](loss.detach(), size)
        # Not prog_bar: Lightning would read it on the host after every batch (see progress.py).
        self.log("train/loss", self.train_means["loss"], on_step=True, on_epoch=True)
        if pooled is not None:
            accuracy = (predicted(pooled) == batch["labels"].long()).float().mean()
            self.train_means["acc"](accuracy, size)
            self.log("train/acc", self.train_means["acc"], on_step=True, on_epoch=True)
        self._window_tokens += batch["n_tokens"]
        if self.penalty is not None:
            penalty = self.penalty()
            self.log("train/l1_penalty", penalty, on_step=True, batch_size=size)
            loss = loss + penalty
        return loss

    def _lm_training_step(self, batch: dict) -> torch.Tensor:
        logits = self.model(batch["input_ids"], position_ids=batch.get("position_ids"))
        total = lm_loss(logits, batch["targets"], reduction="sum")
        n = batch["n_trained"]  # counted by the collator on the CPU: no device sync
        self._trained_since_step += n
        size = batch["input_ids"].shape[0]
        self.train_means["loss"](total.detach() / max(n, 1), size)
        self.log("train/loss", self.train_means["loss"], on_step=True, on_epoch=True)
        self._window_tokens += batch["n_tokens"]
        if self.penalty is not None:
            penalty = self.penalty()
            self.log("train/l1_penalty", penalty, on_step=True, batch_size=size)
            # n times: the step's tokens add up to once after the correction below.
            total = total + n * penalty
        return total / self.tokens_per_batch

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Lightning divided each micro-batch's loss by accumulate_grad_batches; turn the sum
        into the mean over the trained tokens of all of them."""
        if not self.is_lm:
            return
        trained, self._trained_since_step = self._trained_since_step, 0
        scale = self.trainer.accumulate_grad_batches * self.tokens_per_batch
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        world = self.trainer.world_size
        if world == 1:
            torch._foreach_mul_(grads, scale / max(trained, 1))
            return
        # Data-parallel ranks see different numbers of trained tokens and DDP averaged their
        # gradients: the mean is over the tokens of every rank (one small all-reduce per step).
        counted = torch.tensor(float(trained), device=grads[0].device if grads else self.device)
        everyone = self.trainer.strategy.reduce(counted, reduce_op="sum")
        torch._foreach_mul_(grads, scale * world / everyone.clamp_min(1))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TRAIN_MEANS_KEY] = {
            name: {k: v.detach().clone() for k, v in metric.metric_state.items()}
            for name, metric in self.train_means.items()
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for name, state in checkpoint.get(TRAIN_MEANS_KEY, {}).items():
            for key, value in state.items():
                metric = self.train_means[name]
                setattr(metric, key, value.to(getattr(metric, key).device))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Only on logged steps: logging a Python float creates a device tensor, which has no
        # place in every step.
        if not is_logged_step(self.trainer):
            return
        # Tokens/s since the last logged step, from wall time; the token count is a Python int
        # from the collator, so it costs no device sync.
        now = time.perf_counter()
        self.log("train/tokens_per_sec", self._window_tokens / max(now - self._window_start, 1e-9))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self._window_tokens, self._window_start = 0, now

    def _eval_step(self, batch: dict, stage: str) -> None:
        loss, pooled = self._step(batch)
        metrics = self.metrics[stage]
        if self.is_lm:
            n_real = (batch["targets"] != IGNORE_INDEX).sum()
            metrics["loss"].update(loss, weight=n_real)
        else:
            metrics["loss"].update(loss, weight=batch["input_ids"].shape[0])
            for name in ("acc", "f1"):
                metrics[name].update(predicted(pooled), batch["labels"].long())

    def _eval_epoch_end(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        if self.is_lm:
            values["ppl"] = torch.exp(values["loss"].clamp(max=50))
        # torchmetrics has already reduced the values over the ranks; sync_dist only tells
        # Lightning so (one all-reduce per validation, nothing on one device).
        self.log_dict(
            {f"{stage}/{k}": v for k, v in values.items()},
            prog_bar=stage == "val",
            batch_size=1,
            sync_dist=True,
        )
        self.metrics[stage].reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and type(plugin) is MixedPrecision and plugin.scaler is None:
            # bf16 gradients need no unscaling, yet Lightning's mixed-precision plugin refuses to
            # clip for any fused optimizer; clip by norm here (the only algorithm configured).
            # Other plugins (FSDP's) keep their own clipping.
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        o = self.optim
        # 16-mixed clips gradients after its scaler unscales them, which Lightning leaves to a
        # fused optimizer: clipping would see scaled gradients.
        scaled = self.trainer.precision == "16-mixed" and bool(o.gradient_clip_val)
        optimizer = build_optimizer(self.model, o, fused=not scaled)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(o.warmup_steps, total, o.scheduler, o.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
