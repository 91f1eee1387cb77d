"""The Lightning side of a run: the Trainer with our checkpointing and callbacks, the
LightningModule and the DataModule, fitted, then tested on the best checkpoint's weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from pipeline import checkpoint
from pipeline.assembly.trained import Trained
from pipeline.config.train import TrainConfig
from pipeline.data.bundle import DataBundle
from pipeline.run.compression.callback import for_trainer
from pipeline.run.datamodule import TextDataModule
from pipeline.run.faults import (
    AtomicCheckpointIO,
    PublishAfterMetrics,
    StopOnNonFiniteLoss,
    StopOnSignal,
)
from pipeline.run.module import GPTLightningModule
from pipeline.run.progress import ProgressBar, progress_callback
from pipeline.run.refusals import lightning_refusals
from pipeline.run.resume import Resume
from pipeline.run.stream_position import StreamPosition, saved_positions
from pipeline.sparsity.callback import for_run


class CheckpointExtras(pl.Callback):
    """Our keys in every checkpoint (see pipeline/checkpoint.py); for LoRA on pretrained
    weights, only the trainable tensors."""

    def __init__(self, trained: Trained):
        self.trained = trained

    def on_save_checkpoint(self, trainer, pl_module, ckpt: dict) -> None:
        ckpt[checkpoint.METADATA_KEY] = self.trained.checkpoint_metadata().to_dict()
        ckpt[checkpoint.RNG_KEY] = checkpoint.rng_states()
        if self.trained.base is not None:
            checkpoint.keep_trainable(ckpt, self.trained.model)

    def on_load_checkpoint(self, trainer, pl_module, ckpt: dict) -> None:
        if checkpoint.RNG_KEY in ckpt:
            checkpoint.set_rng_states(ckpt[checkpoint.RNG_KEY])


def warn_oversubscribed(cfg: TrainConfig) -> None:
    """More CPU training processes than cores take turns on them: say so (Lightning starts
    them without a word)."""
    devices, cores = cfg.trainer.devices, os.cpu_count() or 1
    on_cpu = cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available()
    if on_cpu and isinstance(devices, int) and devices > cores:
        print(
            f"warning: trainer.devices={devices} starts {devices} training processes on this "
            f"machine's {cores} CPU cores: they take turns, so the run is slower than with "
            f"trainer.devices={cores}.",
            file=sys.stderr,
        )


def build_trainer(
    cfg: TrainConfig,
    run_dir: Path,
    logger: Any,
    trained: Trained,
    has_val: bool,
    extra: list[pl.Callback],
) -> tuple[pl.Trainer, ModelCheckpoint]:
    t, c = cfg.trainer, cfg.trainer.checkpoint
    # A pruning schedule makes earlier, denser checkpoints look best on validation: with
    # sparsity the run's result is its last checkpoint.
    monitor = c.monitor if has_val and not cfg.sparsity.enabled else None
    checkpoint_dir = run_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="epoch={epoch}-step={step}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=c.mode,
        # Without a monitor Lightning keeps the latest one, or every one (-1).
        save_top_k=c.save_top_k if monitor or c.save_top_k == -1 else 1,
        save_last=c.save_last,
        # Overwrite, never last-v1.ckpt: last.ckpt is the newest state, whoever wrote it.
        enable_version_counter=False,
    )
    io = AtomicCheckpointIO(before_publish=logger.flush if logger is not None else None)
    # Lightning runs checkpoint callbacks after the others: a NaN loss stops before a save.
    callbacks: list[pl.Callback] = [
        best,
        PublishAfterMetrics(io),
        CheckpointExtras(trained),
        StopOnNonFiniteLoss(checkpoint_dir),
        *extra,
    ]
    compression = for_trainer(t, trained.model)
    if compression:
        callbacks.append(compression)
    if c.every_n_train_steps and c.save_last:
        # A second callback only for last.ckpt: the first one's top-k needs validation metrics.
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=c.every_n_train_steps,
                enable_version_counter=False,
            )
        )
    progress = progress_callback(t.enable_progress_bar, t.progress_interval_s)
    if progress:
        callbacks.append(progress)
    with lightning_refusals():
        trainer = pl.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=compression.strategy() if compression else t.strategy,
            precision=t.precision,
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            accumulate_grad_batches=cfg.optim.accumulate_grad_batches,
            gradient_clip_val=cfg.optim.gradient_clip_val,
            val_check_interval=t.val_check_interval,
            limit_val_batches=None if has_val else 0,
            num_sanity_val_steps=t.num_sanity_val_steps if has_val else 0,
            log_every_n_steps=t.log_every_n_steps,
            deterministic=t.deterministic,
            # Lightning draws its own bar unless told not to: ours, or plain lines, or none.
            enable_progress_bar=isinstance(progress, ProgressBar),
            logger=logger if logger is not None else False,
            callbacks=callbacks,
            plugins=[io],
            default_root_dir=run_dir,
        )
    return trainer, best


def _tokens_per_batch(bundle: DataBundle, batch_size: int) -> float:
    """The trained tokens of an average training batch (the scale of a language model's
    micro-batch loss, see module.py)."""
    split = bundle.splits["train"]
    return max(1.0, split.trained_targets() / max(1, -(-len(split) // batch_size)))


class Fitting:
    """Trainer, LightningModule and DataModule of one run, and what fitting them yields."""

    def __init__(
        self,
        cfg: TrainConfig,
        trained: Trained,
        bundle: DataBundle,
        run_dir: Path,
        logger: Any,
        stop: StopOnSignal,
        callbacks: list[pl.Callback],
    ):
        self.trained, self.stop = trained, stop
        self.has_val = bool(bundle.splits["val"].ids)
        self.has_test = bool(bundle.splits["test"].ids)
        model = trained.model
        self.sparsity = for_run(
            cfg.sparsity, model, trained.sparse_layers, bundle, cfg.seed, run_dir / "sparsity"
        )
        # data.streaming: the stream's position, kept for the checkpoint (before it is saved).
        self.position = StreamPosition(cfg.data.num_workers) if cfg.data.streaming else None
        extra = [*([self.position] if self.position else []), stop]
        extra += [*([self.sparsity] if self.sparsity else []), *callbacks]
        self.trainer, self.best = build_trainer(cfg, run_dir, logger, trained, self.has_val, extra)
        penalty = self.sparsity.pruner.penalty if self.sparsity and cfg.sparsity.l1_lambda else None
        self.module = GPTLightningModule(model, cfg.optim, penalty)
        self.module.tokens_per_batch = _tokens_per_batch(bundle, cfg.optim.batch_size)
        # LoRA checkpoints on pretrained weights hold only what trains (see checkpoint.py).
        self.module.strict_loading = trained.base is None
        if cfg.trainer.compile:
            model.compile()
        self.datamodule = TextDataModule(
            bundle,
            cfg.optim.batch_size,
            cfg.optim.eval_batch_size or cfg.optim.batch_size,
            cfg.seed,
            cfg.data.num_workers,
        )

    def fit(self, resume: Resume | None) -> dict[str, float]:
        """Train (from the resumed checkpoint's step), validate at the end if max_steps came
        first; the metrics at the end of fitting."""
        ckpt_path = None
        if resume:
            self.datamodule.resume_mid_epoch(checkpoint.batches_done(resume.checkpoint))
            if self.position:
                shards = self.trainer.world_size * self.position.workers
                self.position.resume(saved_positions(resume.checkpoint, shards))
                self.datamodule.resume_stream(self.position.positions)
            ckpt_path = resume.checkpoint
        with lightning_refusals():
            self.trainer.fit(self.module, datamodule=self.datamodule, ckpt_path=ckpt_path)
        self.stop.agree(self.trainer)
        if self.stop.signum is not None:
            # The signal came during the last validation: training is over, the run is not.
            raise self.stop.error()
        if self.has_val and not any(k.startswith("val/") for k in self.trainer.callback_metrics):
            # max_steps ended the run before the first scheduled validation.
            with lightning_refusals():
                self.trainer.validate(self.module, datamodule=self.datamodule, verbose=False)
        return self.metrics()

    def load_best(self) -> str | None:
        """Load the best checkpoint's weights (testing and export use them, not the last
        step's); its path, None without one. The sparsity masks are the model's then."""
        best = self.best.best_model_path or None
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
            self.module.load_state_dict(state["state_dict"], strict=self.module.strict_loading)
        if self.sparsity:
            self.trained.masks = self.sparsity.pruner.state() or None
        return best

    def test(self) -> dict[str, float]:
        if self.has_test:
            with lightning_refusals():
                self.trainer.test(self.module, datamodule=self.datamodule, verbose=False)
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        return {
            k: round(float(v), 6)
            for k, v in sorted(self.trainer.callback_metrics.items())
            if k.startswith(("val/", "test/")) or k == "train/loss_epoch"
        }
