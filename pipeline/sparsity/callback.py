"""Sparsity inside a Lightning run: masks set by the schedule and held through every optimizer
step, saved in checkpoints, measured and logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from pipeline import checkpoint
from pipeline.config.sparsity import SparsityConfig
from pipeline.data.bundle import DataBundle
from pipeline.data.loader import Collator
from pipeline.files import write_text
from pipeline.sparsity.attention import AttentionStats, attention_probabilities, examples
from pipeline.sparsity.measure import ActivationCounter, gradient_sparsity, write_report
from pipeline.sparsity.pruner import Pruner, input_norms
from pipeline.sparsity.schedule import Schedule


class SparsityCallback(pl.Callback):
    """Step 0 updates (one-shot pruning) happen when training starts; later ones right after
    the optimizer step they belong to, through the optimizer's own post-step hook, so that they
    count optimizer steps whatever the gradient accumulation, and skipped (inf/NaN) AMP steps do
    not count."""

    def __init__(
        self,
        cfg: SparsityConfig,
        model: nn.Module,
        layers: list[str],
        calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
        report_dir: Path | None = None,
    ):
        self.cfg = cfg
        self.pruner = Pruner(cfg, model, layers)
        self.calibration = calibration
        self.report_dir = report_dir
        self.step = 0
        self.history: list[tuple[int, float]] = []
        self.report: dict[str, float] = {}
        self._grads: dict[str, torch.Tensor] = {}
        # masks read from the checkpoint being resumed, applied when training starts
        self._restored: dict[str, torch.Tensor] = {}
        self._hook = None
        # The last validation's per-head attention table (markdown), for the run's report.
        self.attention_report = ""
        self._activations: ActivationCounter | None = None
        self._attention: AttentionStats | None = None

    # -- training -------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trainer = trainer
        self.schedule = Schedule.for_run(self.cfg, int(trainer.estimated_stepping_batches))
        self.step = trainer.global_step
        if self._restored:
            self.pruner.load(self._restored)
            self.pruner.apply(trainer.optimizers[0])
        else:
            self._update(self.step)
        self._hook = trainer.optimizers[0].register_step_post_hook(self._after_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Lightning calls this before gradient clipping, so that clipping sees masked gradients.
        m = self.cfg.measure
        if m.gradients and (self.step + 1) % trainer.log_every_n_steps == 0:
            dense = gradient_sparsity(self.pruner.weights, m.gradient_threshold)
            self._log({f"grad_sparsity/{k}": v for k, v in dense.items()})
        if self.schedule.regrowth(self.step + 1) is not None:
            self._grads = self.pruner.dense_grads()
        self.pruner.mask_grads()

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        fraction = self.schedule.regrowth(self.step)
        if fraction is not None:
            self.pruner.regrow(fraction, self._grads)
            self._grads = {}
            self._same_on_every_rank()
            self._log({"sparsity/rigl_drop_fraction": fraction})
        self._update(self.step)
        self.pruner.apply(optimizer)

    def _same_on_every_rank(self) -> None:
        """Every rank computes the same masks from the same weights and all-reduced gradients;
        rank 0's are sent to all the same, so that a tie broken differently cannot split them."""
        if self.trainer.world_size > 1:
            self.pruner.load(self.trainer.strategy.broadcast(self.pruner.state(), src=0))
            self.pruner.apply()

    def _update(self, step: int) -> None:
        target = self.schedule.target(step)
        if target is None:
            return
        norms = None
        if self.cfg.method == "wanda":
            ids, lengths = self.calibration
            norms = input_norms(self.pruner.model, self.pruner.layers, ids, lengths)
        self.pruner.prune_to(target, norms)
        self._same_on_every_rank()
        self.report = self.pruner.report()
        self.history.append((step, self.report["total"]))
        self._log({f"sparsity/{k}": v for k, v in self.report.items()})

    def _log(self, metrics: dict[str, float]) -> None:
        trainer = self.trainer
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(metrics, step=self.step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
        self.report = self.pruner.report()
        if self.report_dir is not None and trainer.is_global_zero and self.attention_report:
            write_text(self.report_dir / "attention_sparsity.md", self.attention_report)
        if self.report_dir is not None and trainer.is_global_zero:
            sizes = {n.removesuffix(".weight"): w.numel() for n, w in self.pruner.weights.items()}
            write_report(self.report, sizes, self.history, self.report_dir)

    # -- measurement during validation ----------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        m = self.cfg.measure
        if m.activations:
            self._activations = ActivationCounter(pl_module.model, m.activation_eps)
        if m.attention and not trainer.sanity_checking:
            self._attention = AttentionStats(m.attention_eps)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *_) -> None:
        if self._attention is None or batch_idx >= self.cfg.measure.attention_batches:
            return
        # One example at a time, without padding (and apart from the others of a packed row):
        # every layer's probabilities are held at once, gigabytes for a whole batch of an LLM.
        for ids in examples(batch):
            self._attention.add(attention_probabilities(pl_module.model, ids[None]))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        metrics = {}
        if self._activations is not None:
            fractions = self._activations.fractions()
            self._activations.remove()
            self._activations = None
            if not trainer.sanity_checking:
                metrics = {f"activation_sparsity/{k}": v for k, v in fractions.items()}
        if self._attention is not None and self._attention.rows:
            self.attention_report = self._attention.markdown()
            metrics |= {f"attention_sparsity/{k}": v for k, v in self._attention.metrics().items()}
        self._attention = None
        if metrics:
            pl_module.log_dict(metrics, batch_size=1)

    # -- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, ckpt: dict) -> None:
        ckpt[checkpoint.SPARSITY_KEY] = checkpoint.sparsity_entry(
            self.pruner.state(), self.step, self.history
        )

    def on_load_checkpoint(self, trainer, pl_module, ckpt: dict) -> None:
        saved = ckpt.get(checkpoint.SPARSITY_KEY)
        if saved:
            self._restored = dict(saved["masks"])
            self.history = [tuple(h) for h in saved["history"]]


def for_run(
    cfg: SparsityConfig,
    model: nn.Module,
    layers: list[str],
    bundle: DataBundle,
    seed: int,
    report_dir: Path,
) -> SparsityCallback | None:
    """The callback that prunes and measures, when the sparsity config asks for either."""
    if not cfg.active:
        return None
    calibration = None
    if cfg.method == "wanda":
        calibration = calibration_batch(bundle, cfg.calibration_samples, seed)
    return SparsityCallback(cfg, model, layers, calibration, report_dir)


def calibration_batch(bundle: DataBundle, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n training examples drawn with the run's seed (the same on every rank): ids, lengths."""
    ids = bundle.splits["train"].ids
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    batch = Collator("causal_lm", bundle.tokenizer.pad_id, False)(
        [(ids[i], None) for i in order[:n].tolist()]
    )
    return batch["input_ids"], batch["lengths"]
