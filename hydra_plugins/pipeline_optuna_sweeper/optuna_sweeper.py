"""Ask the study for trials, launch them as Hydra jobs (n_jobs at a time, through whichever
launcher is configured), and tell the study how each ended."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from pipeline.cli.launch import TRIAL_ENV
from pipeline.cli.sweep import check_search
from pipeline.errors import UserError
from pipeline.sweeps import search as s
from pipeline.sweeps import stop as sweep_stop


class OptunaSweeper(Sweeper):
    def __init__(self, **search: Any) -> None:
        self.search_config = search

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        try:
            search = check_search(self.config)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        import optuna

        store = s.storage(search)
        study = s.open_study(search, store)
        try:
            s.check_fixed(study, arguments)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        if interrupted := s.fail_interrupted(study, store):
            print(f"Search {search.study_name}: {interrupted} interrupted trial(s) will run again.")
        space = s.distributions(search)
        returns: list[JobReturn] = []
        while (left := search.n_trials - s.trials_done(study)) > 0:
            trials = [study.ask(space) for _ in range(min(search.n_jobs, left))]
            batch = [
                [*arguments, *s.overrides(t.params), f"+hydra.job.env_set.{TRIAL_ENV}={t.number}"]
                for t in trials
            ]
            self.validate_batch_is_legal(batch)
            # Job folders are numbered like the trials: <sweep dir>/<trial number>.
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, result in zip(trials, results, strict=True):
                state, value = _outcome(result, search.objective)
                if _killed(result):  # by a signal: it runs again when the search continues
                    trial.set_user_attr("interrupted", True)
                study.tell(trial, value, state=state)
            returns.extend(results)
            if sweep_stop.stop_signal(sweep_stop.marker_in(self.config.hydra.sweep.dir)):
                break
        done = study.get_trials(deepcopy=False)
        counts = {st.name: sum(t.state == st for t in done) for st in optuna.trial.TrialState}
        print(
            f"Search {search.study_name}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        )
        return returns


def _returned(result: JobReturn) -> dict[str, Any] | None:
    """What a job that ran to its end returned: its metrics, or (pipeline.cli) a failed,
    pruned or killed trial's {"status": ...}."""
    if result.status != JobStatus.COMPLETED or not isinstance(result.return_value, dict):
        return None
    return result.return_value


def _killed(result: JobReturn) -> bool:
    return (_returned(result) or {}).get("status") == "KILLED"


def _outcome(result: JobReturn, objective: str) -> tuple[Any, float | None]:
    """The trial's state and objective from what the job returned."""
    from optuna.trial import TrialState

    value = _returned(result)
    if value is None:
        return TrialState.FAIL, None
    if value.get("status") == "PRUNED":
        return TrialState.PRUNED, None
    if objective not in value:
        return TrialState.FAIL, None
    return TrialState.COMPLETE, float(value[objective])
