"""conf/logger/: where runs are recorded (MLflow) or none."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from pipeline.config.base import Group, fail
from pipeline.config.locations import check_folder_name, check_tracking_uri, checked


class LoggerConfig(Group):
    name: Literal["mlflow", "none"]
    """mlflow records every run; none still writes the run folder and run.json."""
    tracking_uri: str | None = None
    """null: MLFLOW_TRACKING_URI, else the SQLite store <paths.outputs>/mlflow.db. Given: a
    SQLite file in a writable folder (sqlite:////absolute/path/mlflow.db; a relative path is
    recorded absolute), an http(s):// server, a database (postgresql://, mysql://, mssql://),
    or a file store (file:///absolute/folder) with MLFLOW_ALLOW_FILE_STORE=true."""
    experiment_name: str
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

    def check(self, file_store_allowed: bool | None) -> None:
        """The store and the names as MLflow and the file system take them. Here and not in
        the field types: a recorded run's logger is also read alone (--from-run, a sweep's
        parent run), where its store may be gone. `file_store_allowed`: see
        locations.check_tracking_uri."""
        checked("logger.experiment_name", self.experiment_name, check_folder_name)
        if self.tracking_uri is not None:
            store = functools.partial(check_tracking_uri, file_store_allowed=file_store_allowed)
            self.tracking_uri = checked("logger.tracking_uri", self.tracking_uri, store)
        # MLflow's registry refuses these only once the trained model is registered.
        name = self.register_as
        if name is not None and (not name.strip() or name == "." or name.startswith("..")):
            raise fail(
                "logger.register_as", name, "a name that is not blank, . or starting with .."
            )
        alias = self.alias
        if alias.lower() == "latest" or (alias[:1] in "vV" and alias[1:].isdigit()):
            raise fail("logger.alias", alias, "an alias other than latest or v<number> (reserved)")
        if len(alias) > 255:
            raise fail("logger.alias", alias, "at most 255 characters (MLflow's limit)")
