"""What keeps a training run safe when something goes wrong while it trains:

- checkpoints are written atomically (temporary name, fsync, rename), and a full disk is
  reported as such, with the previous checkpoint left loadable;
- SIGTERM (SLURM preemption, `kill`) and Ctrl-C stop training after the current batch with a
  checkpoint saved, so `resume=` continues exactly where it stopped;
- a NaN or infinite loss stops training before anything is saved after it.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from pipeline.errors import Interrupted, UserError
from pipeline.files import atomic_write
from pipeline.module import is_logged_step

# Errors that mean "no room left", whatever the filesystem calls it.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, written beside the target and renamed over it once on disk."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        try:
            atomic_write(
                path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp)
            )
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            raise UserError(
                f"No space left to write the checkpoint {path} ({exc.strerror}). Nothing was "
                "half-written, and earlier checkpoints are intact. Free disk space (or set "
                "paths.outputs to a larger disk), then continue with resume=<run folder>."
            ) from None


class StopOnSignal(pl.Callback):
    """SIGTERM and SIGINT while fitting: finish the current batch (its metrics logged, its
    schedule step taken), save `checkpoints/last.ckpt` and stop, through Lightning's own
    SIGTERM path, which stops between batches. Outside fitting, or at a second signal, they
    stop at once. Either way the caller closes the run as KILLED. A context manager: the
    handlers are ours only while the run lasts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint = checkpoint_dir / "last.ckpt"
        self.signum: int | None = None
        self.saved = False
        self._trainer: pl.Trainer | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        first = self.signum is None
        self.signum = signum
        if not (first and self._trainer is not None):
            raise self.error()
        # Lightning sets this itself on SIGTERM; Ctrl-C takes the same orderly way out.
        self._trainer._signal_connector.received_sigterm = True

    def error(self) -> Interrupted:
        name = signal.Signals(self.signum).name
        if self.saved:
            where = f"a checkpoint was saved to {self.checkpoint}"
        elif self.checkpoint.is_file():
            where = f"the last checkpoint is {self.checkpoint}"
        else:
            where = "no checkpoint was saved yet"
        return Interrupted(
            f"Interrupted by {name}: training stopped and {where}. Continue with "
            f"resume={self.checkpoint.parent.parent} (or resume=auto).",
            self.signum,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        fitting, self._trainer = self._trainer, None
        if fitting and self.signum is not None and isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.checkpoint)
            self.saved = True


class StopOnNonFiniteLoss(pl.Callback):
    """A NaN or infinite training loss ends the run before any checkpoint is written after it,
    so the last checkpoint on disk is a good one.

    Reading a loss on the host waits for the device, so a check at every step would stall a GPU
    once per step. Each step's loss stays on the device instead, and is read where
    Lightning reads the device anyway (the steps it sends to the logger) and wherever it must
    be: before a checkpoint is written, before validation and at the end of training. The error
    still names the first non-finite step.
    """

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir = checkpoint_dir
        # (loss, step, epoch, batch) of the steps since the last read
        self._pending: list[tuple[torch.Tensor, int, int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._pending.append((loss.detach(), trainer.global_step, trainer.current_epoch, batch_idx))
        if is_logged_step(trainer):
            self._check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._check()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check()

    def on_train_end(self, trainer, pl_module) -> None:
        self._check()

    def _check(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        finite = torch.isfinite(torch.stack([loss for loss, *_ in pending])).tolist()
        if all(finite):
            return
        loss, step, epoch, batch = pending[finite.index(False)]
        saved = sorted(self.checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        good = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was saved"
        raise UserError(
            f"The training loss became {float(loss)} at step {step} (epoch {epoch}, batch "
            f"{batch}); training stopped and {good}. Lower optim.lr, set "
            "optim.gradient_clip_val, or use trainer.precision=32-true."
        )
