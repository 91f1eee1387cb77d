"""One MLflow run per training run (params, tags, artifacts, its end) and one parent run per
sweep. The run is created with our client rather than Lightning's MLFlowLogger, which truncates
param values to 250 characters."""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from pipeline.record import Status
from pipeline.tracking.client import Client, TrackedRun, open_experiment
from pipeline.tracking.provenance import (
    ENTRY_POINT,
    OVERRIDES_TAG,
    git_diff,
    git_state,
    package_versions,
    recorded_overrides,
    redact,
    redact_all,
)

PARAM_VALUE_LIMIT = 6000  # MLflow's own limit
PARAMS_PER_BATCH = 100


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


def start_run(
    client: Client,
    experiment_id: str,
    run_name: str,
    config: Mapping[str, Any],
    run_dir: Path,
    command: str,
    parent_run_id: str | None = None,
    extra_params: Mapping[str, str] | None = None,
) -> TrackedRun:
    """Create the MLflow run: params (the whole resolved config, plus `extra_params`), tags,
    and what it takes to run it again (see provenance.py). Credentials never reach it."""
    tags = {
        "run_dir": str(run_dir),
        "command": command,
        **_source(),
        **git_state(),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    overrides = recorded_overrides(run_dir)
    if overrides is not None:
        tags[OVERRIDES_TAG] = json.dumps(redact_all(overrides))
    run = client.create_run(experiment_id, tags=tags, run_name=run_name)
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


def _source() -> dict[str, str]:
    return {
        "mlflow.source.name": ENTRY_POINT,
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
    }


def reopen_run(uri: str, run_id: str) -> TrackedRun:
    """An interrupted run, back to RUNNING, to continue logging into it; the reason it
    stopped (its `error` tag) no longer applies."""
    client = Client(tracking_uri=uri)
    run = client.get_run(run_id)
    client.update_run(run_id, status=Status.RUNNING.value)
    if "error" in run.data.tags:
        client.delete_tag(run_id, "error")
    return TrackedRun(client, run_id, run.info.experiment_id, client.tracking_uri)


def last_step(run: TrackedRun) -> int:
    """The highest training step of any metric already in the run (-1 for a new run).
    MLflow's system metrics (system/...) are left out: their step counts samples, one every
    logger.system_metrics_interval_s, and a slow run's count passed its last training step."""
    steps = [
        m.step
        for key in run.client.get_run(run.run_id).data.metrics
        if not key.startswith("system/")
        for m in run.client.get_metric_history(run.run_id, key)
    ]
    return max(steps, default=-1)


def finish_run(
    run: TrackedRun,
    status: Status,
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
        run.client.set_terminated(run.run_id, status=status.mlflow)


def failure_tags(status: Status, error: str | None) -> dict[str, str]:
    """Why a run did not finish: a pruned search trial is tagged `pruned` (MLflow has no
    PRUNED status)."""
    if error is None:
        return {}
    if status is Status.PRUNED:
        return {"pruned": "true", "optuna.state": "PRUNED", "error": error}
    return {"error": error}


def start_parent_run(
    uri: str,
    experiment: str,
    outputs: str | Path,
    name: str,
    command: str,
    sweep: Mapping[str, str],
) -> str:
    """The parent run of a sweep: its definition as params; the trials are its children."""
    client, experiment_id = open_experiment(uri, experiment, outputs)
    tags = {"sweep": "parent", "command": command, **_source(), **git_state()}
    run = client.create_run(experiment_id, tags=tags, run_name=name)
    client.log_batch(
        run.info.run_id, params=[Param(k, v[:PARAM_VALUE_LIMIT]) for k, v in sweep.items()]
    )
    return run.info.run_id


def finish_parent_run(
    uri: str,
    run_id: str,
    best: dict | None,
    metric: str,
    files: list[Path],
    stopped: str | None = None,
) -> None:
    """The sweep's summary files, its best trial, and the end of the parent run: KILLED with
    the reason when a signal `stopped` the sweep. The best trial's values are tags, not params
    (which MLflow never lets change): a sweep continued later may find a better one."""
    client = Client(tracking_uri=uri)
    for path in files:
        client.log_artifact(run_id, str(path))
    tags = [RunTag("error", stopped)] if stopped else []
    metrics = []
    if best is not None:
        metrics = [Metric(f"best/{metric}", float(best["value"]), int(time.time() * 1000), 0)]
        tags += [RunTag(f"best.{k}", str(v)) for k, v in best["params"].items()]
        tags += [
            RunTag("best_run_id", best["run_id"] or ""),
            RunTag("best_trial", str(best["trial"])),
        ]
    # log_batch, not set_tag: Client retries it when parallel trials hold the SQLite lock.
    client.log_batch(run_id, metrics=metrics, tags=tags)
    status = Status.KILLED if stopped else Status.FINISHED if best is not None else Status.FAILED
    client.set_terminated(run_id, status=status.mlflow)
