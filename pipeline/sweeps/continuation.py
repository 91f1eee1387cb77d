"""Continuing an interrupted grid sweep: the same command again, in the sweep's folder
(`hydra.sweep.dir=<folder>`). Hydra numbers the trials of the same overrides the same way, so
each trial finds in its folder what the earlier run of the sweep left there (its run.json):

- nothing (it had not started): it runs;
- stopped by a signal or a lost process (KILLED, or RUNNING) with checkpoints/last.ckpt: it
  resumes from it, in the same MLflow run (pipeline/run/resume.py); without one it runs again;
- ended (FINISHED, FAILED, PRUNED): kept as it is. A FAILED trial fails the same way again
  unless something changed; delete its folder to run it again.

An Optuna search continues through its study instead (sweeps/search.py).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.errors import UserError
from pipeline.record import RunRecord, Status

# Hydra's record of a grid sweep, written in its folder when the sweep starts.
DEFINITION = "multirun.yaml"


class Plan(Enum):
    RUN = "run"
    RESUME = "resume"
    KEEP = "keep"


def is_continued(root: Path, overrides: list[str]) -> bool:
    """Whether the sweep folder holds an earlier run of this sweep; refused when it holds
    another sweep's (its trial N would be this sweep's trial N with other values)."""
    path = root / DEFINITION
    if not path.is_file():
        return False
    earlier = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    recorded = list(earlier.get("hydra", {}).get("overrides", {}).get("task", []))
    if recorded != overrides:
        raise UserError(
            f"hydra.sweep.dir={root} holds the trials of another sweep "
            f"({' '.join(recorded) or 'no overrides'}), and this one is "
            f"{' '.join(overrides) or 'no overrides'}. To continue that sweep, give its "
            "overrides exactly, in the same order; for a new sweep, leave hydra.sweep.dir out "
            "or point it at a new folder."
        )
    return True


def plan_trial(run_dir: Path) -> tuple[Plan, RunRecord | None]:
    """What a grid trial does with what an earlier run of its sweep left in `run_dir`."""
    record = RunRecord.read(run_dir)
    if record is None:
        return Plan.RUN, None
    if record.status in (Status.KILLED, Status.RUNNING):
        resumable = (run_dir / "checkpoints" / "last.ckpt").is_file()
        return (Plan.RESUME if resumable else Plan.RUN), record
    return Plan.KEEP, record


def kept_result(record: RunRecord) -> dict[str, Any]:
    """What a kept trial returns to the sweep: what it returned when it ran."""
    if record.status is Status.FINISHED:
        return record.metrics
    return {"status": record.status.value, "error": record.error or ""}
