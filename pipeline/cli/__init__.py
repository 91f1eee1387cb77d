"""The commands' side of the pipeline, and the only code that reads Hydra or the environment:
the Hydra wrapper every command shares (app.py), what a run learns from outside its config
(launch.py), the sweep callback and search checks (sweep.py), and --from-run (rerun.py). What
they read goes down to the run as arguments."""
