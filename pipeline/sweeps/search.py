"""Bayesian hyperparameter search (hparams_search=<name>): the Optuna study a search
(pipeline/config/search.py) runs, and each trial's overrides.

The Hydra sweeper in hydra_plugins/pipeline_optuna_sweeper drives the study; the trials are
ordinary training jobs that find their Optuna trial again through the study's storage
(trial.py), so pruning works whichever launcher runs them (in process, joblib processes,
SLURM). Optuna is imported only when a search runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config.search import Search
from pipeline.errors import UserError

if TYPE_CHECKING:
    import optuna


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


FIXED_ATTR = "fixed_overrides"


def check_fixed(study: optuna.Study, arguments: list[str]) -> None:
    """A study continues only the search that started it: the command-line settings every
    trial shares are recorded with the study, and another set of them is refused (its trials
    and best result would be reported as this search's)."""
    fixed = sorted(a for a in arguments if not a.lstrip("+~").startswith("hydra"))
    recorded = study.user_attrs.get(FIXED_ATTR)
    if recorded is None:
        study.set_user_attr(FIXED_ATTR, fixed)
        return
    if recorded != fixed:
        had = ", ".join(a for a in recorded if a not in fixed) or "nothing more"
        has = ", ".join(a for a in fixed if a not in recorded) or "nothing more"
        raise UserError(
            f"Study {study.study_name!r} was run with other fixed settings: it had {had}; this "
            f"command has {has}. Its trials and best result belong to those settings. Start a "
            "new study with hydra.sweeper.study_name=<new name>, or pass the study's settings "
            "to continue it."
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
