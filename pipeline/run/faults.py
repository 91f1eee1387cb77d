"""What keeps a training run safe when something goes wrong while it trains:

- checkpoints are written atomically (temporary name, fsync, rename), and a full disk is
  reported as such, with the previous checkpoint left loadable;
- a checkpoint appears only once the metrics of every step it covers are in the tracking
  store, so a resumed run's metric history has no gap;
- SIGTERM (SLURM preemption, `kill`) and Ctrl-C stop training after the current batch with a
  checkpoint saved, so `resume=` continues exactly where it stopped;
- a NaN or infinite loss stops training before anything is saved after it.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from pipeline.errors import Interrupted, UserError
from pipeline.files import publish, write_beside
from pipeline.run.module import is_logged_step
from pipeline.sweeps.stop import SIGNALS, stop_signal

# Errors that mean "no room left", whatever the filesystem calls it.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, written beside the target and renamed over it once on disk.

    A checkpoint is renamed into place only after `before_publish` (the tracking logger's
    flush) has put every metric of the steps it covers in the store, so a run killed at any
    moment and resumed from its newest checkpoint leaves no gap in its metric history. Lightning
    saves before it logs the step (and the epoch) that the checkpoint covers: while `held` (see
    `PublishAfterMetrics`), checkpoints written, and the older ones they replace, wait for
    `publish()`.
    """

    def __init__(self, before_publish: Callable[[], None] | None = None):
        super().__init__()
        self.before_publish = before_publish
        self.held = False
        # (temporary file, target) to rename, or (None, path) to remove, in order
        self._pending: list[tuple[Path | None, Path]] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        try:
            tmp = write_beside(
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
        self._pending.append((tmp, Path(path)))
        if not self.held:
            self.publish()

    def remove_checkpoint(self, path) -> None:
        self._pending.append((None, Path(path)))
        if not self.held:
            self.publish()

    def publish(self) -> None:
        self.held = False
        pending, self._pending = self._pending, []
        try:
            if pending and self.before_publish is not None:
                self.before_publish()
        finally:  # a store that fails to take the metrics costs them, not the checkpoint
            for tmp, path in pending:
                if tmp is None:
                    super().remove_checkpoint(path)
                else:
                    publish(tmp, path)


class PublishAfterMetrics(pl.Callback):
    """Holds the checkpoint files Lightning writes from a training batch's end until it has
    logged what they cover: the batch's step metrics right after on_train_batch_end, and after
    an epoch's last batch, its validation and then the epoch's training means (after
    on_train_epoch_end). The next hook after that publishes them. Lightning runs checkpoint
    callbacks after this one, so the hold is in place before they save."""

    def __init__(self, io: AtomicCheckpointIO):
        self.io = io
        self._epoch_ends = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.io.held = bool(trainer.loggers)
        self._epoch_ends = batch_idx + 1 >= trainer.num_training_batches or (
            0 <= trainer.max_steps <= trainer.global_step
        )

    def on_validation_start(self, trainer, pl_module) -> None:
        if not self._epoch_ends:
            self.io.publish()

    def on_train_end(self, trainer, pl_module) -> None:
        self.io.publish()
        # Every rank reads the best checkpoint once fit returns; rank 0 alone writes it.
        trainer.strategy.barrier("checkpoints published")

    def _publish(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self.io.publish()

    on_train_batch_start = on_train_epoch_start = on_exception = teardown = _publish


class StopOnSignal(pl.Callback):
    """SIGTERM and SIGINT while fitting: finish the current batch (its metrics logged, its
    schedule step taken), save `checkpoints/last.ckpt` and stop, through Lightning's own
    SIGTERM path, which stops between batches. Outside fitting, or at a second signal, they
    stop at once. Either way the caller closes the run as KILLED. A context manager: the
    handlers are ours only while the run lasts.

    Under DDP a signal may reach one rank only (`kill <pid>` reaches the launching rank): the
    ranks agree on it at the end of every batch and stop together, each saving through the
    same collective calls. Lightning's own SIGTERM handler is replaced while its loops run: it
    runs a collective inside the handler, which meets whatever collective the other ranks are
    in and hangs them."""

    def __init__(self, checkpoint_dir: Path, sweep_stop: Path | None = None):
        self.checkpoint = checkpoint_dir / "last.ckpt"
        # In a sweep, another process may take the signal (see sweep_stop.py).
        self.sweep_stop = sweep_stop
        self.signum: int | None = None
        self.saved = False
        self._trainer: pl.Trainer | None = None
        self._launcher: Any = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        stopped = self.interrupted(exc)
        if stopped is not None and stopped is not exc:
            # Lightning's own SIGTERM handling ends fit with SystemExit; report it as ours.
            raise stopped from None

    def interrupted(self, exc: BaseException | None) -> Interrupted | None:
        """What a run that ended with `exc` reports when a signal stopped it (None if none
        did)."""
        if exc is None or self.signum is None:
            return None
        return exc if isinstance(exc, Interrupted) else self.error()

    def _handle(self, signum: int, frame: object) -> None:
        first = self.signum is None
        self.signum = signum
        if not (first and self._trainer is not None):
            # The ranks this one launched would wait in a collective for it forever.
            if kill := getattr(self._launcher, "kill", None):
                kill(signal.SIGKILL)
            raise self.error()
        if self._trainer.world_size == 1:
            # Lightning sets this itself on SIGTERM; Ctrl-C takes the same orderly way out.
            self._trainer._signal_connector.received_sigterm = True

    def agree(self, trainer: pl.Trainer) -> None:
        """Under DDP, every rank takes the signal any rank took (called by all at one point)."""
        if trainer.world_size > 1:
            mine = torch.tensor(self.signum or 0, device=trainer.strategy.root_device)
            self.signum = int(trainer.strategy.reduce(mine, reduce_op="max").item()) or None

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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._launcher = trainer.strategy.launcher

    def _take_back_signals(self, *args: Any) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    on_validation_start = on_test_start = _take_back_signals

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_back_signals()
        self._trainer = trainer

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.signum is None and (signum := stop_signal(self.sweep_stop)) is not None:
            self._handle(signum, None)
        if trainer.world_size > 1:
            self.agree(trainer)
            # Lightning stops every rank after this batch, before the next collective.
            trainer._signal_connector.received_sigterm = self.signum is not None

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
