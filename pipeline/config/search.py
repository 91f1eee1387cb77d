"""conf/hparams_search/ (with conf/hydra/sweeper/optuna.yaml): a Bayesian search's study, its
objective and its search space, as hydra.sweeper.* holds them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import UserError

SWEEPER_TARGET = "hydra_plugins.pipeline_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Param(_Strict):
    """One dimension of the search space."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[str | int | float | bool | None] | None = None
    """Optuna stores categorical choices as they are: plain values only."""

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
    """Trials before this many have ended are never pruned."""
    n_warmup_steps: int = Field(default=0, ge=0)
    """No trial is pruned before this step."""
    enabled: bool = True
    """false: every trial runs to its end."""


class Search(_Strict):
    """hydra.sweeper.* of a search."""

    study_name: str = Field(min_length=1)
    """The study's name in the storage; the same name continues an interrupted search."""
    storage: str = Field(min_length=1)
    """Optuna's storage (SQLite under outputs/ by default; any SQLAlchemy URL works)."""
    objective: str = Field(min_length=1)
    """The metric each trial is judged by (logged by the trial, e.g. val/loss, val/acc)."""
    direction: Literal["minimize", "maximize"]
    """Whether the objective is better low or high."""
    n_trials: int = Field(ge=1)
    """Trials the study runs in all (a continued search counts those already run)."""
    n_jobs: int = Field(default=1, ge=1)
    """Trials that run at the same time (through the launcher, one process each)."""
    seed: int | None = None
    """The TPE sampler's seed: the same seed proposes the same trials."""
    pruner: Pruner = Pruner()
    params: dict[str, Param] = Field(min_length=1)
    """The search space: parameter name -> its distribution."""

    @property
    def mode(self) -> str:
        return "min" if self.direction == "minimize" else "max"


def is_search(sweeper: Any) -> bool:
    return sweeper is not None and sweeper.get("_target_") == SWEEPER_TARGET


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
