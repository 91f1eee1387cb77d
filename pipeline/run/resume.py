"""Which run `resume=` continues, from which checkpoint, and with which settings: the run's
own, as its checkpoint recorded them, changed only where the command line changes what a
resume can honour (the loop's length, devices, logging, where outputs go)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import checkpoint as ckpt_format
from pipeline.config.train import TrainConfig
from pipeline.config.validate import validate
from pipeline.errors import UserError
from pipeline.record import RunRecord, Status, is_run_id

# What a resumed run may take from its new command line. Anything else (model, data, task,
# optimizer, LoRA, sparsity, seed) would make it another run.
HONOURED = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.precision",
    "trainer.enable_progress_bar",
    "trainer.progress_interval_s",
    "trainer.log_every_n_steps",
    "logger.",
    "export.",
)


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
        from pipeline.tracking.client import run_dir_of  # MLflow, only to look the run up

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


def resumed_config(cfg: TrainConfig, resume: Resume, overrides: Iterable[str]) -> TrainConfig:
    """The interrupted run's recorded config, with this command's values where `overrides`
    (its command-line overrides) change what a resume honours. Refused, naming each key,
    when they change anything else."""
    recorded = ckpt_format.Metadata.of(ckpt_format.read(resume.checkpoint), resume.checkpoint)
    if not recorded.config:
        return cfg  # a checkpoint of an older version: the command line is all there is
    ours, theirs = _flat(cfg.model_dump(mode="json")), _flat(recorded.config)
    given = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    merged, refused = {}, []
    for key, value in ours.items():
        # Where this machine keeps things, and keys the run did not record (newer than it):
        # this command's values. Everything else the command line does not set: the run's.
        if key not in theirs or key.startswith(("paths.", "resume")):
            merged[key] = value
            continue
        given_here = any(key == g or key.startswith(f"{g}.") or g == "experiment" for g in given)
        merged[key] = value if given_here and key.startswith(HONOURED) else theirs[key]
        if given_here and value != theirs[key] and not key.startswith(HONOURED):
            refused.append(f"{key}={value!r} (the run has {theirs[key]!r})")
    if refused:
        raise UserError(
            f"resume={cfg.resume} continues {resume.run_dir} as it was trained, and these "
            f"overrides would change it: {'; '.join(refused)}. A resume takes only the loop's "
            "length, devices and logging from the command line (trainer.max_epochs, "
            "trainer.max_steps, trainer.devices, logger.*, ...). Drop them to resume the run, "
            "or start a new run without resume=."
        )
    # Validated as a command line is: the run's values with this one's may break a rule
    # between keys (max_epochs=null from the run, max_steps=-1 from here: endless training).
    return validate(_nested(merged), type(cfg))


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
