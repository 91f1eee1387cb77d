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
    log_models: Literal["final", "checkpoints", "none"] = "final"
    """MLflow logged models (transformers flavor, from the hf export): final, the run's model;
    checkpoints, every kept checkpoint too, each at its step; none."""
    register_as: str | None = Field(default=None, min_length=1, pattern=r"^[^/:]+$")
    """Register the final model under this name in MLflow's model registry (no / or :, which
    MLflow refuses); null: do not."""
    alias: str = Field(default="candidate", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    """The alias the registered version gets (models:/<register_as>@<alias>)."""
    system_metrics: bool = True
    """CPU, memory, disk, network (and GPU) use, in the run's System metrics tab."""
    system_metrics_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between two samples of the system metrics."""
