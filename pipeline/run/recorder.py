"""The record of a run: its MLflow run (opened, or reopened when a run is resumed) and its
run.json, kept from the moment the model is built until the run ends, however it ends.

Leaving the `with` block closes both: FINISHED; KILLED by a signal, with where its checkpoint
is and how to resume; PRUNED by a search; or FAILED with the error. The run folder and the
MLflow run point at each other (tag `run_dir`, run.json's `run_id`). Every rank of a
data-parallel run records; rank 0 alone tracks and writes run.json, the others
run.rank<N>.json.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.assembly.trained import Trained
from pipeline.config.train import TrainConfig
from pipeline.data.bundle import SplitSource
from pipeline.errors import TrialPruned, UserError
from pipeline.record import RunRecord, Status
from pipeline.run.faults import StopOnSignal
from pipeline.run.launch import Launch
from pipeline.run.resume import Resume
from pipeline.tracking.provenance import data_digests, redact

# MLflow is imported only by a run that records one (its imports are seconds of start-up):
# the tracking modules are imported where the MLflow run is opened and closed.


class Recorder:
    def __init__(
        self,
        cfg: TrainConfig,
        launch: Launch,
        run_dir: Path,
        trained: Trained,
        resume: Resume | None,
        stop: StopOnSignal,
        datasets: Mapping[str, SplitSource],
    ):
        self.cfg, self.launch, self.run_dir = cfg, launch, run_dir
        self.datasets = datasets
        self.trained, self.resume, self.stop = trained, resume, stop
        self.tracked, self.logger, self.monitor = None, None, None
        self.n_params, self.n_trainable = trained.parameter_counts()

    def __enter__(self) -> Recorder:
        self.started = time.time()
        cfg, launch = self.cfg, self.launch
        if cfg.logger.name == "mlflow" and launch.rank == 0:
            from pipeline.tracking.logger import BatchedMLflowLogger
            from pipeline.tracking.monitor import system_monitor
            from pipeline.tracking.runs import last_step

            self.tracked = self._open()
            # Steps logged before an interruption are not logged a second time.
            self.logger = BatchedMLflowLogger(self.tracked, skip_through=last_step(self.tracked))
            self.monitor = system_monitor(self.tracked, cfg.logger)
        self.record = RunRecord(
            run_id=self.tracked.run_id if self.tracked else None,
            experiment_name=cfg.logger.experiment_name,
            experiment_id=self.tracked.experiment_id if self.tracked else None,
            tracking_uri=redact(self.tracked.tracking_uri) if self.tracked else None,
            task=cfg.data.task,
            num_parameters=self.n_params,
            trainable_parameters=self.n_trainable,
            resumed=self.resume.times if self.resume else 0,
        )
        self.record.paths.run_dir = str(self.run_dir)
        self.record.write(self.run_dir, launch.rank)
        return self

    def _open(self):
        from pipeline.tracking.client import open_experiment
        from pipeline.tracking.datasets import log_datasets
        from pipeline.tracking.runs import reopen_run, start_run

        record = self.resume.record if self.resume else None
        if record and record.run_id:
            return reopen_run(self.launch.tracking_uri, record.run_id)
        cfg = self.cfg
        client, experiment_id = open_experiment(
            self.launch.tracking_uri, cfg.logger.experiment_name, cfg.paths.outputs
        )
        tracked = start_run(
            client,
            experiment_id,
            cfg.logger.run_name or self.launch.run_name or self.run_dir.name,
            self.trained.config,
            self.run_dir,
            self.launch.command,
            self.launch.parent_run_id,
            data_digests(cfg.data),
        )
        # A new run only: a resumed one has them already.
        log_datasets(tracked, self.datasets)
        return tracked

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        record = self.record
        record.status, record.error = self._outcome(exc)
        record.duration_s = round(time.time() - self.started, 1)
        if not self.tracked:
            record.write(self.run_dir, self.launch.rank)
            return
        from pipeline.run.logged_models import log_run_models
        from pipeline.tracking.runs import failure_tags, finish_run

        record.ui_url = self.tracked.ui_url()
        try:
            if self.monitor:
                self.monitor.finish()
            self.logger.finalize(record.status.value)
            tags = failure_tags(record.status, record.error)
            if exc is None:
                in_sweep = self.launch.parent_run_id is not None
                tags |= log_run_models(self.cfg, self.tracked, record, in_sweep)
            record.write(self.run_dir, self.launch.rank)
            artifacts = {"": self.run_dir / "run.json"}
            if exc is None:
                artifacts.update(self._artifacts())
            size = {
                "model.num_parameters": self.n_params,
                "model.trainable_parameters": self.n_trainable,
                "model.trainable_fraction": f"{self.n_trainable / self.n_params:.6f}",
            }
            finish_run(self.tracked, record.status, artifacts, size, tags)
        except Exception as error:
            record.write(self.run_dir, self.launch.rank)
            if exc is None:
                raise
            # The run's own error is the one to report; the tracking one only follows it.
            print(f"warning: could not close the MLflow run: {error}", file=sys.stderr)

    def _outcome(self, exc: BaseException | None) -> tuple[Status, str | None]:
        if exc is None:
            return Status.FINISHED, None
        if (stopped := self.stop.interrupted(exc)) is not None:
            return Status.KILLED, str(stopped)
        if isinstance(exc, TrialPruned):
            return Status.PRUNED, str(exc)
        if isinstance(exc, UserError):
            return Status.FAILED, str(exc)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return Status.FAILED, "interrupted before the run finished"
        return Status.FAILED, f"{type(exc).__name__}: {exc}"

    def _artifacts(self) -> dict[str, Path]:
        paths = self.record.paths
        artifacts = {f"export/{fmt}": Path(p) for fmt, p in paths.exports.items()}
        report = self.run_dir / "sparsity"
        if report.is_dir():
            artifacts["sparsity"] = report
        chosen = {"best": paths.best_checkpoint, "last": paths.last_checkpoint}.get(
            self.cfg.logger.log_checkpoint
        )
        if chosen:
            artifacts["checkpoints"] = Path(chosen)
        return artifacts
