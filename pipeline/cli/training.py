"""What a training run learns from outside its config, gathered into its run.Launch (kept
apart from launch.py, which the other commands import, as it leads to Lightning)."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from pipeline.cli.launch import (
    PARENT_ENV,
    TRIAL_ENV,
    global_rank,
    name_of_run,
    stop_file,
    tracking_uri,
)
from pipeline.config.train import TrainConfig
from pipeline.tracking.provenance import command


def search_callbacks() -> list:
    """Inside a search trial, the callback that reports to its Optuna trial; else none."""
    number = os.environ.get(TRIAL_ENV)
    if number is None:
        return []
    from pipeline.config.search import is_search, load_search

    if not HydraConfig.initialized() or not is_search(HydraConfig.get().sweeper):
        return []
    from pipeline.sweeps.trial import report_to

    return [report_to(load_search(HydraConfig.get().sweeper), int(number))]


def run_launch(cfg: TrainConfig):
    """The Launch of the training run this process is part of."""
    from pipeline.run.launch import Launch

    return Launch(
        run_dir=Path(HydraConfig.get().runtime.output_dir),
        rank=global_rank(cfg.trainer.devices),
        tracking_uri=tracking_uri(cfg.logger, cfg.paths.outputs),
        parent_run_id=os.environ.get(PARENT_ENV),
        stop_file=stop_file(),
        callbacks=search_callbacks(),
        command=command(list(HydraConfig.get().overrides.task)),
        overrides=tuple(HydraConfig.get().overrides.task),
        run_name=name_of_run(),
    )
