"""Fixtures every test file can use; the shared helpers are in tests/helpers.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.helpers import STORE


@pytest.fixture(scope="session", autouse=True)
def store_template(tmp_path_factory: pytest.TempPathFactory) -> None:
    from mlflow.tracking import MlflowClient

    template = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()
    STORE.update(template=template, root=tmp_path_factory.getbasetemp())


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture(autouse=True)
def process_state():
    """Each test leaves what it changes of this process's shared state as it found it, since
    make test runs the files of one worker in whatever order it is given them.

    - The root logger's handlers: Hydra's job logging binds its handler to the sys.stdout of
      the run that configured it; in a test with capsys that stream is closed when the test
      ends, and the next test's first log line printed a 'Logging error' traceback.
    - MLflow's tracking URI: mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which the
      next in-process command read as the user's store and recorded its run there.
    """
    import mlflow

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    environ = dict(os.environ)
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    mlflow.set_tracking_uri(None)
    os.environ.clear()
    os.environ.update(environ)
