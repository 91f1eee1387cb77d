"""The data of a run as MLflow datasets, so that the run's Dataset column names them and runs on
the same examples can be found by digest (search_runs over `dataset.digest`, or the UI's
dataset filter).

Each split is one dataset: named after its file and split (`sms-train`), its digest a hash of
the examples themselves (pipeline/data/records.py), its source the local file (so
`mlflow.data.get_source(...).load()` finds it), its profile the number of examples, and its
context the part it played: training, validation or testing (evaluation for python -m
pipeline.evaluate).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipeline.data.bundle import SplitSource
from pipeline.tracking.client import TrackedRun

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def as_dataset(split: str, source: SplitSource) -> Dataset:
    stem = Path(source.path).stem if source.path else "data"
    location = {"uri": Path(source.path).as_uri()} if source.path else {"uri": "unknown"}
    return Dataset(
        name=split.replace("/", "-") if "/" in split else f"{stem}-{split}",
        digest=source.digest,
        source_type="local",
        source=json.dumps(location),
        profile=json.dumps(
            {"num_rows": source.examples}
            | ({} if source.share is None else {"share_of_mixture": source.share})
        ),
    )


def log_datasets(
    run: TrackedRun, sources: Mapping[str, SplitSource], context: str | None = None
) -> None:
    """Each non-empty split as an input of the run, in its own context or in `context`."""
    inputs = [
        DatasetInput(
            as_dataset(split, source),
            [InputTag(MLFLOW_DATASET_CONTEXT, context or CONTEXTS.get(split, "training"))],
        )
        for split, source in sources.items()
        if source.examples
    ]
    if inputs:
        run.client.log_inputs(run.run_id, datasets=inputs)
