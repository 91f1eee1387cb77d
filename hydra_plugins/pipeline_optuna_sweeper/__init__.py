"""A Hydra sweeper that runs an Optuna (>= 4) study: TPE sampling, median pruning, SQLite
storage. Hydra finds it through the hydra_plugins namespace package; conf/hydra/sweeper/
optuna.yaml configures it and conf/hparams_search/*.yaml select it."""

from hydra_plugins.pipeline_optuna_sweeper.optuna_sweeper import OptunaSweeper

__all__ = ["OptunaSweeper"]
