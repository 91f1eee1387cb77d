"""Fault tolerance and reproducibility: a run killed at any step (SIGKILL) or stopped (SIGTERM,
Ctrl-C), then resumed, ends exactly as an uninterrupted run of the same config; a recorded run
runs again from its MLflow record alone (--from-run)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.errors import UserError
from pipeline.files import write_text
from tests.helpers import (
    TINY,
    app_config,
    kill_at_step,
    run_cli,
    step_of,
    train_config,
    train_here,
    train_until,
)

# 20 batches per epoch, last.ckpt every 3 steps, dropout on (so the RNG state matters).
ARGS = [*TINY, "model.drop_rate=0.1", "trainer.checkpoint.every_n_train_steps=3"]
BATCHES_PER_EPOCH = 20
# Values that legitimately differ between two runs: wall-clock speed.
TIMING = {"train/tokens_per_sec"}


def only_run(outputs: Path) -> tuple[Path, dict]:
    (run_json,) = outputs.glob("runs/*/*/*/run.json")
    return run_json.parent, json.loads(run_json.read_text())


def metric_histories(outputs: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    # System metrics (CPU, memory) are samples of the machine, not of the training.
    keys = {k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")}
    keys -= TIMING
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict]:
    outputs = tmp_path_factory.mktemp("straight") / "outputs"
    result = run_cli("train", f"paths.outputs={outputs}", *ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    return only_run(outputs)


def assert_same_run(outputs: Path, straight: tuple[Path, dict], models: int = 0) -> dict:
    ref_dir, reference = straight
    run_dir, record = only_run(outputs)
    assert record["status"] == "FINISHED" and record["resumed"] == 1
    assert record["metrics"] == reference["metrics"]  # exact, every digit run.json keeps
    ours = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    theirs = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ours["global_step"] == theirs["global_step"] == 2 * BATCHES_PER_EPOCH
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), key
    # Every step metric, step by step, equal; none logged twice.
    assert metric_histories(outputs, record["run_id"]) == metric_histories(
        straight[0].parents[3], reference["run_id"]
    )
    run = MlflowClient(f"sqlite:///{outputs}/mlflow.db").get_run(record["run_id"])
    assert run.info.status == "FINISHED" and "error" not in run.data.tags  # the stop is over
    # One set of datasets (and the models it logged), however many times the run was started.
    contexts = [t.value for d in run.inputs.dataset_inputs for t in d.tags]
    assert sorted(contexts) == ["testing", "training", "validation"]
    steps = [m.step for m in run.outputs.model_outputs] if run.outputs else []
    assert steps == [2 * BATCHES_PER_EPOCH] * models
    return record


@pytest.mark.slow
def test_sigkill_at_a_random_step_resumes_to_identical_weights_and_metrics(
    tmp_path, straight, capsys
):
    # A step checkpoint inside the first or the second epoch (the epoch's end saves one too).
    step = random.choice([3, 6, 9, 12, 15, 21, 24, 27, 30])
    outputs = tmp_path / "outputs"
    proc = kill_at_step(outputs, step, signal.SIGKILL, *ARGS)
    proc.wait(timeout=60)
    run_dir, first = only_run(outputs)
    assert first["status"] == "RUNNING"  # a SIGKILL leaves no chance to close anything
    saved = step_of(run_dir / "checkpoints" / "last.ckpt")
    assert saved % BATCHES_PER_EPOCH, f"killed at step {saved}: not mid-epoch"

    # The resume in this process (the killed run and the reference are command lines).
    train_here(outputs, *ARGS, "resume=auto")
    assert f"Resuming {run_dir}" in capsys.readouterr().out
    record = assert_same_run(outputs, straight)
    assert record["run_id"] == first["run_id"]


def test_a_checkpoint_appears_only_once_the_metrics_of_its_steps_are_in_mlflow(
    tmp_path, monkeypatch
):
    """What a SIGKILL at the worst moment finds: at each instant a checkpoint is renamed into
    place, the store already holds every metric of the steps it covers (MLflow step k is the
    batch that makes global step k + 1), since a run resumed from it never logs them again.
    Lightning saves a step's checkpoint before it logs that step, and logs validation before
    the checkpoint that follows it."""
    from pipeline.run import faults

    outputs = tmp_path / "outputs"
    cfg = app_config(ARGS, outputs)
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")

    def stored() -> set[tuple[str, int, float]]:
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        return {
            (key, m.step, m.value)
            for key in run.data.metrics
            for m in client.get_metric_history(run.info.run_id, key)
        }

    seen: list[tuple[int, set]] = []

    def publish(tmp: Path, path: Path) -> Path:
        faults_publish(tmp, path)
        seen.append((step_of(path), stored()))
        return path

    faults_publish = faults.publish
    monkeypatch.setattr(faults, "publish", publish)
    (tmp_path / "run").mkdir()
    train_config(cfg, tmp_path / "run")

    final = stored()
    assert len(seen) > 2 * BATCHES_PER_EPOCH // 3  # every 3 steps, and at each epoch's end
    for step, store in seen:
        missing = {m for m in final if m[1] < step} - store
        assert not missing, f"checkpoint at step {step} appeared before {sorted(missing)[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_mark_the_run_killed(tmp_path, straight, sig):
    outputs = tmp_path / "outputs"
    proc = kill_at_step(outputs, 6, sig, *ARGS)
    assert proc.wait(timeout=60) == 128 + sig  # a clean exit, as a shell reports a signal
    run_dir, record = only_run(outputs)
    assert record["status"] == "KILLED"
    assert f"Interrupted by {signal.Signals(sig).name}" in record["error"]
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    run = client.get_run(record["run_id"])
    assert run.info.status == "KILLED" and "resume=" in run.data.tags["error"]
    # The checkpoint holds the step the signal stopped at, not an older one.
    logged = max(m.step for m in client.get_metric_history(record["run_id"], "train/loss_step"))
    stopped = step_of(run_dir / "checkpoints" / "last.ckpt")
    assert 6 <= stopped < 2 * BATCHES_PER_EPOCH and 0 <= stopped - logged <= 2
    if sig == signal.SIGINT:
        return  # the checkpoint is the same kind; one resume of it is enough

    # A resume that would change the model is refused, naming the change; the run stays
    # KILLED, ready to be resumed.
    with pytest.raises(UserError, match=r"model\.n_layers=3 \(the run has 2\)"):
        train_here(outputs, *ARGS, "model.n_layers=3", "resume=auto")
    assert client.get_run(record["run_id"]).info.status == "KILLED"

    # Resumed by its MLflow run id alone, without the overrides it was started with (as the
    # Ctrl-C message suggests): the run continues with its recorded settings and ends as if
    # never stopped.
    # Logging is one of the settings a resume takes from the command line: the final model.
    train_here(outputs, f"resume={record['run_id']}", "logger.log_models=final")
    assert_same_run(outputs, straight, models=1)


@pytest.mark.slow
def test_from_run_reproduces_a_recorded_run(straight) -> None:
    ref_dir, reference = straight
    outputs = ref_dir.parents[3]
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    original = client.get_run(reference["run_id"])
    # What the record holds to run it again.
    assert json.loads(original.data.tags["hydra.overrides"])[0] == f"paths.outputs={outputs}"
    data_file = outputs / "data" / "demo" / "sms_spam_400.tsv"
    assert (
        original.data.params["data.sha256.path"]
        == hashlib.sha256(data_file.read_bytes()).hexdigest()
    )
    artifacts = {a.path for a in client.list_artifacts(reference["run_id"])}
    assert {"config.yaml", "packages.txt"} <= artifacts
    if original.data.tags.get("git.dirty") == "true":
        assert "git.diff" in artifacts
    packages = client.download_artifacts(reference["run_id"], "packages.txt")
    assert f"torch=={torch.__version__}" in Path(packages).read_text()

    again = run_cli("train", "--from-run", reference["run_id"], f"paths.outputs={outputs}")
    assert again.returncode == 0, again.stderr[-2000:]
    (second,) = [
        r
        for r in client.search_runs([original.info.experiment_id])
        if r.info.run_id != reference["run_id"]
    ]
    assert second.info.status == "FINISHED"
    assert second.data.params == original.data.params  # config, data digests, model size
    assert metric_histories(outputs, second.info.run_id) == metric_histories(
        outputs, reference["run_id"]
    )


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_ends_its_parent_run_killed(tmp_path) -> None:
    """The summary at a sweep's end never comes after Ctrl-C; the parent run must not be left
    RUNNING in the UI."""
    outputs = tmp_path / "outputs"
    args = ["-m", *ARGS, "trainer.max_epochs=50", "optim.lr=1e-3,3e-3"]
    proc = train_until(outputs, "multirun/**/checkpoints/last.ckpt", *args)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 128 + signal.SIGINT
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    (trial,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED" and trial.info.status == "KILLED"
    assert parent.data.tags["error"] == "Sweep stopped by SIGINT"
    # The second trial never started; the summary still lists the first.
    assert "KILLED" in next(outputs.glob("multirun/*/*/sweep_summary.md")).read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("group", "n_jobs", "lrs"),
    [(True, 4, "1e-3,3e-3"), (False, 2, "1e-3,2e-3,3e-3")],
    ids=["Ctrl-C to every process, more workers than trials", "SIGTERM to the sweep's only"],
)
def test_a_signal_during_a_parallel_sweep_stops_every_trial_in_order(
    tmp_path, group, n_jobs, lrs
) -> None:
    """Trials in worker processes: the two running save a checkpoint and end KILLED, a queued
    one never starts, and the sweep ends with its parent KILLED, whether every process took the
    signal (a terminal's Ctrl-C, which also reaches any idle worker) or only the sweep's own
    (`kill <pid>`)."""
    outputs = tmp_path / "outputs"
    args = ["-m", "hydra/launcher=local", f"hydra.launcher.n_jobs={n_jobs}", *ARGS]
    args += ["trainer.max_epochs=50", f"optim.lr={lrs}"]
    proc = train_until(outputs, "multirun/**/checkpoints/last.ckpt", *args, count=2)
    sig = signal.SIGINT if group else signal.SIGTERM
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    assert proc.wait(timeout=90) == 128 + sig
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["error"] == f"Sweep stopped by {signal.Signals(sig).name}"
    assert len(trials) == 2 and {t.info.status for t in trials} == {"KILLED"}
    for trial in trials:
        record = json.loads((Path(trial.data.tags["run_dir"]) / "run.json").read_text())
        assert record["status"] == "KILLED" and "resume=" in record["error"]
        assert step_of(Path(record["paths"]["run_dir"]) / "checkpoints" / "last.ckpt") > 0
    (summary,) = outputs.glob("multirun/*/*/sweep_summary.md")
    assert len([p for p in summary.parent.iterdir() if p.name.isdigit()]) == 2  # none queued


def test_files_a_run_writes_get_the_mode_the_umask_gives_any_new_file(straight, tmp_path):
    """Atomic writes go through a temporary file (mkstemp: 0600); the file they leave must be
    as readable as any other new file, for a teammate on a shared file system."""
    run_dir, _ = straight
    probe = tmp_path / "probe"
    probe.write_text("x")
    expected = probe.stat().st_mode & 0o777
    files = [run_dir / "run.json", run_dir / "checkpoints" / "last.ckpt"]
    files += sorted((run_dir / "export" / "hf").iterdir())
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
        f.name: oct(expected) for f in files
    }
    previous = os.umask(0o002)  # a group-writable umask, as shared project folders use
    try:
        written = write_text(tmp_path / "shared.json", "{}")
    finally:
        os.umask(previous)
    assert written.stat().st_mode & 0o777 == 0o664
