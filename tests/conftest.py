"""Shared fixtures: composing configs like the CLI does, and running the CLI itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import pipeline.cli  # noqa: F401  (registers the ${project_root:} resolver)
from pipeline.config import CONF_DIR, PROJECT_ROOT, AppConfig, validate

# Small enough that an end-to-end run takes seconds on two CPU cores.
TINY = [
    "model=gpt-tiny",
    "data.synthetic_examples=400",
    "data.tokenizer.vocab_size=600",
    "optim.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
]


def compose_config(overrides: list[str], config_name: str = "config"):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def app_config(overrides: list[str], outputs: Path) -> AppConfig:
    return validate(compose_config([f"paths.outputs={outputs}", *overrides]))


def run_cli(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return tmp_path / "outputs"
