"""`python -m pipeline.train --from-run <MLflow run id> [overrides]`: the overrides a recorded
run was trained with (tag `hydra.overrides`, see tracking/provenance.py), then these; what
differs in the code or the data since is reported as a warning."""

from __future__ import annotations

import json
import sys
from typing import Any

from pipeline.cli.launch import tracking_uri
from pipeline.config.data import DataConfig
from pipeline.config.logger import LoggerConfig
from pipeline.errors import UserError
from pipeline.tracking.provenance import DIGEST_PREFIX, OVERRIDES_TAG, data_digests, git_state


def rerun_arguments(run_id: str, extra: list[str]) -> list[str]:
    """The overrides to run `run_id` again: its recorded ones, then `extra` (later wins).

    The store is found from `extra` the same way training finds it (logger.tracking_uri,
    MLFLOW_TRACKING_URI, or <paths.outputs>/mlflow.db)."""
    from pipeline.tracking.client import recorded_run

    cfg = _compose(extra)
    uri = tracking_uri(LoggerConfig.model_validate(cfg["logger"]), cfg["paths"]["outputs"])
    run = recorded_run(uri, run_id, f"--from-run {run_id}")
    if OVERRIDES_TAG not in run.data.tags:
        raise UserError(
            f"--from-run {run_id}: the run records no overrides (tag {OVERRIDES_TAG}); it was "
            "not started by python -m pipeline.train. Re-create its config by hand from its "
            "config.yaml artifact."
        )
    overrides = json.loads(run.data.tags[OVERRIDES_TAG])
    commit = run.data.tags.get("mlflow.source.git.commit")
    now = git_state().get("mlflow.source.git.commit")
    if commit and now and commit != now:
        _warn(f"the run was trained at commit {commit[:12]}, this checkout is {now[:12]}")
    if run.data.tags.get("git.dirty") == "true":
        _warn("the run had uncommitted changes; see its git.diff artifact")
    again = _compose([*overrides, *extra])
    digests = data_digests(DataConfig.model_validate(again["data"]))
    for key, value in run.data.params.items():
        if key.startswith(DIGEST_PREFIX) and digests.get(key, value) != value:
            name = key.removeprefix(DIGEST_PREFIX)
            _warn(f"data.{name} differs from the file the run read (SHA-256 {value[:12]}...)")
    return [*overrides, *extra]


def _compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir

    import pipeline.cli.app  # noqa: F401  (registers the ${project_root:} resolver)
    from pipeline.config.paths import CONF_DIR
    from pipeline.config.validate import to_container

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_container(compose(config_name="config", overrides=overrides))


def _warn(message: str) -> None:
    print(f"warning: --from-run: {message}.", file=sys.stderr)
