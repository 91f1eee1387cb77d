"""What a run needs to know from outside its config. The commands (pipeline/cli/) read it from
Hydra and the environment; below them, nothing reads either."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl


@dataclass(frozen=True)
class Launch:
    run_dir: Path
    """The folder Hydra made for this run."""
    rank: int = 0
    """This process's global rank: rank 0 alone tracks, exports and writes run.json."""
    tracking_uri: str = ""
    """The MLflow store: logger.tracking_uri, MLFLOW_TRACKING_URI or the local one (runs with
    logger=none record nothing there, but resume=<MLflow run id> still looks runs up in it)."""
    parent_run_id: str | None = None
    """The MLflow parent run of the sweep this run is a trial of."""
    stop_file: Path | None = None
    """The sweep's stop file (see sweeps/stop.py), watched while training."""
    callbacks: list[pl.Callback] = field(default_factory=list)
    """More Lightning callbacks (a search trial's report to its study)."""
    command: str = ""
    """The command that runs it again (python -m pipeline.train and its overrides, quoted for
    a shell), credentials redacted."""
    overrides: tuple[str, ...] = ()
    """Its Hydra overrides (a resume keeps the run's recorded settings but for these)."""
    run_name: str = ""
    """The MLflow run's name unless logger.run_name sets one: what distinguishes the run (see
    tracking/names.py); empty: the run folder's name."""
