"""A run's model as an MLflow logged model (MLflow 3), and its registration.

The Hugging Face export is logged through MLflow's transformers flavor as a pipeline, so that
MLflow's own loaders use it: `mlflow.pyfunc.load_model("models:/<id>")` (or `mlflow models
serve`) gives a classifier's label and its probability (text-classification: the most likely
label of several; a binary classifier's positive label, whatever its value, since its export
has one logit) and a language model's greedy continuation (text-generation, at most
`max_new_tokens`). The model is an output of the run at its step, so the run's metrics at
that step are the model's metrics in the UI.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID, MLFLOW_TRACKING_URI
from mlflow.tracking import is_tracking_uri_set

from pipeline.tracking.client import Client, TrackedRun

TASKS = {
    "classification": "text-classification",
    "causal_lm": "text-generation",
    "instruct": "text-generation",
}
EXAMPLE = "Hello, how are you?"


def log_model(run: TrackedRun, hf_dir: Path, task: str, step: int, max_new_tokens: int = 64) -> str:
    """Log the Hugging Face folder `hf_dir` as a model of `run` at `step`; its model id."""
    import torch
    import transformers

    pipeline_task = TASKS[task]
    options = {"top_k": None} if pipeline_task == "text-classification" else {}
    config = {} if options else {"max_new_tokens": max_new_tokens, "do_sample": False}
    with _quiet(), _tracking(run):
        pipe = transformers.pipeline(pipeline_task, model=str(hf_dir), **options)
        info = mlflow.transformers.log_model(
            pipe,
            name="model",
            run_id=run.run_id,
            step=step,
            input_example=[EXAMPLE],
            model_config=config or None,
            # Inferred requirements would pin packages the model does not use (torchvision).
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"transformers=={transformers.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
        )
    return info.model_id


def register(run: TrackedRun, model_id: str, name: str, alias: str) -> str:
    """A new version of registered model `name` (created if new) from the logged model,
    pointed at by `alias`; the version number. MLflow's register_model also records the
    version on the logged model, which the UI shows."""
    with _quiet(), _tracking(run):
        version = mlflow.register_model(f"models:/{model_id}", name)
    run.client.set_registered_model_alias(name, alias, version.version)
    return version.version


@contextlib.contextmanager
def _tracking(run: TrackedRun) -> Iterator[None]:
    """MLflow's fluent API (which the flavors use) pointed at the run's store and experiment
    for the duration, then put back: set_tracking_uri and set_experiment also write
    MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_ID into the environment, where the next trial of
    an in-process sweep would read them as the user's."""
    variables = (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID)
    saved = [v.get() if v.defined else None for v in variables]
    uri = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(run.tracking_uri)
    mlflow.set_experiment(experiment_id=run.experiment_id)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uri)
        for variable, value in zip(variables, saved, strict=True):
            if value is None:
                variable.unset()
            else:
                variable.set(value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or hub warnings (no model card on a local folder) in the run's log."""
    import transformers

    loggers = [logging.getLogger(name) for name in ("mlflow.transformers", "mlflow.models")]
    levels = [logger.level for logger in loggers]
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def final_model(run: Run) -> str | None:
    """The id of the model a run logged last (its final export), if it logged any."""
    outputs = run.outputs.model_outputs if run.outputs else []
    return max(outputs, key=lambda output: output.step).model_id if outputs else None


def register_best(uri: str, run_id: str, name: str, alias: str) -> str:
    """Register the final model of run `run_id` (a sweep's best trial); the version."""
    client = Client(tracking_uri=uri)
    run = client.get_run(run_id)
    final = final_model(run)
    if final is None:
        raise ValueError(f"run {run_id} logged no model (logger.log_models=none?)")
    tracked = TrackedRun(client, run_id, run.info.experiment_id, uri)
    return register(tracked, final, name, alias)
