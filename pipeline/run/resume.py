"""Which run `resume=` continues, and from which checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.record import RunRecord, Status
from pipeline.tracking.client import is_run_id, run_dir_of


@dataclass
class Resume:
    run_dir: Path
    checkpoint: Path
    record: RunRecord  # what the interrupted run recorded (empty if it recorded nothing)

    @property
    def times(self) -> int:
        """How many times the run will have been continued."""
        return self.record.resumed + 1


def locate_resume(
    resume: str, outputs: Path, experiment: str, tracking_uri: str | None = None
) -> Resume:
    """resume=auto (the newest unfinished run of the experiment), a run folder, an MLflow run
    id (the run's `run_dir` tag, looked up in the store at `tracking_uri`), or a .ckpt."""
    if resume == "auto":
        path = _newest_unfinished(outputs / "runs" / experiment)
    elif is_run_id(resume) and not Path(resume).exists() and tracking_uri is not None:
        path = run_dir_of(tracking_uri, resume)
    else:
        path = Path(resume).expanduser().resolve()
    if path.is_dir():
        run_dir, checkpoint = path, path / "checkpoints" / "last.ckpt"
    else:
        run_dir, checkpoint = path.parent.parent, path
    if not checkpoint.is_file() or checkpoint.parent.name != "checkpoints":
        raise UserError(
            f"resume={resume}: no checkpoint of a run folder at {checkpoint}. Pass a run folder "
            "that has checkpoints/last.ckpt, or a .ckpt inside a run's checkpoints/ folder."
        )
    return Resume(run_dir, checkpoint, RunRecord.read(run_dir) or RunRecord())


def _newest_unfinished(runs: Path) -> Path:
    unfinished = [
        folder
        for folder in (p.parent for p in runs.glob("*/*/run.json"))
        if RunRecord.read(folder).status != Status.FINISHED
        and (folder / "checkpoints" / "last.ckpt").is_file()
    ]
    if not unfinished:
        raise UserError(
            f"resume=auto found no unfinished run with a checkpoint under {runs}. Pass "
            "resume=<run folder or .ckpt>."
        )
    return max(unfinished, key=lambda p: (p / "run.json").stat().st_mtime)
