"""Data-parallel training on the CPU: two gloo ranks started by Lightning, one MLflow run
from rank 0, the same results (and sparsity masks) on both ranks; and DDP inside a sweep is
refused; a DDP run stopped mid-epoch resumes to the same weights. The run compresses its
gradients (top-k at 1% with error feedback, whose residuals must be checkpointed for the
resume to be exact); the hooks themselves are tested in test_compression.py."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import checkpoint
from tests.helpers import TINY, app_config, kill_at_step, run_cli, step_of

pytestmark = pytest.mark.slow


DDP = [
    *TINY,
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    # 40 batches a rank an epoch: a stop some steps after the first checkpoint is mid-epoch.
    "optim.batch_size=4",
    "trainer.checkpoint.every_n_train_steps=4",
    # Pruned while training: the masks must agree on both ranks, or the weights would not.
    "sparsity=gradual",
    "sparsity.measure.activations=false",
    # The exchange is the product's top-k hook, not DDP's all-reduce: it must keep the ranks
    # in step, and its residuals make the resume below exact only if they are checkpointed.
    "trainer.gradient_compression=topk",
]


def only_run(outputs: Path) -> tuple[Path, dict, dict]:
    (run_dir,) = {p.parent for p in outputs.glob("runs/*/*/*/run.json")}
    ranks = (json.loads((run_dir / name).read_text()) for name in ("run.json", "run.rank1.json"))
    return run_dir, *ranks


def test_ddp_on_two_cpu_ranks_records_one_run_and_resumes_mid_epoch(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = run_cli("train", f"paths.outputs={outputs}", *DDP)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir, rank0, rank1 = only_run(outputs)
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
    # Each rank sent about 1/50 of the dense gradient's bytes a step (int32 index + fp32 value
    # for 1% of the entries), and the checkpoint holds what each one has not sent yet.
    sent, dense = (
        client.get_metric_history(run.info.run_id, f"comm/bytes_{k}") for k in ("sent", "dense")
    )
    assert len(sent) == len(dense) > 10
    assert all(d.value >= 40 * s.value for s, d in zip(sent, dense, strict=True))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    kept, weights = last[checkpoint.COMPRESSION_KEY], last["state_dict"]
    residuals = kept["residuals"]
    assert kept["method"] == "topk" and len(residuals) == 2 and len(residuals[0]) > 20
    for name, residual in residuals[0].items():
        assert residual.shape == residuals[1][name].shape == weights[f"model.{name}"].shape
    assert any(not torch.equal(residuals[0][n], residuals[1][n]) for n in residuals[0])

    # Stopped mid-epoch and resumed, each rank continues its own share of that epoch's order
    # (Lightning's wrapper around a skipping sampler failed here with an IndexError), and
    # the run ends where the uninterrupted one did.
    steps = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    stopped = tmp_path / "stopped"
    assert kill_at_step(stopped, 3, signal.SIGTERM, *DDP).wait(timeout=90) == 128 + signal.SIGTERM
    again_dir, first, _ = only_run(stopped)
    saved = step_of(again_dir / "checkpoints" / "last.ckpt")
    assert first["status"] == "KILLED" and saved % (steps // 2), f"stopped at step {saved}"
    resumed = run_cli("train", f"paths.outputs={stopped}", *DDP, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, again0, again1 = only_run(stopped)
    assert again0["status"] == again1["status"] == "FINISHED" and again0["resumed"] == 1
    assert again0["weights_sha256"] == again1["weights_sha256"] == rank0["weights_sha256"]
    assert again0["metrics"] == rank0["metrics"]
    history = MlflowClient(f"sqlite:///{stopped}/mlflow.db").get_metric_history(
        again0["run_id"], "train/loss_step"
    )
    assert sorted(m.step for m in history) == sorted({m.step for m in history})


def test_lightning_ddp_inside_a_sweep_is_refused_with_what_to_do(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = run_cli(
        "train", "-m", f"paths.outputs={outputs}", *TINY, "trainer=ddp", "optim.lr=1e-3,3e-3"
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "re-launches the whole sweep" in result.stderr and "trainer.devices=1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(outputs.glob("multirun/*/*/*/run.json"))


def test_more_cpu_ranks_than_cores_are_warned_about(tmp_path: Path, capsys) -> None:
    from pipeline.run.trainer import warn_oversubscribed

    cores = os.cpu_count() or 1
    cfg = app_config(["trainer=cpu", f"trainer.devices={cores + 1}"], tmp_path)
    warn_oversubscribed(cfg)
    warning = capsys.readouterr().err
    assert f"trainer.devices={cores + 1} starts {cores + 1} training processes" in warning
    assert f"slower than with trainer.devices={cores}" in warning
    warn_oversubscribed(app_config(["trainer=cpu", f"trainer.devices={cores}"], tmp_path))
    assert capsys.readouterr().err == ""
