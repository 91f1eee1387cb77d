"""End to end, through the command line as a user runs it: train, then read back the run
folder and the MLflow record; evaluate, generate and export from the run folder."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import LIGHTNING, TINY, heavy, in_shell, run_cli, run_recorded

pytestmark = pytest.mark.slow


def train(outputs: Path, *overrides: str) -> tuple[dict, Path]:
    result = run_cli("train", f"paths.outputs={outputs}", *TINY, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_json,) = outputs.glob("runs/*/*/*/run.json")
    (outputs.parent / "stdout.txt").write_text(result.stdout)
    return json.loads(run_json.read_text()), run_json.parent


# Its output goes to a pipe, as under nohup or a scheduler: progress comes as plain lines.
PROGRESS = ["trainer.enable_progress_bar=true", "trainer.progress_interval_s=0.05"]


@pytest.fixture(scope="module")
def clf_run(tmp_path_factory) -> tuple[dict, Path, Path]:
    outputs = tmp_path_factory.mktemp("clf") / "outputs"
    record, run_dir = train(outputs, *PROGRESS)
    return record, run_dir, outputs


def test_a_run_whose_output_is_not_a_terminal_prints_progress_lines(clf_run) -> None:
    _, _, outputs = clf_run
    printed = (outputs.parent / "stdout.txt").read_text()
    steps = re.findall(
        r"^step (\d+)/40 \(\d+%\) \| epoch ([12])/2 \| loss \d\.\d{4} \| [\d,]+ tokens/s "
        r"\| elapsed \d+:\d\d( \| ETA \d+:\d\d)?$",
        printed,
        re.MULTILINE,
    )
    assert len(steps) >= 2 and steps[-1][0] == "40"  # the last line when training ends
    assert [int(s) for s, *_ in steps] == sorted(int(s) for s, *_ in steps)
    validations = re.findall(r"^validation at step (\d+): val/acc [\d.]+ \| val/f1", printed, re.M)
    assert validations == ["20", "40"]
    assert "\r" not in printed and "it/s" not in printed  # no bar drawn into the pipe


def test_run_folder_holds_config_checkpoints_export_and_run_json(clf_run) -> None:
    record, run_dir, outputs = clf_run
    assert record["status"] == "FINISHED"
    assert record["tracking_uri"] == f"sqlite:///{outputs.resolve()}/mlflow.db"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(record["paths"]["best_checkpoint"]).name.startswith("epoch=")
    hf = run_dir / "export" / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    # Learned something: the demo's majority class is 65% ham.
    assert record["metrics"]["test/acc"] > 0.8
    assert 0 < record["metrics"]["test/f1"] <= 1


def test_mlflow_run_has_params_step_metrics_tags_and_artifacts(clf_run) -> None:
    record, run_dir, outputs = clf_run
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.emb_dim"] == "64" and params["optim.lr"] == "0.001"
    assert params["data.path"].endswith("sms_spam_400.tsv")  # long values are not truncated
    assert int(params["model.num_parameters"]) == record["num_parameters"]
    assert run.data.tags["run_dir"] == str(run_dir)
    assert run.data.tags["command"].startswith(f"python -m pipeline.train paths.outputs={outputs}")
    # Named by what differs from the default run (not by the progress bar or logging).
    name = "gpt-tiny synthetic_examples=400 vocab_size=600 batch_size=16 max_epochs=2"
    assert run.info.run_name == name
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    history = client.get_metric_history(run.info.run_id, "train/loss_step")
    assert len(history) >= 5 and len({m.step for m in history}) == len(history)
    assert {
        "val/acc",
        "val/f1",
        "test/acc",
        "train/acc_step",
        "train/lr",
        "train/tokens_per_sec",
    } <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "run.json", "export", "checkpoints"} <= artifacts
    exported = {a.path for a in client.list_artifacts(run.info.run_id, "export/hf")}
    assert "export/hf/model.safetensors" in exported
    # The artifact store is the project's outputs folder, not ./mlruns under the cwd.
    assert run.info.artifact_uri.startswith((outputs.resolve() / "mlartifacts").as_uri())


def test_the_command_tag_pasted_into_a_shell_composes_the_same_run(clf_run) -> None:
    """The tag, pasted into bash with `--cfg job`, composes the run's config exactly: the same
    experiment (test_resume.py's --from-run test shows one config trains the same run)."""
    record, run_dir, outputs = clf_run
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    command = client.get_run(record["run_id"]).data.tags["command"]
    assert command.startswith("python -m pipeline.train ")
    pasted = in_shell(f"{command} --cfg job")
    assert pasted.returncode == 0, pasted.stderr[-2000:]
    assert yaml.safe_load(pasted.stdout) == yaml.safe_load(
        (run_dir / ".hydra" / "config.yaml").read_text()
    )


def test_evaluate_reproduces_the_test_metrics(clf_run) -> None:
    record, run_dir, outputs = clf_run
    result, modules = run_recorded("evaluate", f"ckpt={run_dir}", f"paths.outputs={outputs}")
    assert result.returncode == 0, result.stderr[-2000:]
    # In plain torch: MLflow to record the evaluation, but no Lightning.
    assert "mlflow" in modules and not heavy(modules, *LIGHTNING)
    (metrics_file,) = outputs.glob("evaluate/*/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())["metrics"]
    assert metrics["test/acc"] == pytest.approx(record["metrics"]["test/acc"], abs=1e-6)


def test_generate_on_a_classifier_labels_the_prompt(clf_run) -> None:
    _, run_dir, _ = clf_run
    result, modules = run_recorded(
        "generate", f"ckpt={run_dir}", 'prompt="URGENT! Call 0800 to claim your prize"'
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ham" in result.stdout and "spam" in result.stdout
    assert "torch" in modules and not heavy(modules, "mlflow", *LIGHTNING)


def test_export_command_writes_weights_beside_the_run(clf_run, tmp_path: Path) -> None:
    _, run_dir, _ = clf_run
    formats = "export.formats=[weights,hf]"
    result, modules = run_recorded("export", f"ckpt={run_dir}", formats, f"export.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "weights" / "model.pth").stat().st_size > 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert not list(tmp_path.glob("**/*.tmp"))
    assert not heavy(modules, "mlflow", *LIGHTNING)


def test_causal_lm_experiment_reports_perplexity_and_generates(tmp_path: Path) -> None:
    record, run_dir = train(
        tmp_path / "outputs",
        "experiment=lm_demo",
        "trainer.max_epochs=3",
        "optim.lr=3e-3",
        "optim.warmup_steps=5",
    )
    assert record["task"] == "causal_lm"
    ppl = record["metrics"]["test/ppl"]
    # A uniform guess over the 600-token vocabulary scores 600; this setting reaches about 39.
    assert 1 < ppl < 80
    hf_config = json.loads((run_dir / "export" / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["GPT2LMHeadModel"]
    result, modules = run_recorded(
        "generate", f"ckpt={run_dir}", "prompt=Hey", "max_new_tokens=8", "temperature=0"
    )
    assert result.returncode == 0 and result.stdout.startswith("Hey")
    assert not heavy(modules, "mlflow", *LIGHTNING)


def test_logger_none_trains_without_a_store_or_mlflow(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    args = ("logger=none", "trainer.max_epochs=1")
    result, modules = run_recorded("train", f"paths.outputs={outputs}", *TINY, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_json,) = outputs.glob("runs/*/*/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["run_id"] is None and record["status"] == "FINISHED"
    assert not (outputs / "mlflow.db").exists() and "mlflow" not in modules


def test_sweep_has_a_parent_run_a_summary_and_survives_a_failed_trial(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    result = run_cli(
        "train",
        "-m",
        f"paths.outputs={outputs}",
        *TINY,
        "trainer.max_epochs=1",
        "optim.lr=1e-3,3e-3",
        "model.n_heads=2,3",
        "logger.log_models=final",
        "logger.register_as=sms-best",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (root,) = outputs.glob("multirun/*/*")
    summary = (root / "sweep_summary.md").read_text()
    assert summary.count("FAILED") >= 2 and "must be divisible by model.n_heads" in summary
    rows = (root / "sweep_summary.csv").read_text().splitlines()
    assert rows[0].startswith("trial,model.n_heads,optim.lr,status,val/loss") and len(rows) == 5
    # The two trials with 2 heads finished; each has its exact row, the lower loss marked best.
    finished = [row for row in csv.reader(rows[1:]) if row[3] == "FINISHED"]
    assert [(heads, lr) for _, heads, lr, *_ in finished] == [("2", "0.001"), ("2", "0.003")]
    best = min(finished, key=lambda row: float(row[4]))
    for row in finished:
        trial, heads, lr, _, value = row[:5]
        status = "FINISHED (best)" if row is best else "FINISHED"
        assert f"| {trial} | {heads} | {lr} | {status} | {float(value):.6g} |" in summary
    assert (root / "sweep_summary.png").stat().st_size > 1000
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gpt-finetune").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    best = min(children, key=lambda r: r.data.metrics["val/loss"])
    assert parent.data.metrics["best/val/loss"] == pytest.approx(
        best.data.metrics["val/loss"], rel=1e-5
    )
    assert parent.data.tags["best_run_id"] == best.info.run_id
    # Every finished trial logged its model; only the best one was registered.
    assert all(len(r.outputs.model_outputs) == 1 for r in children)
    (version,) = client.search_model_versions("name = 'sms-best'")
    assert version.run_id == best.info.run_id
    assert client.get_model_version_by_alias("sms-best", "candidate").version == version.version
    assert "sweep.overrides" in parent.data.params
    assert {"best.optim.lr", "best.model.n_heads"} <= set(parent.data.tags)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.md", "sweep_summary.csv", "sweep_summary.png"} <= artifacts
