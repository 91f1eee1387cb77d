"""The commands that do not train import only what they use, each run as a user runs it with
the modules it imported read back at its exit (tests/helpers.py run_recorded). Lightning (and
torchmetrics) belong to training alone; torch._dynamo to compiling and to exporting through
torch.export (ONNX); MLflow to commands that record a run; a config error needs no torch at
all. test_e2e.py checks the same of generate, export, evaluate recorded in MLflow, and a
training run with logger=none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import LIGHTNING, heavy, run_recorded, train_in_process


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("startup")
    train_in_process(["experiment=lm_demo", "trainer.max_epochs=1"], root)
    return root / "run"


def test_a_config_error_imports_no_torch(tmp_path: Path) -> None:
    done, modules = run_recorded("train", f"paths.outputs={tmp_path}", "optim.lr=-1")
    assert done.returncode == 2 and "optim.lr=-1 is not allowed" in done.stderr
    assert "torch" not in modules and not heavy(modules, "mlflow", *LIGHTNING)


def test_evaluate_without_a_store_imports_neither_lightning_nor_mlflow(lm_run, tmp_path) -> None:
    args = (f"ckpt={lm_run}", "logger=none", f"paths.outputs={tmp_path}")
    done, modules = run_recorded("evaluate", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test/ppl" in done.stdout
    assert "torch" in modules and not heavy(modules, "mlflow", *LIGHTNING)


def test_doctor_imports_neither_lightning_nor_mlflow() -> None:
    done, modules = run_recorded("doctor")
    assert done.returncode == 0 and "torch" in done.stdout
    assert not heavy(modules, "mlflow", *LIGHTNING)


def test_the_onnx_export_may_load_dynamo_but_not_lightning(lm_run, tmp_path: Path) -> None:
    args = (f"ckpt={lm_run}", "export.formats=[onnx,gguf]", f"export.dir={tmp_path}")
    done, modules = run_recorded("export", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    assert "torch._dynamo" in modules  # torch.export traces through it
    assert not heavy(modules, "mlflow", *LIGHTNING) - {"torch._dynamo"}
