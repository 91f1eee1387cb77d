"""Tracking over HTTP: a real `mlflow server` process on 127.0.0.1, and a server that is not
there."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import TINY, run_cli, wait_until_up

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_until_up(f"{uri}/health", proc)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


# A password in the tracking URI and tokens in the environment, planted to leak: one run
# serves both the recording over HTTP and the secrets tests.
SECRETS = {"uri": "pw-in-the-uri-5f2c", "env": "hf_token_in_env_9a7e"}


@pytest.fixture(scope="module")
def served_run(server, tmp_path_factory) -> tuple[dict, Path]:
    outputs = tmp_path_factory.mktemp("served") / "outputs"
    user_uri = server.replace("http://", f"http://alice:{SECRETS['uri']}@")
    result = run_cli(
        "train",
        f"paths.outputs={outputs}",
        *TINY,
        "trainer.max_epochs=1",
        "logger.log_models=final",
        f"logger.tracking_uri={user_uri}",
        env={"HF_TOKEN": SECRETS["env"], "MLFLOW_TRACKING_TOKEN": SECRETS["env"]},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_json,) = outputs.glob("runs/*/*/*/run.json")
    return json.loads(run_json.read_text()), outputs


def test_training_records_into_a_tracking_server_over_http(server, served_run) -> None:
    record, outputs = served_run
    # The URI recorded has its password redacted, the UI's address has no credentials at all.
    redacted = server.replace("http://", "http://***@")
    assert record["tracking_uri"] == redacted and record["ui_url"].startswith(f"{server}/#/")
    client = MlflowClient(server)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "gpt-tiny"
    assert "test/acc" in run.data.metrics
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (outputs / "mlflow.db").exists()  # nothing went to the local store
    # MLflow's own entities over HTTP: the splits as datasets, the model loadable from the
    # server's artifact store with MLflow's loader.
    contexts = sorted(t.value for d in run.inputs.dataset_inputs for t in d.tags)
    assert contexts == ["testing", "training", "validation"]
    (output,) = run.outputs.model_outputs
    assert record["model_uri"] == f"models:/{output.model_id}"
    mlflow.set_tracking_uri(server)
    predicted = mlflow.pyfunc.load_model(record["model_uri"]).predict(["see you at lunch"])
    assert predicted["label"][0] == "spam" and 0.0 <= predicted["score"][0] <= 1.0


def test_an_unreachable_server_fails_fast_before_any_work(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    start = time.monotonic()
    result = run_cli(
        "train",
        f"paths.outputs={outputs}",
        *TINY,
        f"logger.tracking_uri=http://127.0.0.1:{free_port()}",
    )
    assert time.monotonic() - start < 15
    assert result.returncode == 2 and "does not answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(outputs.glob("runs/*/*/*/run.json")) and not (outputs / "data").exists()


def test_secrets_never_reach_the_mlflow_record(server, served_run, tmp_path: Path) -> None:
    """None of the planted secrets appears in any param, tag, metric name or artifact."""
    record, _ = served_run
    client = MlflowClient(server)
    run = client.get_run(record["run_id"])
    assert run.data.params["logger.tracking_uri"] == server.replace("http://", "http://***@")
    texts = [
        json.dumps(run.to_dictionary()),
        json.dumps(client.get_experiment(run.info.experiment_id).tags),
    ]
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "all")))
    files = [p for p in downloaded.rglob("*") if p.is_file()]
    assert {"config.yaml", "run.json", "packages.txt"} <= {p.name for p in files}
    texts += [p.read_bytes().decode("utf-8", "replace") for p in files]
    for secret in SECRETS.values():
        assert not [t for t in texts if secret in t], f"{secret} leaked into the record"
    assert "***@" in run.data.tags["command"]  # the planted password was there to leak
