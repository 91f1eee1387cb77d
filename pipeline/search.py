"""Bayesian hyperparameter search (hparams_search=<name>): the search definition, the Optuna
study it runs, and each trial's overrides.

The Hydra sweeper in hydra_plugins/pipeline_optuna_sweeper drives the study; the trials are
ordinary training jobs that find their Optuna trial again through the study's storage
(pipeline/trial.py), so pruning works whichever launcher runs them (in process, joblib
processes, SLURM). Optuna is imported only when a search runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import UserError

if TYPE_CHECKING:
    import optuna

# Set per job by the sweeper (hydra.job.env_set): the Optuna trial number this job runs.
TRIAL_ENV = "PIPELINE_SEARCH_TRIAL"
SWEEPER_TARGET = "hydra_plugins.pipeline_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Param(_Strict):
    """One dimension of the search space."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    # Optuna stores categorical choices as they are: plain values only.
    choices: list[str | int | float | bool | None] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"a {self.type} parameter needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError("log=true needs low > 0")
        elif self.log and self.step is not None:
            raise ValueError("log=true and step cannot be combined")
        return self


class Pruner(_Strict):
    """Optuna's median pruner: stop a trial whose objective at a validation is worse than the
    median of earlier trials at the same step."""

    n_startup_trials: int = Field(default=2, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    enabled: bool = True


class Search(_Strict):
    """hydra.sweeper.* of a search (conf/hydra/sweeper/optuna.yaml + conf/hparams_search/)."""

    study_name: str = Field(min_length=1)
    storage: str = Field(min_length=1)
    objective: str = Field(min_length=1)
    direction: Literal["minimize", "maximize"]
    n_trials: int = Field(ge=1)
    n_jobs: int = Field(default=1, ge=1)
    seed: int | None = None
    pruner: Pruner = Pruner()
    params: dict[str, Param] = Field(min_length=1)

    @property
    def mode(self) -> str:
        return "min" if self.direction == "minimize" else "max"


def load_search(sweeper: Any) -> Search:
    """Validate hydra.sweeper (a DictConfig or dict); a bad entry is a UserError naming it."""
    from omegaconf import DictConfig, OmegaConf

    raw = (
        OmegaConf.to_container(sweeper, resolve=True)
        if isinstance(sweeper, DictConfig)
        else dict(sweeper)
    )
    raw.pop("_target_", None)
    try:
        return Search.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(["hydra.sweeper", *(str(p) for p in error["loc"])])
        raise UserError(
            f"Search config error: {key}: {error['msg']} (got {error.get('input')!r}). Fix it "
            "in conf/hparams_search/<name>.yaml or on the command line (hydra.sweeper...=)."
        ) from None


def check_search(config: Any) -> Search:
    """The search definition, and command-line overrides that apply to every trial (a grid,
    a,b, makes no sense in a search)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    search = load_search(config.hydra.sweeper)
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    if swept:
        raise UserError(
            f"{' '.join(swept)}: a search samples its parameters from hydra.sweeper.params, so "
            "comma lists and ranges are not allowed on its command line. Put the parameter in "
            "the search space (conf/hparams_search/<name>.yaml), or run a grid sweep without "
            "hparams_search."
        )
    return search


def is_search(sweeper: Any) -> bool:
    return sweeper is not None and sweeper.get("_target_") == SWEEPER_TARGET


def storage(search: Search) -> optuna.storages.RDBStorage:
    import optuna

    url = search.storage
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Parallel trials report into the same file: wait for the lock rather than fail.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def pruner(search: Search) -> optuna.pruners.BasePruner:
    import optuna

    if not search.pruner.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=search.pruner.n_startup_trials,
        n_warmup_steps=search.pruner.n_warmup_steps,
    )


def open_study(search: Search, store: optuna.storages.BaseStorage) -> optuna.Study:
    """The study, created or loaded (an interrupted search continues where it stopped)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=search.study_name,
        storage=store,
        sampler=optuna.samplers.TPESampler(seed=search.seed),
        pruner=pruner(search),
        direction=search.direction,
        load_if_exists=True,
    )


def distributions(search: Search) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for name, p in search.params.items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(p.choices)
        elif p.type == "int":
            step = int(p.step or 1)
            out[name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=step)
        else:
            out[name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def overrides(params: dict[str, Any]) -> list[str]:
    """A trial's sampled values as Hydra overrides (floats in full precision)."""
    return [
        f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}"
        for name, value in params.items()
    ]


def fail_interrupted(study: optuna.Study, store: optuna.storages.BaseStorage) -> int:
    """Trials left RUNNING by an interrupted search are marked FAIL (tagged `interrupted`) so
    that they are run again; returns how many. One search process per study is assumed."""
    from optuna.trial import TrialState

    study_id = store.get_study_id_from_name(study.study_name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        store.set_trial_user_attr(trial_id, "interrupted", True)
        store.set_trial_state_values(trial_id, TrialState.FAIL)
    return len(stale)


def trials_done(study: optuna.Study) -> int:
    """Trials that ran to an end (complete, pruned, or failed on their own)."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=ended)
        if not t.user_attrs.get("interrupted")
    )
