"""python -m pipeline.evaluate without Lightning: its metrics are torchmetrics' (what training's
test loop logs), max_examples, answers written as they come, progress lines, and a signal that
stops it with what it did kept and its MLflow run KILLED."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
)

from pipeline.config.commands import EvaluateConfig
from pipeline.config.paths import PROJECT_ROOT
from pipeline.config.validate import validate
from pipeline.evaluation.command import evaluate_command
from pipeline.evaluation.metrics import SplitMetrics
from tests.helpers import cli_env, compose_config, seed_store, train_in_process


def test_binary_metrics_equal_torchmetrics() -> None:
    generator = torch.Generator().manual_seed(0)
    ours, acc, f1 = SplitMetrics(False, 2), BinaryAccuracy(), BinaryF1Score()
    for _ in range(5):
        labels = torch.randint(0, 2, (13,), generator=generator)
        predicted = torch.randint(0, 2, (13,), generator=generator)
        ours.update(torch.tensor(0.5), 13, predicted, labels)
        acc.update(predicted, labels)
        f1.update(predicted, labels)
    found = ours.compute()
    assert found["acc"] == pytest.approx(float(acc.compute()), abs=1e-6)
    assert found["f1"] == pytest.approx(float(f1.compute()), abs=1e-6)


def test_macro_f1_leaves_out_labels_nobody_used_as_torchmetrics_does() -> None:
    generator = torch.Generator().manual_seed(1)
    n = 5  # label 4 never occurs among the references or the predictions
    ours = SplitMetrics(False, n)
    acc = MulticlassAccuracy(n, average="micro")
    f1 = MulticlassF1Score(n, average="macro")
    losses = []
    for size in (7, 9, 4):
        labels = torch.randint(0, 4, (size,), generator=generator)
        predicted = torch.randint(0, 4, (size,), generator=generator)
        loss = torch.rand((), generator=generator)
        ours.update(loss, size, predicted, labels)
        acc.update(predicted, labels)
        f1.update(predicted, labels)
        losses.append((float(loss), size))
    found = ours.compute()
    assert found["acc"] == pytest.approx(float(acc.compute()), abs=1e-6)
    assert found["f1"] == pytest.approx(float(f1.compute()), abs=1e-6)
    mean = sum(loss * size for loss, size in losses) / sum(size for _, size in losses)
    assert found["loss"] == pytest.approx(mean, rel=1e-9)


def test_a_language_model_s_loss_is_the_mean_over_trained_tokens() -> None:
    metrics = SplitMetrics(True, 2)
    metrics.update(torch.tensor(2.0), 30)
    metrics.update(torch.tensor(4.0), 10)
    assert metrics.compute() == pytest.approx({"loss": 2.5, "ppl": torch.tensor(2.5).exp().item()})


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lm")
    return train_in_process(["experiment=lm_demo", "trainer.max_epochs=1"], root)


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("instruct")
    settings = ["data.synthetic_examples=200", "data.tokenizer.vocab_size=600"]
    return train_in_process(["experiment=instruct_demo", *settings, "trainer.max_epochs=1"], root)


def evaluate_in_process(record: dict, folder: Path, *overrides: str) -> dict[str, float]:
    ckpt = f"ckpt={record['paths']['run_dir']}"
    cfg = validate(compose_config([ckpt, "logger=none", *overrides], "evaluate"), EvaluateConfig)
    folder.mkdir()
    return evaluate_command(cfg, list(overrides), folder, None)


def test_evaluate_gives_the_test_loop_s_perplexity(lm_run, tmp_path: Path) -> None:
    metrics = evaluate_in_process(lm_run, tmp_path / "eval")
    for key in ("test/loss", "test/ppl"):
        assert metrics[key] == pytest.approx(lm_run["metrics"][key], rel=1e-5)


def test_max_examples_evaluates_the_first_examples_only(instruct_run, tmp_path, capsys) -> None:
    folder = tmp_path / "eval"
    fast = ["trainer.progress_interval_s=0.001", "max_new_tokens=4"]
    metrics = evaluate_in_process(instruct_run, folder, "max_examples=3", *fast)
    rows = (folder / "responses.jsonl").read_text().splitlines()
    assert len(rows) == 3 and not (folder / "responses.jsonl.partial").exists()
    recorded = json.loads((folder / "metrics.json").read_text())
    assert recorded["max_examples"] == 3 and recorded["metrics"] == metrics
    # Not a terminal: plain progress lines, the last one at the end.
    assert "answer 3/3 (100%) | elapsed 0:00" in capsys.readouterr().out


@pytest.mark.slow
def test_a_signal_keeps_the_answers_so_far_and_ends_the_run_killed(instruct_run, tmp_path) -> None:
    outputs = tmp_path / "outputs"
    args = [f"ckpt={instruct_run['paths']['run_dir']}", f"paths.outputs={outputs}"]
    seed_store(args)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.evaluate", *args, "max_new_tokens=64"],
        cwd=PROJECT_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not [p for p in outputs.glob("evaluate/*/*/responses.jsonl.partial") if p.read_text()]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    (partial,) = outputs.glob("evaluate/*/*/responses.jsonl.partial")
    done = len(partial.read_text().splitlines())
    assert 0 < done < 20
    assert f"error: evaluate stopped by SIGTERM ({done} of 20 answers generated)." in stderr
    assert f"The {done} answers generated so far are in {partial}." in stderr
    assert "Traceback" not in stderr
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert partial.name in logged
