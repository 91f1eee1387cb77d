"""conf/logger/: where runs are recorded (MLflow) or none."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Group


class LoggerConfig(Group):
    name: Literal["mlflow", "none"]
    """mlflow records every run; none still writes the run folder and run.json."""
    tracking_uri: str | None = None
    """null: MLFLOW_TRACKING_URI, else the SQLite store <paths.outputs>/mlflow.db."""
    experiment_name: str = Field(min_length=1)
    """The MLflow experiment (and the folder under outputs/runs/)."""
    run_name: str | None = None
    """The MLflow run's name; null: the run folder's name."""
    log_checkpoint: Literal["best", "last", "none"] = "best"
    """Which checkpoint is uploaded as an artifact."""
