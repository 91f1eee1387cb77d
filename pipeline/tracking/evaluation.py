"""An evaluation (python -m pipeline.evaluate) as an MLflow run.

When the checkpoint came from a run of ours recorded in the same store, the evaluation is a
run nested under that training run (the UI lists it beneath it); otherwise it is a run of its
own in logger.experiment_name. Its metrics are linked to the evaluated split as a dataset and,
where the training run logged one, to its final model (MLflow 3's model metrics); the
per-example outputs are an MLflow table (artifact responses.json for an instruct model,
predictions.json for a classifier; `MlflowClient().load_table(...)` reads them back and the
run's Artifacts tab shows them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from pipeline.data.bundle import SplitSource
from pipeline.record import Status, owning_run
from pipeline.tracking.client import Client, TrackedRun, open_experiment
from pipeline.tracking.datasets import as_dataset, log_datasets
from pipeline.tracking.models import final_model
from pipeline.tracking.provenance import redact


def record_evaluation(
    uri: str,
    experiment_name: str,
    outputs: str | Path,
    ckpt: str | Path,
    split: str,
    source: SplitSource | None,
    metrics: Mapping[str, float],
    rows: list[dict],
    files: list[Path],
    status: Status = Status.FINISHED,
) -> TrackedRun:
    """The evaluation's metrics, per-example table and files as an MLflow run ended with
    `status` (KILLED: stopped by a signal, with what it had done). The table is named after
    the first file (responses.jsonl -> responses.json)."""
    client, experiment_id, parent = _place(uri, experiment_name, outputs, ckpt)
    tags = {"command": "pipeline.evaluate", "mlflow.source.name": "pipeline.evaluate"}
    if parent:
        tags["mlflow.parentRunId"] = parent.info.run_id
    run = client.create_run(experiment_id, tags=tags, run_name=f"evaluate-{split}")
    tracked = TrackedRun(client, run.info.run_id, experiment_id, client.tracking_uri)
    try:
        params = {"ckpt": redact(str(Path(ckpt).resolve())), "split": split}
        model_id = final_model(parent) if parent else None
        dataset = as_dataset(split, source) if source else None
        if source:
            log_datasets(tracked, {split: source}, context="evaluation")
        now = int(time.time() * 1000)
        client.log_batch(
            tracked.run_id,
            metrics=[
                Metric(
                    key,
                    float(value),
                    now,
                    0,
                    model_id=model_id,
                    dataset_name=dataset.name if dataset else None,
                    dataset_digest=dataset.digest if dataset else None,
                )
                for key, value in metrics.items()
            ],
            params=[Param(k, v) for k, v in params.items()],
        )
        if rows and files:
            table = f"{files[0].name.split('.')[0]}.json"
            client.log_table(tracked.run_id, data=_columns(rows), artifact_file=table)
        for path in files:
            client.log_artifact(tracked.run_id, str(path))
    except BaseException:
        client.set_terminated(tracked.run_id, status=Status.FAILED.value)
        raise
    client.set_terminated(tracked.run_id, status=status.value)
    return tracked


def _place(uri: str, experiment_name: str, outputs: str | Path, ckpt: str | Path):
    """The client, experiment and parent run of the evaluation of `ckpt`."""
    record = owning_run(ckpt)
    client = Client(tracking_uri=uri)
    if record and record.run_id:
        try:
            run = client.get_run(record.run_id)
            return client, run.info.experiment_id, run
        except MlflowException:
            pass  # recorded in another store: the evaluation stands alone in this one
    client, experiment_id = open_experiment(uri, experiment_name, outputs)
    return client, experiment_id, None


def _columns(rows: list[dict]) -> dict[str, list]:
    return {key: [row.get(key) for row in rows] for key in rows[0]}
