"""One training run, read top to bottom: build, fit, test, export, record.

What can go wrong is handled around the story, not inside it: StopOnSignal turns SIGTERM and
Ctrl-C into a checkpoint and an Interrupted error, and the Recorder closes the run's record
(run.json and the MLflow run) with whatever status the run ended in.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from pipeline.assembly.devices import check_devices
from pipeline.assembly.model import build_model
from pipeline.assembly.trained import Trained
from pipeline.config.train import TrainConfig
from pipeline.formats import export_trained
from pipeline.record import RunRecord
from pipeline.run.distributed import weights_digest
from pipeline.run.faults import StopOnSignal
from pipeline.run.launch import Launch
from pipeline.run.length import check_against_data, fit_to_length
from pipeline.run.recorder import Recorder
from pipeline.run.resume import Resume, locate_resume, resumed_config
from pipeline.run.trainer import Fitting, warn_oversubscribed
from pipeline.tracking.provenance import redact_all


def train(cfg: TrainConfig, launch: Launch) -> RunRecord:
    """Run one experiment in launch.run_dir (or continue the one cfg.resume names) and return
    its record."""
    check_devices(cfg)
    if launch.rank == 0:
        warn_oversubscribed(cfg)
    resume = None
    if cfg.resume:
        outputs, experiment = Path(cfg.paths.outputs), cfg.logger.experiment_name
        resume = locate_resume(cfg.resume, outputs, experiment, launch.tracking_uri)
        # Before anything is reopened: a refused resume leaves the run KILLED, as it was.
        cfg = resumed_config(cfg, resume, launch.overrides)
    run_dir = resume.run_dir if resume else launch.run_dir
    with StopOnSignal(run_dir / "checkpoints", launch.stop_file) as stop:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        trained, bundle = build_model(cfg)
        check_against_data(cfg, bundle)
        if not resume:  # a resumed run continues with what its start chose
            cfg = fit_to_length(cfg, bundle, _keys(launch.overrides))
        # Checkpoints carry the config and may be uploaded: no credentials in it.
        trained.config = redact_all(cfg.model_dump(mode="json", exclude={"resume"}))
        _announce(cfg, trained, resume)
        with Recorder(cfg, launch, run_dir, trained, resume, stop, bundle.sources) as recorder:
            # Once the store took the run: a store refused leaves no run folder behind.
            trained.tokenizer.save(run_dir)
            record = recorder.record
            fitting = Fitting(
                cfg, trained, bundle, run_dir, recorder.logger, stop, launch.callbacks
            )
            fitted = fitting.fit(resume)
            record.paths.best_checkpoint = fitting.load_best()
            record.metrics = {**fitted, **fitting.test()}
            if fitting.sparsity:
                record.sparsity = fitting.sparsity.report
            if launch.rank == 0:
                record.paths.exports = _export(cfg, trained, run_dir)
            last = run_dir / "checkpoints" / "last.ckpt"
            record.paths.last_checkpoint = str(last) if last.is_file() else None
            if fitting.trainer.world_size > 1 and "fsdp" not in cfg.trainer.strategy:
                # Replicas that trained in step hold the same weights: run.rank<N>.json shows it
                # (whatever the strategy was called: auto with several devices is DDP too).
                record.world_size = fitting.trainer.world_size
                record.weights_sha256 = weights_digest(fitting.module)
    return record


def _keys(overrides: tuple[str, ...]) -> set[str]:
    """The keys an override list sets (`+optim.lr=...` and `optim.lr=...` alike)."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


def _announce(cfg: TrainConfig, trained: Trained, resume: Resume | None) -> None:
    n_params, n_trainable = trained.parameter_counts()
    source = f"from {cfg.model.init_from}" if cfg.model.init_from else cfg.model.name
    print(
        f"Model {source}: {n_params:,} parameters ({trained.task}); trainable "
        f"{n_trainable:,} ({n_trainable / n_params:.2%})."
    )
    if resume:
        print(f"Resuming {resume.run_dir} from {resume.checkpoint.name}.")


def _export(cfg: TrainConfig, trained: Trained, run_dir: Path) -> dict[str, str]:
    """export.formats in export.dir; a LoRA run always yields its adapter and merged model."""
    formats = list(cfg.export.formats)
    if cfg.lora.enabled:
        formats += [f for f in ("adapter", "merged") if f not in formats]
    out_dir = Path(cfg.export.dir) if cfg.export.dir else run_dir / "export"
    e = cfg.export
    written = export_trained(trained, formats, out_dir, e.max_shard_bytes, e.gguf.types)
    return {fmt: str(path) for fmt, path in written.items()}
