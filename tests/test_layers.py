"""The architecture holds: layers import downward only and never in a circle (the import-linter
contracts in pyproject.toml, also run by make lint), and nothing below the commands reads
Hydra, the environment or the command line: the commands hand what they read down."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

from pipeline.config.paths import PROJECT_ROOT
from tests.helpers import cli_env

LINT_IMPORTS = Path(__import__("sys").executable).parent / "lint-imports"
# The commands: the python -m entry points and the Hydra side (pipeline/cli/).
COMMANDS = {"train.py", "evaluate.py", "generate.py", "export.py", "doctor.py", "fetch.py"}
COMMANDS |= {"prepare.py", "cli"}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the `pipeline` package found first under `root`."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**cli_env(), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold() -> None:
    done = lint_imports(PROJECT_ROOT)
    assert done.returncode == 0 and "4 kept, 0 broken" in done.stdout, done.stdout[-3000:]


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    shutil.copytree(PROJECT_ROOT / "pipeline", tmp_path / "pipeline")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    model = tmp_path / "pipeline" / "model" / "gpt.py"
    model.write_text(model.read_text() + "\nfrom pipeline.run.module import is_logged_step\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "pipeline.model is not allowed to import pipeline.run" in done.stdout
    assert "No import cycles between the modules of any package BROKEN" in done.stdout
    # and through run.module, the model (which generate and export use) would import Lightning
    assert (
        "Only training imports Lightning: the other commands run models in plain torch BROKEN"
        in (done.stdout.replace("\n", " "))
    )


def _reads_outside(path: Path) -> list[str]:
    """Where a module reads the environment, the command line or Hydra's state."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name in ("os.environ", "os.getenv", "sys.argv"):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {name}")
        if isinstance(node, ast.Name) and node.id == "HydraConfig":
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} HydraConfig")
    return found


def test_only_the_commands_read_the_environment_and_hydra() -> None:
    package = PROJECT_ROOT / "pipeline"
    below = [
        path for path in package.rglob("*.py") if path.relative_to(package).parts[0] not in COMMANDS
    ]
    assert len(below) > 40
    assert [hit for path in below for hit in _reads_outside(path)] == []
    assert _reads_outside(package / "cli" / "launch.py")  # the check sees a real read
