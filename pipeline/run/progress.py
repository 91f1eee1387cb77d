"""The progress of a training run: a rich bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from pipeline.progress import ProgressLines
from pipeline.run.module import is_logged_step


def progress_callback(enabled: bool, interval_s: float) -> pl.Callback | None:
    """The bar where the output is a terminal; where it is not (a file, nohup, SLURM's log,
    CI), where a bar draws nothing for the whole run, plain lines every `interval_s`."""
    if not enabled:
        return None
    return ProgressBar() if sys.stdout.isatty() else ProgressLog(interval_s)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, showing the training loss as of the last step sent to the
    logger (and the epoch's mean once an epoch ends).

    Reading a value on the host waits for the device to finish. Lightning reads every metric
    logged with `prog_bar=True` after every batch, which would stall a GPU at every step; so
    the training loss is logged without it and this bar reads it only where the logger does.
    """

    def __init__(self) -> None:
        super().__init__()
        self._loss: dict[str, float] = {}
        self._between_logged_steps = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx):
        self._between_logged_steps = not is_logged_step(trainer)
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._between_logged_steps = False

    def get_metrics(self, trainer: pl.Trainer, pl_module) -> dict[str, Any]:
        if not self._between_logged_steps:
            metrics = trainer.callback_metrics
            self._loss = {
                k: float(metrics[k])
                for k in ("train/loss_step", "train/loss_epoch")
                if k in metrics
            }
        return {**super().get_metrics(trainer, pl_module), **self._loss}


class ProgressLog(pl.Callback):
    """A line every `interval_s` seconds of training, one when it ends, and one with the
    metrics of each validation:

        step 120/600 (20%) | epoch 1/4 | loss 0.4123 | 2,345 tokens/s | elapsed 1:02 | ETA 4:08
        validation at step 150: val/loss 0.1725 | val/acc 0.9600

    The loss and tokens/s are those of the last step sent to the logger, so printing reads
    nothing from the device that logging has not read already."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.lines: ProgressLines | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        total = trainer.max_steps if trainer.max_steps > 0 else None
        if total is None:
            total = int(trainer.estimated_stepping_batches)
        self.lines = ProgressLines("step", total, self.interval_s, done=trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx):
        if self.lines is not None and self.lines.due():
            self.lines.update(trainer.global_step, self._fields(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self.lines is not None:
            self.lines.update(trainer.global_step, self._fields(trainer), force=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        found = [f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()) if k.startswith("val/")]
        if found:
            print(f"validation at step {trainer.global_step}: {' | '.join(found)}", flush=True)

    @staticmethod
    def _fields(trainer: pl.Trainer) -> list[str]:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        # Once the last epoch ends, Lightning's counter has moved past it.
        epoch = (
            trainer.current_epoch + 1 if epochs is None else min(trainer.current_epoch + 1, epochs)
        )
        fields = [f"epoch {epoch}" + (f"/{epochs}" if epochs else "")]
        metrics = trainer.callback_metrics
        if "train/loss_step" in metrics:
            fields.append(f"loss {float(metrics['train/loss_step']):.4f}")
        if "train/tokens_per_sec" in metrics:
            fields.append(f"{float(metrics['train/tokens_per_sec']):,.0f} tokens/s")
        return fields
