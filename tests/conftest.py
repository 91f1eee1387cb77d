"""Fixtures every test file can use; the shared helpers are in tests/helpers.py."""

from __future__ import annotations

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
