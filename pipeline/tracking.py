"""MLflow tracking: the store, one run per experiment run, batched metrics, artifacts, run.json.

The run is created with MlflowClient rather than Lightning's MLFlowLogger, which truncates
param values to 250 characters and falls back to a file store unless told otherwise.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from pipeline.config import PROJECT_ROOT, LoggerConfig
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.provenance import (
    OVERRIDES_TAG,
    git_diff,
    package_versions,
    recorded_overrides,
    redact,
    redact_all,
)
from pipeline.sweep import PARENT_ENV
from pipeline.tracking_uri import resolve_tracking_uri

PARAM_VALUE_LIMIT = 6000  # MLflow's own limit
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.emb_dim": "128", ...}; lists stay whole as JSON."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:PARAM_VALUE_LIMIT]
    return flat


def git_state(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The commit and dirty flag of the project checkout, when it is a git repository."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


@dataclass
class TrackedRun:
    client: MlflowClient
    run_id: str
    experiment_id: str
    tracking_uri: str

    def ui_url(self, host: str = "http://127.0.0.1:5000") -> str:
        base = redact(self.tracking_uri) if self.tracking_uri.startswith("http") else host
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def _command() -> str:
    """The command line that started this process, credentials redacted."""
    return redact(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))


def _retry_locked(call: Any, *args: Any, **kwargs: Any) -> Any:
    """SQLite admits one writer at a time. MLflow's busy_timeout covers waiting for the lock,
    but a transaction that must upgrade a read lock fails at once with 'database is locked'
    when parallel trials write together; such a write is tried again after a short pause."""
    for attempt in range(6):
        try:
            return call(*args, **kwargs)
        except MlflowException as exc:
            if "database is locked" not in str(exc) or attempt == 5:
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


def client_for(cfg: LoggerConfig, outputs: str | Path) -> Client:
    return Client(tracking_uri=resolve_tracking_uri(cfg, outputs))


def open_experiment(cfg: LoggerConfig, outputs: str | Path) -> tuple[Client, str]:
    """The client and id of `cfg.experiment_name`, created if it is new. A local store keeps
    its artifacts under outputs/mlartifacts; a server decides for itself."""
    client = client_for(cfg, outputs)
    name = cfg.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    location = None
    if not client.tracking_uri.startswith("http"):
        location = (Path(outputs).resolve() / "mlartifacts" / name).as_uri()
    try:
        return client, client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process created it between our lookup and our create.
        return client, client.get_experiment_by_name(name).experiment_id


def start_run(
    cfg: LoggerConfig,
    outputs: str | Path,
    config: Mapping[str, Any],
    run_dir: Path,
    extra_params: Mapping[str, str] | None = None,
) -> TrackedRun:
    """Create the MLflow run: params (the whole resolved config, plus `extra_params`), tags,
    and what it takes to run it again (see provenance.py). Credentials never reach it."""
    client, experiment_id = open_experiment(cfg, outputs)
    tags = {
        "run_dir": str(run_dir),
        "command": _command(),
        "mlflow.source.name": "pipeline.train",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
        **git_state(),
    }
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags["mlflow.parentRunId"] = parent
    overrides = recorded_overrides(run_dir)
    if overrides is not None:
        tags[OVERRIDES_TAG] = json.dumps(redact_all(overrides))
    run = client.create_run(experiment_id, tags=tags, run_name=cfg.run_name or run_dir.name)
    run_id = run.info.run_id
    flat = {**flatten(redact_all(dict(config))), **(extra_params or {})}
    params = [Param(k, v) for k, v in flat.items()]
    for i in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + PARAMS_PER_BATCH])
    config_yaml = run_dir / ".hydra" / "config.yaml"
    if config_yaml.is_file():
        client.log_text(run_id, redact(config_yaml.read_text()), "config.yaml")
    client.log_text(run_id, package_versions(), "packages.txt")
    diff = git_diff()
    if diff:
        client.log_text(run_id, diff, "git.diff")
    return TrackedRun(client, run_id, experiment_id, client.tracking_uri)


def start_parent_run(cfg: LoggerConfig, outputs: str | Path, sweep: Mapping[str, str]) -> str:
    """The parent run of a sweep: its definition as params; the trials are its children."""
    client, experiment_id = open_experiment(cfg, outputs)
    tags = {"sweep": "parent", "command": _command()}
    run = client.create_run(experiment_id, tags={**tags, **git_state()}, run_name="sweep")
    client.log_batch(
        run.info.run_id, params=[Param(k, v[:PARAM_VALUE_LIMIT]) for k, v in sweep.items()]
    )
    return run.info.run_id


def finish_parent_run(
    config,
    run_id: str,
    best: dict | None,
    metric: str,
    files: list[Path],
    stopped: str | None = None,
) -> None:
    """The sweep's summary files, its best trial, and the end of the parent run: KILLED with
    the reason when a signal `stopped` the sweep."""
    from omegaconf import OmegaConf

    from pipeline.config import LoggerConfig

    cfg = LoggerConfig.model_validate(OmegaConf.to_container(config.logger, resolve=True))
    client = client_for(cfg, config.paths.outputs)
    for path in files:
        client.log_artifact(run_id, str(path))
    tags = [RunTag("error", stopped)] if stopped else []
    metrics, params = [], []
    if best is not None:
        metrics = [Metric(f"best/{metric}", float(best["value"]), int(time.time() * 1000), 0)]
        params = [Param(f"best.{k}", str(v)) for k, v in best["params"].items()]
        tags += [
            RunTag("best_run_id", best["run_id"] or ""),
            RunTag("best_trial", str(best["trial"])),
        ]
    # log_batch, not set_tag: Client retries it when parallel trials hold the SQLite lock.
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    status = "KILLED" if stopped else "FINISHED" if best is not None else "FAILED"
    client.set_terminated(run_id, status=status)


def reopen_run(cfg: LoggerConfig, outputs: str | Path, run_id: str) -> TrackedRun:
    """An interrupted run, back to RUNNING, to continue logging into it; the reason it
    stopped (its `error` tag) no longer applies."""
    client = client_for(cfg, outputs)
    run = client.get_run(run_id)
    client.update_run(run_id, status="RUNNING")
    if "error" in run.data.tags:
        client.delete_tag(run_id, "error")
    return TrackedRun(client, run_id, run.info.experiment_id, client.tracking_uri)


def is_run_id(text: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{32}", text) is not None


def recorded_run(cfg: LoggerConfig, outputs: str | Path, run_id: str, option: str):
    """The MLflow run `run_id` in the store training would use; `option` (e.g. 'resume=<id>')
    names what asked for it in the error."""
    uri = resolve_tracking_uri(cfg, outputs)
    try:
        return MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        raise UserError(
            f"{option}: no such MLflow run in {redact(uri)}. Check the run id, or pass "
            "logger.tracking_uri=... / paths.outputs=... for the store that recorded it."
        ) from None


def run_dir_of(cfg: LoggerConfig, outputs: str | Path, run_id: str) -> Path:
    """The run folder an MLflow run was trained in (its `run_dir` tag)."""
    run = recorded_run(cfg, outputs, run_id, f"resume={run_id}")
    if "run_dir" not in run.data.tags:
        raise UserError(
            f"resume={run_id}: that MLflow run has no run_dir tag (it was not trained by "
            "pipeline.train). Pass its run folder or .ckpt instead."
        )
    return Path(run.data.tags["run_dir"])


def last_step(run: TrackedRun) -> int:
    """The highest step of any metric already in the run (-1 for a new run)."""
    steps = [
        m.step
        for key in run.client.get_run(run.run_id).data.metrics
        for m in run.client.get_metric_history(run.run_id, key)
    ]
    return max(steps, default=-1)


def finish_run(
    run: TrackedRun,
    status: str,
    artifacts: Mapping[str, Path] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Log the last params and tags, upload artifacts (a file or a folder under each artifact
    path), then close the run."""
    try:
        run.client.log_batch(
            run.run_id,
            params=[Param(k, redact(str(v))) for k, v in (params or {}).items()],
            tags=[RunTag(k, redact(v)[:5000]) for k, v in (tags or {}).items()],
        )
        for artifact_path, local in (artifacts or {}).items():
            if local.is_dir():
                run.client.log_artifacts(run.run_id, str(local), artifact_path)
            elif local.is_file():
                run.client.log_artifact(run.run_id, str(local), artifact_path)
    finally:
        run.client.set_terminated(run.run_id, status=status)


