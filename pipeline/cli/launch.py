"""What a command learns from Hydra and the environment, read here once and handed down:
the run folder, this process's rank, the tracking store, the sweep it belongs to, a search
trial's study, and the run's name and command (from Hydra's overrides, not sys.argv, which
a sweep's trial does not have)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from pipeline.config.logger import LoggerConfig
from pipeline.tracking.names import describe, key_of, run_name
from pipeline.tracking.uri import resolve_tracking_uri

# Set by the sweep callback (cli/sweep.py) for its trials, in process or in worker processes.
PARENT_ENV = "PIPELINE_SWEEP_PARENT_RUN_ID"
# Set per job by the Optuna sweeper (hydra.job.env_set): the trial number this job runs.
TRIAL_ENV = "PIPELINE_SEARCH_TRIAL"
# Set by the sweep callback: the keys its trials differ in (a JSON list), for their names.
SWEPT_ENV = "PIPELINE_SWEEP_KEYS"


def multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def stop_file() -> Path | None:
    """This sweep's stop file (sweeps/stop.py), or None outside a sweep."""
    from pipeline.sweeps.stop import marker_in

    return marker_in(HydraConfig.get().sweep.dir) if multirun() else None


def global_rank(devices_per_node: int | str = 1) -> int:
    """This process's rank, from the variables torchrun, SLURM or Lightning's launcher set
    (0 when none is set: a single process, or the process that launches the others)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    local, node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("NODE_RANK", 0))
    return node * (devices_per_node if isinstance(devices_per_node, int) else 1) + local


def launched_externally() -> bool:
    """torchrun or SLURM started one process per rank, so Lightning spawns none."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "SLURM_NTASKS" in os.environ


def tracking_uri(logger: LoggerConfig, outputs: str | Path) -> str:
    return resolve_tracking_uri(logger.tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"), outputs)


def name_of_run() -> str:
    """What distinguishes this run (tracking/names.py): a search trial's number and sampled
    values; a grid trial's swept values; else the command line's overrides; else the model
    and data presets it trains (the default run)."""
    hydra = HydraConfig.get()
    choices, task = hydra.runtime.choices, list(hydra.overrides.task)
    if multirun():
        swept = set(json.loads(os.environ.get(SWEPT_ENV, "[]")))
        trial = os.environ.get(TRIAL_ENV)
        values = describe([o for o in task if key_of(o) in swept], choices)
        if values or trial is not None:
            return run_name(f"#{trial}" if trial is not None else "", values)
    return run_name(describe(task, choices) or f"{choices.model} {choices.data}")
