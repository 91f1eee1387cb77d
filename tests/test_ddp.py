"""Data-parallel training on the CPU: two gloo ranks started by Lightning, one MLflow run
from rank 0, the same results (and sparsity masks) on both ranks; and DDP inside a sweep is
refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow


def test_ddp_on_two_cpu_ranks_records_one_run_with_identical_ranks(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = run_cli(
        "train",
        f"paths.outputs={outputs}",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        # Pruned while training: the masks must agree on both ranks, or the weights would not.
        "sparsity=gradual",
        "sparsity.measure.activations=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = {p.parent for p in outputs.glob("runs/*/*/*/run.json")}
    rank0 = json.loads((run_dir / "run.json").read_text())
    rank1 = json.loads((run_dir / "run.rank1.json").read_text())
    assert rank0["status"] == rank1["status"] == "FINISHED"
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["weights_sha256"] == rank1["weights_sha256"]
    assert rank0["sparsity"] == rank1["sparsity"] and rank0["sparsity"]["total"] > 0.49
    # Validation and test metrics are reduced over both ranks (train/loss_epoch is each
    # rank's own batches).
    evaluated = {k: v for k, v in rank0["metrics"].items() if k.startswith(("val/", "test/"))}
    assert evaluated == {k: rank1["metrics"][k] for k in evaluated}
    assert len(evaluated) == 6 and evaluated["test/acc"] > 0.6
    assert rank1["run_id"] is None and (run_dir / "export" / "hf" / "model.safetensors").is_file()
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("gpt-finetune").experiment_id])
    assert run.info.run_id == rank0["run_id"] and run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] == pytest.approx(rank0["metrics"]["test/acc"], abs=1e-6)


def test_lightning_ddp_inside_a_sweep_is_refused_with_what_to_do(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = run_cli(
        "train", "-m", f"paths.outputs={outputs}", *TINY, "trainer=ddp", "optim.lr=1e-3,3e-3"
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "re-launches the whole sweep" in result.stderr and "trainer.devices=1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(outputs.glob("multirun/*/*/*/run.json"))
