"""Sweeps: a Bayesian search's Optuna study (search.py) and the trial's report to it
(trial.py), the summary of a sweep's trials (summary.py), and stopping a sweep in order
(stop.py). The Hydra side (the sweeper plugin, the multirun callback) is pipeline/cli/ and
hydra_plugins/."""
