"""How errors reach the user beyond the bad-input table's rows: a resume's merged settings are
validated like a command line's, a setting Lightning refuses only once fitting starts is one
paragraph (pipeline/run/refusals.py), and a bug keeps its traceback and says where to report
it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import TINY
from tests.test_bad_input import run_train


def test_a_resume_that_would_train_forever_is_refused(tmp_path: Path, capsys) -> None:
    """A resume takes the loop's length from the command line and the rest from the run: a run
    of trainer.max_epochs=null resumed with trainer.max_steps=-1 would never end. The merged
    settings are validated like a command line's."""
    from tests.helpers import train_in_process

    train_in_process(["trainer.max_epochs=null", "trainer.max_steps=2"], tmp_path)
    args = [f"paths.outputs={tmp_path}/outputs", f"resume={tmp_path}/run", "trainer.max_steps=-1"]
    code, stderr = run_train(args, capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert re.search(r"^error: .*trainer.max_steps=-1 .*would never end", stderr, re.M), stderr


def test_a_bug_shows_its_traceback_where_to_report_it_and_leaves_the_run_failed(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """An exception that is no UserError is ours: its traceback, then where to report it; the
    run is FAILED with the exception as its error tag (a fault injected into the step)."""
    from pipeline.run.module import GPTLightningModule

    def broken_step(self, batch, batch_idx):
        raise RuntimeError("a fault injected into training_step")

    monkeypatch.setattr(GPTLightningModule, "training_step", broken_step)
    outputs = tmp_path / "outputs"
    code, stderr = run_train([f"paths.outputs={outputs}", *TINY], capsys)
    assert code == 1, stderr
    assert "Traceback" in stderr
    assert "RuntimeError: a fault injected into training_step" in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: This is a bug in the pipeline")
    assert "CONTRIBUTING.md" in stderr
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: a fault injected into training_step"
    (record,) = outputs.glob("runs/*/*/*/run.json")
    assert '"status": "FAILED"' in record.read_text()


def test_a_setting_lightning_refuses_only_once_fitting_starts_is_one_paragraph(
    tmp_path: Path,
) -> None:
    """Lightning refuses a validation interval longer than an epoch only in fit(), with a
    traceback; the run refuses it earlier (row above), and were a check like it missing,
    pipeline/run/refusals.py turns Lightning's refusal into the one-paragraph error."""
    from pipeline.assembly.model import build_model
    from pipeline.errors import UserError
    from pipeline.run.faults import StopOnSignal
    from pipeline.run.trainer import Fitting
    from tests.helpers import app_config

    cfg = app_config([*TINY, "logger=none", "trainer.val_check_interval=500"], tmp_path / "o")
    trained, bundle = build_model(cfg)
    with StopOnSignal(tmp_path / "checkpoints") as stop:
        fitting = Fitting(cfg, trained, bundle, tmp_path, None, stop, [])
        with pytest.raises(UserError, match=r"^Lightning refused the trainer settings: .*500"):
            fitting.fit(None)
