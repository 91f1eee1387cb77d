"""The job side of a search: a training job launched by the Optuna sweeper finds its trial in
the study's storage and reports the objective at every validation, so the pruner can stop it.

Written for pytorch_lightning: optuna-integration's callback is built on the `lightning`
package, whose Callback class the pytorch_lightning Trainer does not accept.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from pipeline.config.search import Search
from pipeline.errors import TrialPruned
from pipeline.sweeps.search import pruner, storage


class ReportAndPrune(pl.Callback):
    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        step = trainer.global_step
        self.trial.report(float(value), step=step)
        if self.trial.should_prune():
            raise TrialPruned(
                f"pruned by the median pruner at step {step}: {self.metric}={float(value):.6g} "
                "is worse than the median of earlier trials at that step"
            )


def report_to(search: Search, number: int) -> ReportAndPrune:
    """The callback that reports to trial `number` of the search's study."""
    import optuna

    store = storage(search)
    study = optuna.load_study(study_name=search.study_name, storage=store, pruner=pruner(search))
    study_id = store.get_study_id_from_name(search.study_name)
    trial_id = store.get_trial_id_from_study_id_trial_number(study_id, number)
    return ReportAndPrune(optuna.trial.Trial(study, trial_id), search.objective)
