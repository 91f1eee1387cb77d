"""Where runs are recorded, and whether that store can work (a server that answers, a
database driver that loads): light enough (no MLflow import) to check before any training
work starts."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from pipeline.config.locations import DATABASES, public, store_engine
from pipeline.errors import UserError, first_line


def default_tracking_uri(outputs: str | Path) -> str:
    return f"sqlite:///{Path(outputs).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(given: str | None, from_env: str | None, outputs: str | Path) -> str:
    """logger.tracking_uri, else MLFLOW_TRACKING_URI (read by the command), else the local
    store under paths.outputs."""
    return given or from_env or default_tracking_uri(outputs)


def check_store(uri: str, timeout: float = 5.0) -> None:
    """A store that cannot work is reported now, before any training work: a server that
    does not answer (MLflow's own client retries for minutes), a database whose driver is not
    installed (MLflow would find it out once the model is built)."""
    engine = store_engine(uri)
    if engine in ("http", "https"):
        _check_server(uri, timeout)
    elif engine in DATABASES:
        _check_driver(uri)


def _check_driver(uri: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise UserError(
            f"The tracking store {public(uri)} needs a database driver that SQLAlchemy cannot "
            f"load ({first_line(exc)}). Install the driver for that database (e.g. pip install "
            "'psycopg[binary]' for postgresql://), or fix logger.tracking_uri / "
            "MLFLOW_TRACKING_URI; logger=none trains without tracking."
        ) from None


def _check_server(uri: str, timeout: float) -> None:
    # Credentials in the URI are for MLflow's client; the health check needs none.
    server = public(uri)
    try:
        with urllib.request.urlopen(f"{server.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"The MLflow tracking server at {server} does not answer ({exc}). Start it (make server) "
            "or fix logger.tracking_uri / MLFLOW_TRACKING_URI; logger=none trains without "
            "tracking."
        ) from None
