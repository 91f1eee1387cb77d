"""Settings weighed against the run's length, which only the data's size tells: refused where
Lightning would fail with a traceback once fitting starts, adapted (with a warning) where a
setting meant for a longer run would waste this one."""

from __future__ import annotations

import sys
from collections.abc import Collection
from dataclasses import dataclass

from pipeline.config.train import TrainConfig
from pipeline.data.bundle import DataBundle
from pipeline.errors import UserError

# A warmup longer than this share of the run is shortened to WARMUP_SHARE of it.
WARMUP_LIMIT, WARMUP_SHARE = 0.25, 0.1


@dataclass(frozen=True)
class Length:
    batches_per_epoch: int
    """Training batches of one epoch on one device."""
    steps: int | None
    """Optimizer steps of the whole run (None: neither max_steps nor max_epochs bounds it)."""


def length_of(cfg: TrainConfig, bundle: DataBundle) -> Length:
    if cfg.data.streaming:
        # The stream has no end: the run is one epoch of max_steps optimizer steps.
        steps = max(cfg.trainer.max_steps, 1)
        return Length(steps * cfg.optim.accumulate_grad_batches, steps)
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    rows = -(-len(bundle.splits["train"].ids) // max(devices, 1))
    batches = max(1, -(-rows // cfg.optim.batch_size))
    per_epoch = -(-batches // cfg.optim.accumulate_grad_batches)
    bounds = [cfg.trainer.max_steps] if cfg.trainer.max_steps > 0 else []
    if cfg.trainer.max_epochs:
        bounds.append(cfg.trainer.max_epochs * per_epoch)
    return Length(batches, min(bounds) if bounds else None)


def check_against_data(cfg: TrainConfig, bundle: DataBundle) -> None:
    """Refuse, before a run is recorded, settings that only the data's size rules out."""
    if cfg.data.streaming and cfg.trainer.max_steps <= 0:
        raise UserError(
            "data.streaming=true reads the training data as a stream whose length is not known "
            "before it is read (it is never counted, nor held), so trainer.max_epochs cannot "
            f"end the run, and trainer.max_steps={cfg.trainer.max_steps} does not. Set "
            "trainer.max_steps to the optimizer steps to train (each rank reads on through "
            "the file, pass after pass, until then)."
        )
    interval = cfg.trainer.val_check_interval
    if not isinstance(interval, int) or not bundle.splits["val"].ids:
        return
    batches = length_of(cfg, bundle).batches_per_epoch
    if interval > batches:
        raise UserError(
            f"trainer.val_check_interval={interval} batches, but an epoch of this data has "
            f"{batches} training batches (per device), so validation would never run within "
            f"one. Set trainer.val_check_interval to at most {batches}, or to a fraction of an "
            "epoch such as 0.5 (1.0: once an epoch)."
        )


def fit_to_length(cfg: TrainConfig, bundle: DataBundle, given: Collection[str]) -> TrainConfig:
    """`cfg` with what would waste a short run adapted, each change said on stderr. `given`:
    the keys set on the command line, which are kept as they are (and only warned about).

    - A run whose max_steps ends before its first validation would validate only after
      training, with no checkpoint chosen on it (best_checkpoint null): it validates at its
      last step instead.
    - A warmup over a quarter of the run keeps the learning rate low for most of it (the
      default 20 steps in a 30-step run): it is shortened to a tenth of the run.
    """
    length = length_of(cfg, bundle)
    t, o = cfg.trainer, cfg.optim
    trainer, optim = {}, {}
    interval = t.val_check_interval
    first = interval if isinstance(interval, int) else interval * length.batches_per_epoch
    last = t.max_steps * o.accumulate_grad_batches
    if bundle.splits["val"].ids and 0 < last < first and "trainer.val_check_interval" not in given:
        trainer["val_check_interval"] = last
        _warn(
            f"trainer.max_steps={t.max_steps} ends the run before its first validation "
            f"(trainer.val_check_interval={interval}, after {first:g} of this data's "
            f"{length.batches_per_epoch} batches an epoch): validating at the last step instead, "
            f"so the run's checkpoint is chosen on it (trainer.val_check_interval={last})."
        )
    if length.steps and o.warmup_steps > WARMUP_LIMIT * length.steps:
        shorter = max(1, round(WARMUP_SHARE * length.steps))
        said = f"optim.warmup_steps={o.warmup_steps} takes {o.warmup_steps} of this run's " + (
            f"{length.steps} optimizer steps, so the learning rate stays below its peak for "
            f"most of the run"
        )
        if "optim.warmup_steps" in given:
            _warn(f"{said}; kept, as it was set on the command line.")
        else:
            optim["warmup_steps"] = shorter
            _warn(
                f"{said}: warming up for {shorter} steps (a tenth) instead. Set "
                "optim.warmup_steps on the command line to keep a longer warmup."
            )
    if not trainer and not optim:
        return cfg
    return cfg.model_copy(
        update={
            "trainer": t.model_copy(update=trainer),
            "optim": o.model_copy(update=optim),
        }
    )


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)
