"""Where runs are recorded, and whether a tracking server answers: light enough (no MLflow
import) to check before any training work starts."""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.errors import UserError


def default_tracking_uri(outputs: str | Path) -> str:
    return f"sqlite:///{Path(outputs).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(given: str | None, from_env: str | None, outputs: str | Path) -> str:
    """logger.tracking_uri, else MLFLOW_TRACKING_URI (read by the command), else the local
    store under paths.outputs."""
    return given or from_env or default_tracking_uri(outputs)


def check_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer is reported now, before any training work
    (MLflow's own client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    # Credentials in the URI are for MLflow's client; the health check needs none.
    parts = urllib.parse.urlsplit(uri)
    public = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    try:
        with urllib.request.urlopen(f"{public.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"The MLflow tracking server at {public} does not answer ({exc}). Start it (make server) "
            "or fix logger.tracking_uri / MLFLOW_TRACKING_URI; logger=none trains without "
            "tracking."
        ) from None
