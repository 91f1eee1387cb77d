"""An interrupted grid sweep, continued by running its command again in its folder: the
finished trial is kept, the stopped one resumes from its checkpoint in its own MLflow run, the
unstarted one runs, and the summary and parent run cover all three; no trial runs twice."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import UserError
from pipeline.sweeps.continuation import is_continued
from pipeline.tracking.provenance import command
from tests.helpers import TINY, in_shell, train_until

pytestmark = pytest.mark.slow

# One epoch of 20 steps, last.ckpt every 2: trial 1 is stopped with most of its steps to go.
# No export and no system metrics: what is tested here is the sweep, not what a run writes.
SETTINGS = ["trainer.max_epochs=1", "trainer.checkpoint.every_n_train_steps=2", "export.formats=[]"]
ARGS = ["-m", *TINY, *SETTINGS, "logger.system_metrics=false", "optim.lr=1e-3,2e-3,3e-3"]
# Hydra hands each trial its value as it parsed it.
LRS = ["0.001", "0.002", "0.003"]


def records(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/run.json")}


def step_histories(client: MlflowClient, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "train/loss_step")]


def test_an_interrupted_grid_sweep_continues_in_its_folder(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = train_until(outputs, "multirun/*/*/1/checkpoints/last.ckpt", *ARGS, stderr=stderr)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 128 + signal.SIGINT
    (root,) = outputs.glob("multirun/*/*")
    before = records(root)
    assert {n: r["status"] for n, r in before.items()} == {"0": "FINISHED", "1": "KILLED"}
    finished = (root / "0" / "run.json").read_text()
    overrides = [*ARGS[1:], f"paths.outputs={outputs}"]
    # The folder holds this sweep: another one is refused there, naming both.
    with pytest.raises(UserError, match="holds the trials of another sweep"):
        is_continued(root, [*overrides[:-2], "optim.lr=1e-3,5e-3", overrides[-1]])

    # The stop's last line is the command that continues the sweep, pasted as it is.
    *_, said, again = (tmp_path / "stderr.txt").read_text().strip().splitlines()
    assert said.endswith("Continue the sweep with:")
    again = again.strip()
    assert again == command(["-m", *overrides, f"hydra.sweep.dir={root.resolve()}"])
    continued = in_shell(again)
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert "Trial 0: kept as it ended (FINISHED) before." in continued.stdout

    after = records(root)
    assert (root / "0" / "run.json").read_text() == finished  # not run again
    assert {n: r["status"] for n, r in after.items()} == dict.fromkeys("012", "FINISHED")
    assert after["1"]["run_id"] == before["1"]["run_id"] and after["1"]["resumed"] == 1
    assert after["2"]["resumed"] == 0
    summary = (root / "sweep_summary.md").read_text()
    assert summary.count("| FINISHED") == 3 and "KILLED" not in summary

    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gpt-finetune").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    trials = {r.info.run_id: r for r in runs if r is not parent}
    assert set(trials) == {r["run_id"] for r in after.values()}  # three runs, one each
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    assert parent.info.run_name.startswith("sweep lr=1e-3,2e-3,3e-3 gpt-tiny ")
    assert parent.data.tags["best_trial"] in "012"
    # Every trial logged each step once: the resumed one the same steps as the others.
    steps = [step_histories(client, run_id) for run_id in trials]
    assert steps[0] == sorted(set(steps[0])) and steps.count(steps[0]) == 3
    for number, record in after.items():
        trial = trials[record["run_id"]]
        lr = LRS[int(number)]
        assert trial.info.run_name == f"lr={lr}"
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        # The trial's own command: the sweep's overrides (as Hydra wrote them) with its value.
        pasted = shlex.split(trial.data.tags["command"])
        assert pasted[:3] == ["python", "-m", "pipeline.train"]
        assert pasted[3:] == json.loads(trial.data.tags["hydra.overrides"])
        assert f"optim.lr={lr}" in pasted and not [a for a in pasted if "," in a]
