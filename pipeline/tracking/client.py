"""The MLflow client: writes that survive a busy SQLite store, experiments opened or created,
and runs looked up by id."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from pipeline.config.locations import STORES, public
from pipeline.errors import UserError, first_line
from pipeline.tracking.provenance import redact


def _retry_locked(call: Any, *args: Any, retry_on: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """SQLite admits one writer at a time. MLflow's busy_timeout covers waiting for the lock,
    but a transaction that must upgrade a read lock fails at once with 'database is locked'
    when parallel trials write together; such a write is tried again after a short pause (as
    is one that failed with any of `retry_on`)."""
    for attempt in range(6):
        try:
            return call(*args, **kwargs)
        except MlflowException as exc:
            transient = ("database is locked", *retry_on)
            if not any(text in str(exc) for text in transient) or attempt == 5:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


class Client(MlflowClient):
    """MlflowClient whose writes survive a busy SQLite store (parallel trials)."""

    def create_experiment(self, *args: Any, **kwargs: Any) -> str:
        return _retry_locked(super().create_experiment, *args, **kwargs)

    def create_run(self, *args: Any, **kwargs: Any) -> Any:
        return _retry_locked(super().create_run, *args, **kwargs)

    def log_batch(self, *args: Any, **kwargs: Any) -> Any:
        return _retry_locked(super().log_batch, *args, **kwargs)

    def update_run(self, *args: Any, **kwargs: Any) -> Any:
        return _retry_locked(super().update_run, *args, **kwargs)

    def set_terminated(self, *args: Any, **kwargs: Any) -> Any:
        return _retry_locked(super().set_terminated, *args, **kwargs)

    def delete_tag(self, *args: Any, **kwargs: Any) -> Any:
        return _retry_locked(super().delete_tag, *args, **kwargs)

    def log_inputs(self, *args: Any, **kwargs: Any) -> Any:
        # Parallel trials log the same new dataset at once: one insert wins, and the other,
        # refused by the unique constraint, finds it there when tried again.
        retry = ("UNIQUE constraint failed",)
        return _retry_locked(super().log_inputs, *args, retry_on=retry, **kwargs)


@dataclass
class TrackedRun:
    client: Client
    run_id: str
    experiment_id: str
    tracking_uri: str

    def ui_url(self, host: str = "http://127.0.0.1:5000") -> str:
        """The run's page: on the tracking server, without any credentials in its address (a
        browser asks for them), or on the local UI (make ui) for a local store."""
        base = public(self.tracking_uri) if self.tracking_uri.startswith("http") else host
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


# What opening a store raises when it cannot be opened: MLflow's refusals (its file store
# without MLFLOW_ALLOW_FILE_STORE, a server's errors), a database driver not installed, the
# database's own refusal, a folder that cannot be made. Validation refuses what it can tell
# from logger.tracking_uri alone; MLFLOW_TRACKING_URI and the store itself are met here.
_UNOPENED = (MlflowException, ImportError, SQLAlchemyError, OSError)


def open_experiment(uri: str, name: str, outputs: str | Path) -> tuple[Client, str]:
    """The client and id of experiment `name`, created if it is new. A local store keeps its
    artifacts under <outputs>/mlartifacts; a server decides for itself."""
    try:
        client = Client(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
    except _UNOPENED as exc:
        raise UserError(
            f"MLflow could not open the tracking store {redact(uri)} ({first_line(exc)}). Fix "
            f"logger.tracking_uri or MLFLOW_TRACKING_URI ({STORES}), or track nothing: "
            "logger=none."
        ) from None
    if experiment is not None:
        return client, experiment.experiment_id
    location = None
    if not uri.startswith("http"):
        location = (Path(outputs).resolve() / "mlartifacts" / name).as_uri()
    try:
        # The UI opens a model-training experiment at its runs, not at GenAI traces.
        tags = {"mlflow.experimentKind": "custom_model_development"}
        return client, client.create_experiment(name, artifact_location=location, tags=tags)
    except MlflowException as exc:
        # Another process may have created it between our lookup and our create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise UserError(
                f"MLflow refused to create the experiment {name!r} in {redact(uri)} "
                f"({first_line(exc)}). Choose another logger.experiment_name."
            ) from None
        return client, experiment.experiment_id


def recorded_run(uri: str, run_id: str, option: str):
    """The MLflow run `run_id` in the store at `uri`; `option` (e.g. 'resume=<id>') names what
    asked for it in the error."""
    try:
        return MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        raise UserError(
            f"{option}: no such MLflow run in {redact(uri)}. Check the run id, or pass "
            "logger.tracking_uri=... / paths.outputs=... for the store that recorded it."
        ) from None


def run_dir_of(uri: str, run_id: str) -> Path:
    """The run folder an MLflow run was trained in (its `run_dir` tag)."""
    run = recorded_run(uri, run_id, f"resume={run_id}")
    if "run_dir" not in run.data.tags:
        raise UserError(
            f"resume={run_id}: that MLflow run has no run_dir tag (it was not trained by "
            "pipeline.train). Pass its run folder or .ckpt instead."
        )
    return Path(run.data.tags["run_dir"])
