"""Where the project and its outputs are (conf/config.yaml's `paths:`)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config.base import Group
from pipeline.config.locations import WriteFolder

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


class PathsConfig(Group):
    root: str
    """The project folder (resolved in Python), so outputs land in one place whatever the cwd."""
    outputs: WriteFolder
    """Every run folder, sweep folder, the MLflow store and generated data go under it."""
