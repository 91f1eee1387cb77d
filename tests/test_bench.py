"""make bench: the whole suite at its smallest sizes, and the FLOP count behind MFU."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from benchmarks.common import gpt_shape, train_flops_per_token
from benchmarks.run import BENCHMARKS, EXPERIMENT, main
from pipeline.model.gpt import GPTModel
from tests.helpers import seed_store


def test_flops_count_every_matmul_weight_once() -> None:
    shape = gpt_shape("gpt-mini", 1000)
    model = GPTModel(shape)
    # Every Linear weight and the (tied) token embedding take part in one matmul per token.
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = 12 * shape.n_layers * 64 * shape.emb_dim
    assert model.tied and matmul == model.tok_emb.weight.numel() + 12 * 4 * 128 * 128
    assert train_flops_per_token(shape, 64) == 6 * matmul + attention


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 2 minutes on 2 idle cores; much longer on a busy machine
def test_smoke_suite_writes_results_and_logs_them(tmp_path: Path) -> None:
    # make bench's runner in this process (its command line is argparse over main's argv).
    seed_store([f"paths.outputs={tmp_path}"])
    lightning = logging.getLogger("pytorch_lightning")
    level = lightning.level
    try:
        main(["--smoke", "--outputs", str(tmp_path)])
    finally:
        lightning.setLevel(level)
    (folder,) = (tmp_path / "bench").iterdir()
    results = json.loads((folder / "results.json").read_text())
    assert results["mode"] == "smoke" and list(results["benchmarks"]) == BENCHMARKS
    figures = {}
    for name, bench in results["benchmarks"].items():
        if name == "gpu" and not torch.cuda.is_available():
            assert bench["skipped"] == "no CUDA device on this machine"
            continue
        # SmolLM2-135M, and three DDP runs: minutes on a CPU, quick and full mode only.
        if name in ("llm_pruning", "compression"):
            assert bench["skipped"] == "not run in smoke mode (only quick, full)"
            continue
        assert bench["figures"], name
        for f in bench["figures"]:
            assert math.isfinite(f["median"]) and f["min"] <= f["median"] <= f["max"], f
            figures[f["name"]] = f
    ratio = figures["gpt-tiny (2x32 tokens) pipeline / plain PyTorch"]
    assert ratio["target"] == 0.97 and ratio["meets_target"] == (ratio["median"] >= 0.97)
    assert ratio["n"] == 2 and ratio["min"] > 0
    assert 0 < figures["gpt-tiny (2x32 tokens) MFU bf16-mixed"]["median"] < 100
    assert 0 < figures["a config error (optim.lr=-1)"]["median"] < 60
    assert figures["ours-lora step"]["note"].startswith("8,192 of 128,768 parameters train")
    assert figures["load: safetensors / torch"]["median"] > 0
    dense = next(f for name, f in figures.items() if name.startswith("dense, val perplexity"))
    assert dense["median"] > 1 and dense["n"] == 1
    assert figures["wanda 2:4, one-shot"]["median"] > 1
    table = (folder / "results.md").read_text()
    assert "| a config error (optim.lr=-1) |" in table
    assert "Skipped: no CUDA device" in table or torch.cuda.is_available()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["mode"] == "smoke"
    error = figures["a config error (optim.lr=-1)"]
    assert run.data.metrics[error["metric"]] == error["median"]
    assert run.data.metrics[f"{error['metric']}/max"] == error["max"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"results.json", "results.md"}
