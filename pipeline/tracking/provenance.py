"""What a recorded run needs to be run again, and keeping secrets out of the record.

Each MLflow run gets the command that runs it again (tag `command`: `python -m pipeline.train`
and its overrides, quoted for a shell), those overrides (tag `hydra.overrides`), the git commit
(tags from git_state) and the uncommitted diff (artifact `git.diff`), the installed package
versions (artifact `packages.txt`) and the SHA-256 of every data file (params `data.sha256.*`).
`python -m pipeline.train --from-run <run id>` composes the same config again from them
(pipeline/cli/rerun.py). No MLflow or torch import here: --from-run must stay light until
training starts.
"""

from __future__ import annotations

import platform
import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config.data import DataConfig
from pipeline.config.paths import PROJECT_ROOT
from pipeline.data.digests import FileDigests
from pipeline.data.reading import data_files
from pipeline.errors import UserError

OVERRIDES_TAG = "hydra.overrides"
# The training command, as it is typed in the project folder (also the runs' mlflow.source.name:
# the UI shows a source name from its last "/", so a whole command line would show cut).
ENTRY_POINT = "python -m pipeline.train"
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


def command(arguments: list[str]) -> str:
    """The training command with these arguments (Hydra's overrides as it received them, after
    the shell's quoting), quoted so that pasting it into a shell runs the same; credentials
    are replaced by *** (which a pasted command then reads literally)."""
    return " ".join([ENTRY_POINT, *(shlex.quote(redact(a)) for a in arguments)])


def redact_all(value: Any) -> Any:
    """redact() through nested dicts and lists (a config, a run record)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_all(v) for v in value]
    return value


def data_digests(data: DataConfig) -> dict[str, str]:
    """{"data.sha256.path": "<hex>", ...} for each data file the run reads (a spec's second
    and later files as data.sha256.path.1, ...), from the cache's memo where there is one."""
    digests = FileDigests(Path(data.cache_dir) if data.cache_dir else None)
    specs = {"path": data.path, "val_path": data.val_path, "test_path": data.test_path}
    specs |= {f"datasets.{i}.path": source.path for i, source in enumerate(data.datasets)}
    out = {}
    for key, spec in specs.items():
        try:
            files = data_files(spec) if spec else []
        except UserError:  # gone since (a recorded run read again): nothing to vouch for
            files = []
        for i, path in enumerate(files):
            out[f"{DIGEST_PREFIX}{key}" + (f".{i}" if i else "")] = digests(path)
    tokenizer = data.tokenizer.path
    if tokenizer and Path(tokenizer).is_file():
        out[f"{DIGEST_PREFIX}tokenizer.path"] = digests(Path(tokenizer))
    digests.save()
    return out


def package_versions() -> str:
    """Python and every installed distribution, one `name==version` a line, sorted."""
    names = {(d.metadata["Name"] or "?"): d.version for d in metadata.distributions()}
    lines = [f"# python {platform.python_version()} on {platform.platform()}"]
    lines += [f"{name}=={version}" for name, version in sorted(names.items(), key=_lower)]
    return "\n".join(lines) + "\n"


def _lower(item: tuple[str, str]) -> str:
    return item[0].lower()


def git_state(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The commit and dirty flag of the project checkout, when it is a git repository."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


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
