"""What a recorded run needs to be run again, and keeping secrets out of the record.

Each MLflow run gets its command-line overrides (tag `hydra.overrides`), the git commit (tags
from tracking.git_state) and the uncommitted diff (artifact `git.diff`), the installed package
versions (artifact `packages.txt`) and the SHA-256 of every data file (params `data.sha256.*`).
`python -m pipeline.train --from-run <run id>` composes the same config again from them.
No MLflow or torch import here: --from-run must stay light until training starts.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config import PROJECT_ROOT, DataConfig
from pipeline.errors import UserError

OVERRIDES_TAG = "hydra.overrides"
DIGEST_PREFIX = "data.sha256."
# user:password@ in a URI (tracking servers, databases).
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@")
# key=value or key: value where the key names a secret (tokens, passwords, API keys).
_SECRET_VALUE = re.compile(
    r"(?i)(?P<key>\b[\w-]*(?:token|password|passwd|secret|api[_-]?key)\b[^\S\n]*[=:][^\S\n]*)"
    r"(?P<value>[^\s,'\"]+)"
)


def redact(text: str) -> str:
    """The text with credentials in URIs and values of secret-named keys replaced by ***."""
    text = _CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _SECRET_VALUE.sub(r"\g<key>***", text)


def redact_all(value: Any) -> Any:
    """redact() through nested dicts and lists (a config, a run record)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_all(v) for v in value]
    return value


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_digests(data: DataConfig) -> dict[str, str]:
    """{"data.sha256.path": "<hex>", ...} for each data file the run reads."""
    files = {"path": data.path, "val_path": data.val_path, "test_path": data.test_path}
    files["tokenizer.path"] = data.tokenizer.path
    return {
        f"{DIGEST_PREFIX}{key}": sha256(Path(path))
        for key, path in files.items()
        if path and Path(path).is_file()
    }


def package_versions() -> str:
    """Python and every installed distribution, one `name==version` a line, sorted."""
    names = {(d.metadata["Name"] or "?"): d.version for d in metadata.distributions()}
    lines = [f"# python {platform.python_version()} on {platform.platform()}"]
    lines += [f"{name}=={version}" for name, version in sorted(names.items(), key=_lower)]
    return "\n".join(lines) + "\n"


def _lower(item: tuple[str, str]) -> str:
    return item[0].lower()


def git_diff(root: Path = PROJECT_ROOT) -> str:
    """Uncommitted changes to tracked files (empty when clean or not a git checkout)."""
    try:
        return subprocess.run(
            ["git", "diff", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def recorded_overrides(run_dir: Path) -> list[str] | None:
    """The overrides Hydra saved for this run's command (None outside Hydra)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def rerun_arguments(run_id: str, extra: list[str]) -> list[str]:
    """The overrides to run `run_id` again: its recorded ones, then `extra` (later wins).

    The store is found from `extra` the same way training finds it (logger.tracking_uri,
    MLFLOW_TRACKING_URI, or <paths.outputs>/mlflow.db). Differences in the code or data
    since the original run are reported as warnings."""
    from pipeline.config import LoggerConfig
    from pipeline.tracking import git_state, recorded_run

    cfg = _compose(extra)
    logger = LoggerConfig.model_validate(cfg["logger"])
    run = recorded_run(logger, cfg["paths"]["outputs"], run_id, f"--from-run {run_id}")
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

    import pipeline.cli  # noqa: F401  (registers the ${project_root:} resolver)
    from pipeline.config import CONF_DIR, to_container

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_container(compose(config_name="config", overrides=overrides))


def _warn(message: str) -> None:
    print(f"warning: --from-run: {message}.", file=sys.stderr)
