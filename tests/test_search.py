"""Bayesian search (hparams_search=...): Optuna TPE trials as MLflow children of one parent,
pruned trials recorded as such, a resumed study, parallel trials into one SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config.search import load_search
from pipeline.errors import UserError
from pipeline.sweeps.search import distributions, overrides
from pipeline.sweeps.summary import markdown_table, swept_params
from tests.helpers import TINY, compose_config, run_cli

# A search a user would write in conf/hparams_search/; the tests add it through hydra.searchpath.
# lr 1e-7 barely moves the loss, so once a 3e-3 trial has finished, the pruner stops it.
SEARCH = """\
# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/launcher: joblib
hydra:
  sweep:
    dir: ${paths.outputs}/search/${hydra.sweeper.study_name}
  launcher:
    n_jobs: ${hydra.sweeper.n_jobs}
  sweeper:
    study_name: tiny
    n_trials: 4
    pruner: {n_startup_trials: 1}
    params:
      optim.lr: {type: categorical, choices: [0.003, 1.0e-7]}
"""


def run_search(tmp_path: Path, *overrides: str):
    """`-m hparams_search=tiny` (the SEARCH above, through hydra.searchpath) into
    tmp_path/outputs."""
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "tiny.yaml").write_text(SEARCH)
    return run_cli(
        "train",
        "-m",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"hydra.searchpath=[file://{conf.parent}]",
        "hparams_search=tiny",
        *overrides,
    )


def search(tmp_path: Path, *overrides: str) -> Path:
    result = run_search(tmp_path, *TINY, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "outputs"


def runs(outputs: Path) -> tuple[MlflowClient, object, list]:
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name("gpt-finetune").experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("sweep") == "parent"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


def study(outputs: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{outputs}/optuna.db")


@pytest.mark.slow
def test_search_prunes_poor_trials_and_resumes_its_study(tmp_path: Path) -> None:
    outputs = search(tmp_path)
    states = {t.number: t.state.name for t in study(outputs).trials}
    assert sorted(states.values()) == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"], states
    pruned = next(n for n, s in states.items() if s == "PRUNED")
    root = outputs / "search" / "tiny"
    record = json.loads((root / str(pruned) / "run.json").read_text())
    assert record["status"] == "PRUNED" and "median pruner" in record["error"]
    assert study(outputs).trials[pruned].params == {"optim.lr": 1e-7}
    # Each trial is an MLflow child of one parent; the pruned one is KILLED and tagged.
    _client, parent, children = runs(outputs)
    assert len(children) == 4
    by_folder = {Path(r.data.tags["run_dir"]).name: r for r in children}
    assert by_folder[str(pruned)].info.status == "KILLED"
    assert by_folder[str(pruned)].data.tags["pruned"] == "true"
    # Named by the search, and each trial by its number and sampled values.
    assert parent.info.run_name.startswith("search tiny (4 trials) gpt-tiny ")
    for number, run in by_folder.items():
        lr = study(outputs).trials[int(number)].params["optim.lr"]
        assert run.info.run_name == f"#{number} lr={lr:.3g}"
    assert sum(r.info.status == "FINISHED" for r in children) == 3
    best = min(r.data.metrics["val/loss"] for r in children if r.info.status == "FINISHED")
    assert study(outputs).best_value == pytest.approx(best, rel=1e-5)
    assert parent.data.metrics["best/val/loss"] == pytest.approx(best, rel=1e-5)
    assert parent.data.tags["best.optim.lr"] == "0.003"
    assert "optim.lr" in parent.data.params["sweep.search"]
    summary = (root / "sweep_summary.md").read_text()
    assert summary.count("| PRUNED |") == 1 and summary.count("| FINISHED") == 3

    # An interrupted search left a trial RUNNING; resuming with n_trials=5 runs it again as
    # a new trial (folder 5) into the same study, folder and parent run.
    study(outputs).ask()
    search(tmp_path, "hydra.sweeper.n_trials=5")
    trials = study(outputs).trials
    assert [t.state.name for t in trials[4:]] == ["FAIL", trials[5].state.name]
    assert trials[4].user_attrs["interrupted"] is True
    assert trials[5].state.name in ("COMPLETE", "PRUNED")
    assert (root / "5" / "run.json").is_file() and not (root / "4").exists()
    _, parent_again, children = runs(outputs)
    assert parent_again.info.run_id == parent.info.run_id and len(children) == 5
    assert parent_again.info.status == "FINISHED"

    # The same study with other fixed settings is refused, not reported as this search's.
    other = run_search(tmp_path, *TINY, "model.n_layers=3")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "Study 'tiny' was run with other fixed settings" in other.stderr
    assert "this command has model.n_layers=3" in other.stderr
    assert len(study(outputs).trials) == 6  # nothing ran


@pytest.mark.slow
def test_four_parallel_trials_record_four_complete_runs(tmp_path: Path) -> None:
    outputs = search(tmp_path, "hydra.sweeper.n_jobs=4", "trainer.max_epochs=1")
    assert [t.state.name for t in study(outputs).trials] == ["COMPLETE"] * 4
    client, _parent, children = runs(outputs)
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert "val/loss" in run.data.metrics and "test/acc" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) >= 5
        assert run.data.params["optim.lr"] in ("0.003", "1e-07")
    # They ran at the same time. Not every pair need overlap: on 2 cores a worker still
    # importing torch can start its run after the quickest trial ended (CI saw 0.1 s), but
    # one at a time would never have two runs open at once.
    assert most_at_once(children) >= 2


def most_at_once(runs: list) -> int:
    """The largest number of runs open at the same instant (an end before a start on a tie)."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    open_now = peak = 0
    for _time, change in events:
        open_now += change
        peak = max(peak, open_now)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials"),
        ("optim.batch_size=8,16", "comma lists and ranges are not allowed"),
    ],
)
def test_a_bad_search_is_refused_before_any_run(tmp_path: Path, override, message) -> None:
    result = run_search(tmp_path, override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "outputs").glob("search/tiny/*/run.json"))


