"""The progress bar of a training run."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from pipeline.run.module import is_logged_step


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
