"""Tracking over HTTP: a real `mlflow server` process on 127.0.0.1, and a server that is not
there."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY, run_cli

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
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (
                "mlflow server did not start"
            )
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_training_records_into_a_tracking_server_over_http(server, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = run_cli(
        "train",
        f"paths.outputs={outputs}",
        *TINY,
        "trainer.max_epochs=1",
        f"logger.tracking_uri={server}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_json,) = outputs.glob("runs/*/*/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["tracking_uri"] == server and record["ui_url"].startswith(server)
    client = MlflowClient(server)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "gpt-tiny"
    assert "test/acc" in run.data.metrics
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (outputs / "mlflow.db").exists()  # nothing went to the local store


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
