"""MLflow run names from what differs (tracking/names.py), and the `command` tag a shell runs
again (tracking/provenance.py), for single runs, grid and search trials and sweep parents,
from the config Hydra composes."""

from __future__ import annotations

import shlex

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from pipeline.cli.launch import SWEPT_ENV, TRIAL_ENV, name_of_run
from pipeline.cli.sweep import parent_name, sweep_command, swept_keys
from pipeline.tracking.names import MAX_LENGTH, describe, run_name
from pipeline.tracking.provenance import command
from tests.helpers import compose_config

GROUPS = {"model", "data", "optim", "experiment", "hparams_search"}


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (["model=gpt-tiny", "optim.lr=3e-3"], "gpt-tiny lr=3e-3"),
        (["experiment=lm_demo", "+trainer.gradient_clip_val=1"], "lm_demo gradient_clip_val=1"),
        # Where and how a run is recorded and shown does not tell runs apart.
        (["paths.outputs=/x", "logger.experiment_name=e", "hydra.run.dir=d", "resume=auto"], ""),
        (["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2"], ""),
        (["optim.lr=0.0012345678", "optim.warmup_steps=20"], "lr=0.00123 warmup_steps=20"),
        (
            ["data.path=/home/me/data/spam.tsv", 'data.val_path="a b/val.tsv"'],
            "path=spam.tsv val_path=val.tsv",
        ),
        # Two keys with the same last part keep their whole names.
        (
            ["lora.target_modules=all-linear", "sparsity.target_modules=mlp", "~lora"],
            "lora.target_modules=all-linear sparsity.target_modules=mlp ~lora",
        ),
        (
            ["data.hf_token=hf_secret", "model.init_from=http://u:pw@host"],
            "hf_token=*** init_from=http://***@host",
        ),
        (
            ["optim.lr=3e-4,1e-3,3e-3", "model=gpt-tiny,gpt-mini"],
            "lr=3e-4,1e-3,3e-3 gpt-tiny,gpt-mini",
        ),
    ],
)
def test_a_name_says_what_the_overrides_change(overrides: list[str], name: str) -> None:
    assert describe(overrides, GROUPS) == name


def test_a_long_name_is_cut() -> None:
    name = run_name("sweep", describe([f"model.n_layers={n}" for n in range(40)], GROUPS))
    assert len(name) == MAX_LENGTH and name.endswith("…") and name.startswith("sweep ")


def test_the_command_quotes_what_the_shell_would_split_and_hides_secrets() -> None:
    args = ["paths.outputs=/a b/c", 'prompt="Hey Sam, free?"', "data.api_key=k3y", "seed=1"]
    line = command(args)
    assert line.startswith("python -m pipeline.train ")
    assert shlex.split(line)[3:] == [*args[:2], "data.api_key=***", "seed=1"]


@pytest.fixture
def hydra_job(monkeypatch: pytest.MonkeyPatch):
    """Make HydraConfig hold the composed config of a job of these overrides, as Hydra does
    while it runs one; put back as it was. `sweep`: the command line a sweep's config records
    (composing takes one value of each)."""
    instance = HydraConfig.instance()
    before = instance.cfg

    def job(overrides: list[str], sweep: list[str] | None = None):
        config = compose_config(overrides, with_hydra=True)
        if sweep is not None:
            OmegaConf.set_readonly(config, False)
            config.hydra.overrides.task = sweep
        instance.set_config(config)
        return config

    yield job
    instance.cfg = before


def test_a_run_is_named_from_its_overrides_else_its_presets(hydra_job) -> None:
    hydra_job([])
    assert name_of_run() == "gpt-mini demo"
    hydra_job(["paths.outputs=/tmp/o"])
    assert name_of_run() == "gpt-mini demo"
    hydra_job(["model=gpt-tiny", "optim.lr=3e-3", "logger.tracking_uri=http://u:pw@h"])
    assert name_of_run() == "gpt-tiny lr=3e-3"


def test_a_grid_trial_is_named_by_its_swept_values(hydra_job, monkeypatch) -> None:
    sweep = hydra_job(["hydra.mode=MULTIRUN"], ["model=gpt-tiny", "optim.lr=1e-3,3e-3"])
    swept = swept_keys(sweep)
    assert swept == ["optim.lr"]
    assert parent_name(sweep, swept) == "sweep lr=1e-3,3e-3 gpt-tiny"
    assert sweep_command(sweep) == "python -m pipeline.train -m model=gpt-tiny optim.lr=1e-3,3e-3"
    assert sweep_command(sweep, "hydra.sweep.dir=/s").endswith(
        "optim.lr=1e-3,3e-3 hydra.sweep.dir=/s"
    )
    monkeypatch.setenv(SWEPT_ENV, '["optim.lr"]')
    hydra_job(["hydra.mode=MULTIRUN", "model=gpt-tiny", "optim.lr=0.003"])
    assert name_of_run() == "lr=0.003"


def test_a_search_trial_is_named_by_its_number_and_sampled_values(hydra_job, monkeypatch) -> None:
    search = hydra_job(["hydra.mode=MULTIRUN", "hparams_search=optim", "model=gpt-tiny"])
    swept = swept_keys(search)
    assert swept == ["optim.lr", "optim.weight_decay", "optim.warmup_steps", "optim.batch_size"]
    assert parent_name(search, swept) == "search optim (12 trials) gpt-tiny"
    monkeypatch.setenv(SWEPT_ENV, '["optim.lr", "optim.weight_decay"]')
    monkeypatch.setenv(TRIAL_ENV, "3")
    hydra_job(
        ["hydra.mode=MULTIRUN", "model=gpt-tiny", "optim.lr=0.000123456", "optim.weight_decay=0.05"]
    )
    assert name_of_run() == "#3 lr=0.000123 weight_decay=0.05"
