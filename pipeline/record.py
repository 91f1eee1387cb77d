"""run.json: the record of one run in its folder, and the only code that reads or writes it.

Rank 0 writes run.json; the other ranks of a data-parallel run write run.rank<N>.json, which
shows that they trained the same weights. Every field but the optional ones is always written
(null when unknown); older records and the stub of a trial that failed before it started read
back with defaults.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline.files import write_json

NAME = "run.json"


def is_run_id(text: str) -> bool:
    """Whether `text` has the shape of an MLflow run id (32 hex digits), as run_id holds."""
    return re.fullmatch(r"[0-9a-f]{32}", text) is not None


class Status(str, Enum):
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"  # stopped by a signal, with a checkpoint to resume from
    PRUNED = "PRUNED"  # a search trial stopped by the pruner

    @property
    def mlflow(self) -> str:
        """The MLflow run status: MLflow has no PRUNED (the run is tagged `pruned` instead)."""
        return "KILLED" if self is Status.PRUNED else self.value


@dataclass
class Paths:
    run_dir: str | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    exports: dict[str, str] = field(default_factory=dict)


@dataclass
class RunRecord:
    run_id: str | None = None
    experiment_name: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None  # credentials redacted
    status: Status = Status.RUNNING
    task: str | None = None
    num_parameters: int | None = None
    trainable_parameters: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    paths: Paths = field(default_factory=Paths)
    resumed: int = 0  # how many times the run was continued
    # Optional: written only when set.
    sparsity: dict[str, float] | None = None
    world_size: int | None = None
    weights_sha256: str | None = None
    error: str | None = None
    duration_s: float | None = None
    ui_url: str | None = None
    model_uri: str | None = None  # the MLflow logged model (models:/<id>)
    registered_model: str | None = None  # models:/<name>@<alias>

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return {k: v for k, v in data.items() if v is not None or k not in _OPTIONAL}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = Status(values.get("status", Status.FAILED.value))
        paths = data.get("paths") or {}
        values["paths"] = Paths(**{k: v for k, v in paths.items() if k in _PATH_FIELDS})
        return cls(**values)

    def write(self, run_dir: Path, rank: int = 0) -> Path:
        return write_json(path_of(run_dir, rank), self.to_dict())

    @classmethod
    def read(cls, run_dir: Path, rank: int = 0) -> RunRecord | None:
        """The record in a run folder, or None where there is none."""
        path = path_of(run_dir, rank)
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text()))


def owning_run(path: str | Path) -> RunRecord | None:
    """The record of the run that wrote `path`: a run folder, a checkpoint in its
    checkpoints/, or an export under its export/<format>/ (None for anything else)."""
    path = Path(path).expanduser().resolve()
    for folder in [path, *path.parents][:4]:
        if (record := RunRecord.read(folder)) is not None:
            return record
    return None


def path_of(run_dir: Path, rank: int = 0) -> Path:
    return Path(run_dir) / (NAME if rank == 0 else f"run.rank{rank}.json")


_OPTIONAL = {
    "sparsity",
    "world_size",
    "weights_sha256",
    "error",
    "duration_s",
    "ui_url",
    "model_uri",
    "registered_model",
}
_PATH_FIELDS = {f.name for f in fields(Paths)}