BASE = {"study_name": "s", "storage": "sqlite:///x.db", "objective": "val/loss"}


def test_search_space_maps_to_optuna_and_back_to_overrides() -> None:
    search = load_search(
        {
            **BASE,
            "direction": "maximize",
            "n_trials": 3,
            "params": {
                "optim.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
                "model.n_layers": {"type": "int", "low": 2, "high": 8, "step": 2},
                "lora.target_modules": {
                    "type": "categorical",
                    "choices": ["attention", "all-linear"],
                },
            },
        }
    )
    space = distributions(search)
    assert (space["optim.lr"].low, space["optim.lr"].high, space["optim.lr"].log) == (
        1e-5,
        1e-2,
        True,
    )
    assert (space["model.n_layers"].low, space["model.n_layers"].step) == (2, 2)
    assert space["lora.target_modules"].choices == ("attention", "all-linear")
    assert search.mode == "max"
    sampled = {
        "optim.lr": 0.00012345678901234,
        "model.n_layers": 4,
        "lora.target_modules": "all-linear",
    }
    assert overrides(sampled) == [
        "optim.lr=0.00012345678901234",
        "model.n_layers=4",
        "lora.target_modules=all-linear",
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"optim.lr": {"type": "float", "low": 1e-2, "high": 1e-5}}, "needs low < high"),
        (
            {"optim.lr": {"type": "float", "low": 0, "high": 1, "log": True}},
            "log=true needs low > 0",
        ),
        ({"lora.r": {"type": "categorical", "choices": []}}, "non-empty 'choices'"),
        ({"lora.r": {"type": "integer", "low": 1, "high": 4}}, "hydra.sweeper.params.lora.r.type"),
        ({}, "hydra.sweeper.params"),
    ],
)
def test_a_bad_search_space_names_the_entry(params: dict, message: str) -> None:
    with pytest.raises(UserError, match="Search config error") as error:
        load_search({**BASE, "direction": "minimize", "n_trials": 3, "params": params})
    assert message in str(error.value)


def test_the_search_space_changes_or_is_replaced_from_the_command_line() -> None:
    def space(*cli: str) -> dict:
        cfg = compose_config(["hparams_search=optim", *cli], with_hydra=True)
        return {k: p.model_dump() for k, p in load_search(cfg.hydra.sweeper).params.items()}

    lr = "{optim.lr: {type: float, low: 1.0e-4, high: 0.1}}"
    merged = space(f"hydra.sweeper.params={lr}")
    assert merged["optim.lr"]["high"] == 0.1 and merged["optim.lr"]["log"] is True  # kept
    assert "optim.weight_decay" in merged and len(merged) == 4
    replaced = space("~hydra.sweeper.params", f"+hydra.sweeper.params={lr}")
    assert list(replaced) == ["optim.lr"] and replaced["optim.lr"]["log"] is False


def test_a_search_of_one_trial_still_names_what_it_sampled() -> None:
    def row(trial: int, lr: str, layers: str, value: float) -> dict:
        params = {"optim.lr": lr, "model.n_layers": layers, "model": "gpt-tiny"}
        return {
            "trial": trial,
            "params": params,
            "status": "FINISHED",
            "value": value,
            "run_dir": f"search/s/{trial}",
        }

    one = [row(0, "0.001", "2", 0.5)]
    assert swept_params(one, ["optim.lr"]) == ["optim.lr"]
    table = markdown_table(one, swept_params(one, ["optim.lr"]), "val/loss", one[0])
    assert "| trial | optim.lr | status |" in table and "(optim.lr=0.001)" in table
    # A grid's columns are what differs between its trials, after anything sampled.
    grid = [*one, row(1, "0.003", "4", 0.4)]
    assert swept_params(grid, []) == ["model.n_layers", "optim.lr"]
    assert swept_params(grid, ["optim.lr"]) == ["optim.lr", "model.n_layers"]