class BatchedMLflowLogger(Logger):
    """Lightning logger writing into an existing MLflow run, batching metrics into few requests."""

    def __init__(
        self,
        run: TrackedRun,
        flush_every: int = 500,
        flush_seconds: float = 10.0,
        skip_through: int = -1,
    ):
        super().__init__()
        self.run = run
        # A resumed run replays the steps after its last checkpoint; those were logged already.
        self.skip_through = skip_through
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run.run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        return self.run.client

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        # The whole resolved config is logged once by start_run.
        pass

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        if (step or 0) <= self.skip_through:
            return
        for key, value in metrics.items():
            self._buffer.append(Metric(key, float(value), timestamp, step or 0))
        # Checkpoints flush too, before they appear (faults.AtomicCheckpointIO).
        if (
            len(self._buffer) >= self.flush_every
            or time.monotonic() - self._last_flush > self.flush_seconds
        ):
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        for i in range(0, len(self._buffer), METRICS_PER_BATCH):
            self.run.client.log_batch(
                self.run.run_id, metrics=self._buffer[i : i + METRICS_PER_BATCH]
            )
        self._buffer.clear()
        self._last_flush = time.monotonic()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()

    def save(self) -> None:
        # Lightning calls save() after every log_metrics; flushing here would undo the batching.
        pass


def write_run_json(run_dir: Path, record: Mapping[str, Any], name: str = "run.json") -> Path:
    return write_json(run_dir / name, dict(record))


def run_status(failed: bool, killed: bool = False) -> str:
    if killed:
        return RunStatus.to_string(RunStatus.KILLED)
    return RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)


def mlflow_status(status: str) -> str:
    """run.json's status as an MLflow run status: a pruned search trial is KILLED (MLflow has
    no PRUNED) and tagged `pruned` (failure_tags)."""
    return RunStatus.to_string(RunStatus.KILLED) if status == "PRUNED" else status


def failure_tags(record: Mapping[str, Any]) -> dict[str, str] | None:
    if "error" not in record:
        return None
    if record["status"] == "PRUNED":
        return {"pruned": "true", "optuna.state": "PRUNED", "error": record["error"]}
    return {"error": record["error"]}
