"""One training run: the story (run.py: build, fit, test, export, record), what starts it
(launch.py), its recorder (recorder.py), the Trainer and its callbacks (trainer.py, faults.py,
progress.py), the LightningModule (module.py), resuming (resume.py), data-parallel facts
(distributed.py), evaluation of a trained model (evaluation.py) and the console summary
(summary.py)."""
