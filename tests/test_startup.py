"""The commands that do not train import only what they use: each one run as a user runs it,
with the modules it loaded read back at its exit. Lightning (and torchmetrics) belong to
training alone; torch._dynamo to compiling and exporting through torch.export (ONNX); MLflow
to commands that record a run; and a config error needs no torch at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config.paths import PROJECT_ROOT
from tests.helpers import cli_env, seed_store, train_in_process

LIGHTNING = ("pytorch_lightning", "lightning_fabric", "torchmetrics")

# Runs a command as `python -m` does, then writes the names of the modules it imported.
RUNNER = """
import atexit, json, runpy, sys
out, module, *args = sys.argv[1:]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def loaded_by(tmp_path: Path, module: str, *args: str, expect: int = 0) -> set[str]:
    seed_store(args)
    out = tmp_path / f"modules-{module}-{len(list(tmp_path.glob('modules-*')))}.json"
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(out), module, *args],
        cwd=PROJECT_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == expect, done.stderr[-3000:]
    return set(json.loads(out.read_text()))


def heavy(modules: set[str], *packages: str) -> set[str]:
    """The modules of `packages` that were loaded, and torch._dynamo if it was."""
    return {m for m in modules if m.split(".")[0] in packages or m == "torch._dynamo"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("startup")
    found = {}
    for name, extra in {"clf": [], "lm": ["experiment=lm_demo"]}.items():
        (root / name).mkdir()
        train_in_process([*extra, "trainer.max_epochs=1"], root / name)
        found[name] = root / name / "run"
    return found


def test_a_config_error_imports_no_torch(tmp_path: Path) -> None:
    modules = loaded_by(
        tmp_path, "pipeline.train", f"paths.outputs={tmp_path}", "optim.lr=-1", expect=2
    )
    assert "torch" not in modules and not heavy(modules, "mlflow", *LIGHTNING)


@pytest.mark.parametrize(
    "command",
    [
        ["pipeline.generate", "ckpt={lm}", "prompt=Hey", "max_new_tokens=4"],
        ["pipeline.generate", "ckpt={clf}", "prompt=Are you free"],
        ["pipeline.export", "ckpt={lm}", "export.formats=[hf,weights,gguf]", "export.dir={out}"],
        ["pipeline.evaluate", "ckpt={clf}", "logger=none", "paths.outputs={out}"],
        ["pipeline.evaluate", "ckpt={lm}", "logger=none", "paths.outputs={out}"],
        ["pipeline.doctor"],
    ],
    ids=["generate-lm", "generate-classifier", "export", "evaluate-clf", "evaluate-lm", "doctor"],
)
def test_commands_that_record_nothing_import_neither_lightning_nor_mlflow_nor_dynamo(
    runs, tmp_path: Path, command: list[str]
) -> None:
    names = {**runs, "out": tmp_path / "out"}
    args = [a.format(**names) for a in command[1:]]
    modules = loaded_by(tmp_path, command[0], *args)
    assert "torch" in modules and not heavy(modules, "mlflow", *LIGHTNING)


def test_evaluate_recorded_in_mlflow_imports_mlflow_but_not_lightning(runs, tmp_path) -> None:
    outputs = tmp_path / "outputs"
    args = (f"ckpt={runs['clf']}", f"paths.outputs={outputs}")
    modules = loaded_by(tmp_path, "pipeline.evaluate", *args)
    assert "mlflow" in modules and not heavy(modules, *LIGHTNING)
    assert (outputs / "mlflow.db").is_file()


def test_onnx_export_may_load_dynamo_but_not_lightning(runs, tmp_path: Path) -> None:
    modules = loaded_by(
        tmp_path,
        "pipeline.export",
        f"ckpt={runs['lm']}",
        "export.formats=[onnx]",
        f"export.dir={tmp_path / 'onnx'}",
    )
    assert "torch._dynamo" in modules  # torch.export traces through it
    assert not heavy(modules, "mlflow", *LIGHTNING) - {"torch._dynamo"}
