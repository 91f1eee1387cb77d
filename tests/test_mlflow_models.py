"""MLflow's own entities for a run: its splits as datasets, its model as a logged model that
MLflow's loaders and `mlflow models serve` use, the registry and its alias, and evaluations
nested under the run they evaluate. A real SQLite store and real server processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.client import TrackedRun, open_experiment
from pipeline.tracking.runs import last_step
from tests.helpers import TINY, run_cli, seed_store, train_here, wait_until_up
from tests.test_server import free_port

pytestmark = pytest.mark.slow

PROMPT = "URGENT! You have won a prize, call now"


def _train(outputs: Path, *args: str, epochs: int = 1) -> dict:
    """A tracked run in this process (what it records is the command's: test_e2e.py runs it
    as a command line)."""
    return train_here(
        outputs, *TINY, f"trainer.max_epochs={epochs}", "logger.log_models=final", *args
    )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, dict]:
    outputs = tmp_path_factory.mktemp("classifier") / "outputs"
    return outputs, _train(outputs, "logger.register_as=sms-spam")


@pytest.fixture(scope="module")
def generated(classifier) -> dict[str, float]:
    """What python -m pipeline.generate says of PROMPT with the classifier."""
    outputs, record = classifier
    return _generated_probabilities(record["paths"]["run_dir"], outputs)


def _client(outputs: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{outputs}/mlflow.db")


def _generated_probabilities(ckpt: str, outputs: Path) -> dict[str, float]:
    """What python -m pipeline.generate says of PROMPT: {label: probability} (3 decimals)."""
    result = run_cli("generate", f"ckpt={ckpt}", f"prompt='{PROMPT}'", f"paths.outputs={outputs}")
    assert result.returncode == 0, result.stderr[-2000:]
    ranked = result.stdout.split("labels the prompt instead: ")[1].strip()
    return {part.split()[0]: float(part.split()[1]) for part in ranked.split(", ")}


def test_a_run_logs_its_splits_as_datasets_found_by_digest(classifier) -> None:
    outputs, record = classifier
    client = _client(outputs)
    run = client.get_run(record["run_id"])
    inputs = {t.value: d.dataset for d in run.inputs.dataset_inputs for t in d.tags}
    assert set(inputs) == {"training", "validation", "testing"}
    train = inputs["training"]
    assert train.name == "sms_spam_400-train" and len(train.digest) == 16
    assert json.loads(train.profile) == {"num_rows": 320}
    assert len({d.digest for d in inputs.values()}) == 3  # three different sets of examples
    # MLflow's own API finds the file, and finds the run by the digest.
    source = mlflow.data.get_source(train)
    assert Path(source.load()).name == "sms_spam_400.tsv"
    found = client.search_runs([run.info.experiment_id], f"dataset.digest = '{train.digest}'")
    assert [r.info.run_id for r in found] == [record["run_id"]]


def test_the_final_model_loads_with_mlflow_and_predicts_what_generate_says(
    classifier, generated
) -> None:
    outputs, record = classifier
    client = _client(outputs)
    run = client.get_run(record["run_id"])
    (output,) = run.outputs.model_outputs
    assert record["model_uri"] == f"models:/{output.model_id}"
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == record["run_id"]
    # The run's final metrics (test split, at the model's step) are the model's metrics.
    linked = {m.key: m.value for m in model.metrics or []}
    assert linked["test/acc"] == pytest.approx(record["metrics"]["test/acc"])
    # Registered under its alias; MLflow's pyfunc loader gives generate's probability.
    version = client.get_model_version_by_alias("sms-spam", "candidate")
    assert version.run_id == record["run_id"] and version.source == record["model_uri"]
    registered = json.loads(client.get_logged_model(output.model_id).tags["mlflow.modelVersions"])
    assert registered == [{"name": "sms-spam", "version": version.version}]
    assert record["registered_model"] == "models:/sms-spam@candidate"
    mlflow.set_tracking_uri(f"sqlite:///{outputs}/mlflow.db")
    predicted = mlflow.pyfunc.load_model("models:/sms-spam@candidate").predict([PROMPT])
    assert predicted["label"][0] == "spam"  # the export's one logit is P(spam)
    assert predicted["score"][0] == pytest.approx(generated["spam"], abs=1e-3)


def test_mlflow_models_serve_answers_with_generate_s_probability(classifier, generated) -> None:
    outputs, _ = classifier
    port = free_port()
    # As `make serve` runs it: MLflow starts uvicorn from the PATH, so the venv's bin is on it.
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    path = f"{mlflow_bin.parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db", "PATH": path}
    command = [str(mlflow_bin), "models", "serve", "-m", "models:/sms-spam@candidate"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", server)
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": [PROMPT]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            (answer,) = json.loads(response.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert answer["label"] == "spam"
    assert answer["score"] == pytest.approx(generated["spam"], abs=1e-3)


def test_a_language_model_logs_every_kept_checkpoint_and_greedy_text(tmp_path: Path) -> None:
    """logger.log_models=checkpoints: each kept checkpoint is a model at its step, and the final
    one generates what python -m pipeline.generate generates (greedy)."""
    outputs = tmp_path / "outputs"
    record = _train(
        outputs,
        "data.task=causal_lm",
        "trainer.checkpoint.save_top_k=3",
        "logger.log_models=checkpoints",
        "logger.system_metrics_interval_s=0.2",
        epochs=3,
    )
    run = _client(outputs).get_run(record["run_id"])
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)
    by_step = {m.step: m.model_id for m in run.outputs.model_outputs}
    assert sorted(by_step) == [20, 40, 60]  # 20 batches an epoch; 60 is the final one
    assert record["model_uri"] == f"models:/{by_step[60]}"
    mlflow.set_tracking_uri(f"sqlite:///{outputs}/mlflow.db")
    (text,) = mlflow.pyfunc.load_model(record["model_uri"]).predict(["Free entry"])
    (early,) = mlflow.pyfunc.load_model(f"models:/{by_step[20]}").predict(["Free entry"])
    result = run_cli(
        "generate",
        f"ckpt={record['paths']['run_dir']}",
        "prompt='Free entry'",
        "temperature=0",
        "max_new_tokens=64",
        f"paths.outputs={outputs}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert text == result.stdout.strip().splitlines()[-1]
    assert early.startswith("Free entry")  # the step-20 model loads and generates too


def test_the_last_training_step_ignores_system_metrics_sample_counts(tmp_path: Path) -> None:
    """A model is logged at the run's last training step, and a resume skips metrics up to
    it; MLflow's system metrics count samples in their step, which a slow run (0.2 s samples
    under load) pushed past the training's last step, so the final model was logged at step 80
    of a 60-step run."""
    seed_store([f"paths.outputs={tmp_path}"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client, experiment_id = open_experiment(uri, "steps", tmp_path)
    run = client.create_run(experiment_id)
    tracked = TrackedRun(client, run.info.run_id, experiment_id, uri)
    assert last_step(tracked) == -1
    client.log_metric(run.info.run_id, "train/loss", 1.0, step=60)
    client.log_metric(run.info.run_id, "system/cpu_utilization_percentage", 50.0, step=80)
    assert last_step(tracked) == 60


def test_evaluate_is_a_run_nested_under_the_training_run_with_its_table(classifier) -> None:
    outputs, record = classifier
    result = run_cli("evaluate", f"ckpt={record['paths']['run_dir']}", f"paths.outputs={outputs}")
    assert result.returncode == 0, result.stderr[-2000:]
    client = _client(outputs)
    (child,) = client.search_runs(
        [record["experiment_id"]], f"tags.mlflow.parentRunId = '{record['run_id']}'"
    )
    assert child.info.status == "FINISHED" and child.info.run_name == "evaluate-test"
    assert child.data.metrics["test/acc"] == pytest.approx(record["metrics"]["test/acc"])
    (evaluated,) = child.inputs.dataset_inputs
    assert evaluated.tags[0].value == "evaluation"
    # The metrics are the final model's, on that dataset (MLflow 3's model metrics).
    model_id = record["model_uri"].removeprefix("models:/")
    linked = [m for m in client.get_logged_model(model_id).metrics if m.run_id == child.info.run_id]
    assert {m.key for m in linked} == {"test/acc", "test/f1", "test/loss"}
    assert {m.dataset_digest for m in linked} == {evaluated.dataset.digest}
    # One row per test example, readable with MLflow's table API (which searches the runs
    # of the fluent API's store, whatever the client's).
    mlflow.set_tracking_uri(f"sqlite:///{outputs}/mlflow.db")
    table = client.load_table(
        record["experiment_id"], "predictions.json", run_ids=[child.info.run_id]
    )
    assert len(table) == 40 and {"text", "label", "predicted", "p(spam)"} <= set(table.columns)
    accuracy = (table["label"] == table["predicted"]).mean()
    assert accuracy == pytest.approx(child.data.metrics["test/acc"])


def test_a_registry_that_fails_leaves_the_run_finished_with_the_failure_tagged(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The registry (MLFLOW_REGISTRY_URI) does not answer: the model is still logged, the run
    still ends FINISHED, and the failure is a warning and a tag, after training."""
    outputs = tmp_path / "outputs"
    nobody = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", nobody)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    record = _train(outputs, "logger.register_as=sms-spam")
    assert "warning: could not register the model as 'sms-spam'" in capsys.readouterr().err
    assert record["status"] == "FINISHED" and "registered_model" not in record
    run = _client(outputs).get_run(record["run_id"])
    assert run.info.status == "FINISHED" and "registry.error" in run.data.tags
    assert record["model_uri"] and run.outputs.model_outputs


def test_a_model_name_mlflow_would_refuse_is_refused_before_training(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = run_cli("train", f"paths.outputs={outputs}", *TINY, "logger.register_as=team/sms")
    assert result.returncode == 2 and "logger.register_as" in result.stderr
    assert "Traceback" not in result.stderr and not list(outputs.glob("runs/*/*/*"))
